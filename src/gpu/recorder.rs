//! Recording kernel dispatches.
//!
//! A `Recorder` holds one command encoder with one open compute pass, and a host-side block of
//! uniform parameters. Each kernel function appends its parameters and records its dispatch;
//! `submit` uploads all parameters with one `write_buffer` and submits everything at once.
//! Dispatches within a pass are ordered by wgpu's usage tracking, so a recorder may hold a
//! whole forward and backward pass. (On lavapipe a dispatch costs ~36 µs inside one pass and a
//! submit+wait ~100 µs, so fewer submits is the main lever there too.) While the profiler is on,
//! each dispatch gets a timed pass of its own instead (`profiler.rs`).

use super::profiler::{MAX_TIMED_DISPATCHES, QueryKit, Timed, Work};
use super::{Counters, DType, Gpu, Tensor, Texture};
use crate::error::{Error, Result};
use std::sync::Arc;

/// A WGSL source file: its name (for the pipeline cache and error messages) and its text.
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
    /// Other shader files whose definitions this one uses, appended after it.
    pub includes: &'static [&'static str],
}

/// What every shader shares (`NEG_BIG`, the workgroup reductions), appended when it is loaded.
pub const PRELUDE: &str = include_str!("../../shaders/prelude.wgsl");

impl Shader {
    /// The WGSL that is compiled: the file, the files it includes, then the prelude.
    pub fn wgsl(&self) -> String {
        let mut text = self.source.to_string();
        for part in self.includes.iter().chain([&PRELUDE]) {
            text.push('\n');
            text.push_str(part);
        }
        text
    }

    /// For each entry point, the bindings it uses that are writable storage buffers
    /// (`var<storage, read_write>`), as its WGSL declares them: what WebGPU's rule against
    /// writable aliasing looks at (`Recorder::dispatch` checks it). A binding index may be
    /// declared twice in one file, for different entry points, so the answer is per entry.
    /// Its error is naga's message for a shader that does not parse.
    pub fn writable_bindings(&self) -> std::result::Result<WritableBindings, String> {
        let module = naga::front::wgsl::parse_str(&self.wgsl()).map_err(|e| e.message().to_string())?;
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::empty(), naga::valid::Capabilities::all())
            .validate(&module)
            .map_err(|e| e.into_inner().to_string())?;
        let mut writable = WritableBindings::new();
        for (index, entry) in module.entry_points.iter().enumerate() {
            let uses = info.get_entry_point(index);
            let bindings = module
                .global_variables
                .iter()
                .filter(|&(handle, _)| !uses[handle].is_empty())
                .filter_map(|(_, var)| match (var.space, &var.binding) {
                    (naga::AddressSpace::Storage { access }, Some(b))
                        if access.contains(naga::StorageAccess::STORE) =>
                    {
                        Some(b.binding)
                    }
                    _ => None,
                })
                .collect();
            writable.insert(entry.name.clone(), bindings);
        }
        Ok(writable)
    }
}

/// Entry point name → the indices of its writable storage-buffer bindings.
pub type WritableBindings = std::collections::HashMap<String, Vec<u32>>;

/// A compiled entry point, and which of its bindings are writable. Cloned from the cache at
/// every dispatch: both fields are shared, not copied.
#[derive(Clone)]
pub struct Pipeline {
    pub compute: wgpu::ComputePipeline,
    pub writable: Arc<[u32]>,
}

/// WebGPU's rules for one buffer at two bindings of a dispatch: both read-only is fine; one
/// writable and one read-only is a usage conflict whatever the ranges (wgpu native reports that
/// too, but later and without the binding indices); both writable is "writable storage buffer
/// binding aliasing" where the ranges overlap, which wgpu's native backends do not check, so
/// without this a kernel could pass every test here and fail in a browser.
fn check_aliasing(shader: &Shader, entry: &str, pipeline: &Pipeline, bindings: &[Binding]) -> Result<()> {
    let tensors: Vec<(u32, &Tensor)> = bindings
        .iter()
        .filter_map(|b| match b.resource {
            Resource::Tensor(t, _) => Some((b.index, t)),
            Resource::Texture(_) => None,
        })
        .collect();
    for (i, &(index_a, a)) in tensors.iter().enumerate() {
        for &(index_b, b) in &tensors[i + 1..] {
            if a.buffer() != b.buffer() {
                continue;
            }
            let overlap =
                a.byte_offset() < b.byte_offset() + b.byte_len() && b.byte_offset() < a.byte_offset() + a.byte_len();
            let (writes_a, writes_b) = (pipeline.writable.contains(&index_a), pipeline.writable.contains(&index_b));
            let why = match (writes_a, writes_b) {
                (false, false) => continue,
                (true, true) if !overlap => continue,
                (true, true) => "both are writable and overlap (writable aliasing)",
                _ => "one of them is writable (a usage conflict, whatever the ranges)",
            };
            return Err(Error::Gpu(format!(
                "{}:{entry}: bindings {index_a} and {index_b} are one buffer (tensors {:?} and {:?}) and {why}: \
                 WebGPU forbids that in one dispatch",
                shader.name,
                a.shape(),
                b.shape()
            )));
        }
    }
    Ok(())
}

/// One binding of a dispatch: `@binding(index)` gets `resource`.
#[derive(Clone, Copy)]
pub struct Binding<'t> {
    pub index: u32,
    pub resource: Resource<'t>,
}

/// What a binding holds.
#[derive(Clone, Copy)]
pub enum Resource<'t> {
    /// A storage buffer whose element type must be the `DType` (the shader's `array<f32>` or
    /// `array<u32>`, or their vec4 forms for F32).
    Tensor(&'t Tensor, DType),
    /// An rgba32float storage texture: `texture_storage_2d<rgba32float, read>` (read with
    /// `textureLoad`) or `<rgba32float, write>`.
    Texture(&'t Texture),
}

/// Bytes of uniform parameters one recorder may hold before it flushes.
const UNIFORM_ARENA_BYTES: u64 = 256 * 1024;

pub struct Recorder {
    gpu: Arc<Gpu>,
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    uniforms: Vec<u8>,
    arena: Option<wgpu::Buffer>,
    dispatches: usize,
    /// Every tensor (and texture) the recorded commands touch, held until they are submitted: a tensor
    /// dropped earlier would return its buffer to the pool, and an upload into the reused
    /// buffer (`write_buffer` runs at the start of the next submit) would overwrite data the
    /// recorded commands still have to read.
    in_use: Vec<Tensor>,
    textures_in_use: Vec<Texture>,
    /// While profiling: the dispatches recorded with timestamps since the last submit, and the
    /// query set their timestamps go to.
    timed: Vec<Timed>,
    queries: Option<QueryKit>,
    /// The tensors `stand_in` hands out, one per slot.
    stand_ins: Vec<Tensor>,
    /// The tensors `scratch` hands out, one per slot (the largest asked for so far).
    scratch: Vec<Option<Tensor>>,
}

impl Recorder {
    pub fn new(gpu: &Arc<Gpu>) -> Recorder {
        let arena = gpu.uniform_arenas.lock().unwrap().pop().unwrap_or_else(|| {
            Counters::bump(&gpu.counters.buffers);
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("uniform arena"),
                size: UNIFORM_ARENA_BYTES,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        Recorder {
            gpu: gpu.clone(),
            encoder: None,
            pass: None,
            uniforms: Vec::new(),
            arena: Some(arena),
            dispatches: 0,
            in_use: Vec::new(),
            textures_in_use: Vec::new(),
            timed: Vec::new(),
            queries: None,
            stand_ins: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Stand-in `slot`: a 4-float tensor to bind where a kernel's specialisation never reads or
    /// writes. Binding another binding's tensor there instead would bind one buffer twice, and
    /// where either binding is writable WebGPU forbids it (`dispatch` refuses it, see
    /// `check_aliasing`). A dispatch's stand-ins take different slots (one buffer at two
    /// bindings is the same aliasing); the recorder's dispatches share them, since no dispatch
    /// touches them. Bound as u32 elements through `Tensor::bitcast`.
    pub fn stand_in(&mut self, slot: usize) -> Result<Tensor> {
        while self.stand_ins.len() <= slot {
            let t = self.gpu.tensor(&[4], DType::F32)?;
            self.stand_ins.push(t);
        }
        Ok(self.stand_ins[slot].clone())
    }

    /// Scratch `slot`: `len` f32s the recorder's dispatches share, for what one dispatch writes
    /// and the next reads (split-K's partial sums). Dispatches run in recorded order, wgpu
    /// ordering each one's reads after the writes before it, so every product a recorder holds
    /// can use the same memory where a tensor of its own each would hold them all until the
    /// submit. Kept at the largest length asked for (a longer request allocates anew; the
    /// dispatches that bound the shorter one keep it until then).
    pub fn scratch(&mut self, slot: usize, len: usize) -> Result<Tensor> {
        if self.scratch.len() <= slot {
            self.scratch.resize(slot + 1, None);
        }
        let fits = self.scratch[slot].as_ref().is_some_and(|t| t.len() >= len);
        if !fits {
            self.scratch[slot] = Some(self.gpu.tensor(&[len], DType::F32)?);
        }
        let t = self.scratch[slot].as_ref().unwrap();
        if t.len() == len { Ok(t.clone()) } else { t.view(&self.gpu, 0, &[len]) }
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Number of dispatches recorded so far (for benches and tests).
    pub fn dispatch_count(&self) -> usize {
        self.dispatches
    }

    fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None; // copies and clears happen outside the compute pass
        self.encoder.get_or_insert_with(|| self.gpu.device.create_command_encoder(&Default::default()))
    }

    fn pass(&mut self) -> &mut wgpu::ComputePass<'static> {
        if self.pass.is_none() {
            let encoder =
                self.encoder.get_or_insert_with(|| self.gpu.device.create_command_encoder(&Default::default()));
            let pass = encoder.begin_compute_pass(&Default::default()).forget_lifetime();
            self.pass = Some(pass);
        }
        self.pass.as_mut().unwrap()
    }

    /// Records one dispatch of `entry` in `shader`. `params` is the kernel's uniform struct
    /// (bound at `@binding(0)`), `bindings` its storage buffers, `workgroups` the grid, `work`
    /// what it computes (for the profiler's rates).
    #[allow(clippy::too_many_arguments)]
    pub fn dispatch(
        &mut self,
        shader: &Shader,
        entry: &str,
        constants: &[(&str, f64)],
        params: &[u8],
        bindings: &[Binding],
        workgroups: [u32; 3],
        work: Work,
    ) -> Result<()> {
        let timed = self.gpu.is_profiling() && self.gpu.has_timestamps();
        if timed && self.timed.len() == MAX_TIMED_DISPATCHES {
            self.flush(); // the query set is full
        }
        let max_binding = self.gpu.limits.max_storage_buffer_binding_size;
        for b in bindings {
            let Resource::Tensor(tensor, dtype) = b.resource else { continue };
            if tensor.dtype() != dtype {
                return Err(Error::Shape(format!(
                    "{}:{entry}: binding {} wants {:?} elements, got a {:?} tensor {:?}",
                    shader.name,
                    b.index,
                    dtype,
                    tensor.dtype(),
                    tensor.shape()
                )));
            }
            if tensor.byte_len() > max_binding {
                return Err(Error::MissingCapability(format!(
                    "{entry}: binding {} is a tensor {:?} of {} bytes, above max_storage_buffer_binding_size = {} on {}",
                    b.index,
                    tensor.shape(),
                    tensor.byte_len(),
                    max_binding,
                    self.gpu.info.name
                )));
            }
        }
        let align = self.gpu.limits.min_uniform_buffer_offset_alignment as usize;
        let padded = params.len().next_multiple_of(16).max(16);
        if (self.uniforms.len().next_multiple_of(align) + padded) as u64 > UNIFORM_ARENA_BYTES {
            self.flush();
        }
        let offset = self.uniforms.len().next_multiple_of(align);
        self.uniforms.resize(offset, 0);
        self.uniforms.extend_from_slice(params);
        self.uniforms.resize(offset + padded, 0);

        let pipeline = self.gpu.pipeline(shader, entry, constants)?;
        check_aliasing(shader, entry, &pipeline, bindings)?;
        let arena = self.arena.as_ref().unwrap();
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: arena,
                offset: offset as u64,
                size: wgpu::BufferSize::new(padded as u64),
            }),
        }];
        for b in bindings {
            let resource = match b.resource {
                Resource::Tensor(tensor, _) => {
                    self.in_use.push(tensor.clone());
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: tensor.buffer(),
                        offset: tensor.byte_offset(),
                        size: wgpu::BufferSize::new(tensor.byte_len()),
                    })
                }
                Resource::Texture(texture) => {
                    self.textures_in_use.push(texture.clone());
                    wgpu::BindingResource::TextureView(texture.view())
                }
            };
            entries.push(wgpu::BindGroupEntry { binding: b.index, resource });
        }
        let bind_group = self.gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &pipeline.compute.get_bind_group_layout(0),
            entries: &entries,
        });
        self.dispatches += 1;
        Counters::bump(&self.gpu.counters.dispatches);
        if timed {
            // A pass of its own, with a timestamp at its start and its end.
            self.pass = None;
            let queries = self.queries.get_or_insert_with(|| self.gpu.take_query_kit());
            let encoder =
                self.encoder.get_or_insert_with(|| self.gpu.device.create_command_encoder(&Default::default()));
            let at = 2 * self.timed.len() as u32;
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(entry),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &queries.query_set,
                    beginning_of_pass_write_index: Some(at),
                    end_of_pass_write_index: Some(at + 1),
                }),
            });
            pass.set_pipeline(&pipeline.compute);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
            self.timed.push(Timed { kernel: format!("{}:{entry}", shader.name), work });
            return Ok(());
        }
        if self.gpu.is_profiling() {
            self.gpu.profile_untimed(&format!("{}:{entry}", shader.name), work);
        }
        let pass = self.pass();
        pass.set_pipeline(&pipeline.compute);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        Ok(())
    }

    /// Records `dst = 0`.
    pub fn zero(&mut self, dst: &Tensor) {
        self.in_use.push(dst.clone());
        let (buffer, offset, len) = (dst.buffer().clone(), dst.byte_offset(), dst.len() as u64 * 4);
        self.encoder().clear_buffer(&buffer, offset, Some(len));
    }

    /// Records a copy of `src` into `dst` (same number of elements).
    pub fn copy(&mut self, src: &Tensor, dst: &Tensor) {
        assert_eq!(src.len(), dst.len(), "copy between tensors of different sizes");
        self.in_use.extend([src.clone(), dst.clone()]);
        let (s, so, d, d_o, n) =
            (src.buffer().clone(), src.byte_offset(), dst.buffer().clone(), dst.byte_offset(), src.len() as u64 * 4);
        self.encoder().copy_buffer_to_buffer(&s, so, &d, d_o, n);
    }

    /// Records a copy of `dst.height()` rows of `dst.width()` texels (4 f32s each) from `src` into
    /// the texture `dst`: row y from element `first + y·stride` of `src`. The caller keeps to
    /// the copy's alignment rules (`stride` a multiple of 64 elements, `first` of 4, counting
    /// the view's own offset).
    pub fn copy_to_texture(&mut self, src: &Tensor, first: usize, stride: usize, dst: &Texture) {
        self.in_use.push(src.clone());
        let layout = wgpu::TexelCopyBufferLayout {
            offset: src.byte_offset() + 4 * first as u64,
            bytes_per_row: Some(4 * stride as u32),
            rows_per_image: None,
        };
        let size = wgpu::Extent3d { width: dst.width(), height: dst.height(), depth_or_array_layers: 1 };
        let buffer = src.buffer().clone();
        self.encoder().copy_buffer_to_texture(
            wgpu::TexelCopyBufferInfo { buffer: &buffer, layout },
            dst.texture().as_image_copy(),
            size,
        );
    }

    /// Records a timestamp into query `index` of `kit` at this point (the start of an empty
    /// pass): two of them bracket the GPU's work between, copies included.
    pub(crate) fn write_timestamp(&mut self, kit: &QueryKit, index: u32) {
        let timestamp_writes = wgpu::ComputePassTimestampWrites {
            query_set: &kit.query_set,
            beginning_of_pass_write_index: Some(index),
            end_of_pass_write_index: None,
        };
        let descriptor =
            wgpu::ComputePassDescriptor { label: Some("timestamp"), timestamp_writes: Some(timestamp_writes) };
        drop(self.encoder().begin_compute_pass(&descriptor));
    }

    /// Records the copy of `kit`'s first `n` timestamps into its readback buffer
    /// (`Gpu::read_timestamps` reads them once this is submitted).
    pub(crate) fn resolve_timestamps(&mut self, kit: &QueryKit, n: u32) {
        let encoder = self.encoder();
        encoder.resolve_query_set(&kit.query_set, 0..n, &kit.resolve, 0);
        encoder.copy_buffer_to_buffer(&kit.resolve, 0, &kit.readback, 0, n as u64 * wgpu::QUERY_SIZE as u64);
    }

    /// Uploads the parameters and submits what has been recorded so far; the recorder stays
    /// usable. (While profiling, it then waits for the timestamps of what it submitted.)
    pub fn flush(&mut self) {
        self.pass = None;
        if let Some(mut encoder) = self.encoder.take() {
            if !self.uniforms.is_empty() {
                self.gpu.queue.write_buffer(self.arena.as_ref().unwrap(), 0, &self.uniforms);
            }
            let queries = self.queries.as_ref().filter(|_| !self.timed.is_empty());
            if let Some(q) = queries {
                let n = 2 * self.timed.len() as u32;
                encoder.resolve_query_set(&q.query_set, 0..n, &q.resolve, 0);
                encoder.copy_buffer_to_buffer(&q.resolve, 0, &q.readback, 0, n as u64 * wgpu::QUERY_SIZE as u64);
            }
            self.gpu.queue.submit([encoder.finish()]);
            Counters::bump(&self.gpu.counters.submits);
            if !self.timed.is_empty() {
                // The profiler reads the timestamps at the next wait: a submit never waits.
                let kit = self.queries.take().expect("timed dispatches have their query kit");
                self.gpu.defer_timed(kit, std::mem::take(&mut self.timed));
            }
        }
        self.uniforms.clear();
        self.in_use.clear();
        self.textures_in_use.clear();
    }

    /// Submits everything recorded. Does not wait: a later download or `Gpu::wait` does.
    pub fn submit(mut self) {
        self.flush();
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // Unsubmitted work is submitted rather than lost; the arena goes back for reuse (queue
        // order guarantees the next recorder's write lands after this submission has read it).
        self.flush();
        if let Some(arena) = self.arena.take() {
            self.gpu.uniform_arenas.lock().unwrap().push(arena);
        }
        if let Some(queries) = self.queries.take() {
            self.gpu.return_query_kit(queries);
        }
    }
}
