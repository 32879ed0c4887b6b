//! Typed GPU tensors that know their shape, and the buffer pool behind them.
//!
//! A `Tensor` is a view (byte offset + shape) into a pooled storage buffer. When the last
//! tensor viewing a buffer is dropped, the buffer goes back to the pool, keyed by its size, so
//! a training loop that repeats the same shapes allocates nothing after its first step. A loop
//! calls `Gpu::trim_pool` once per iteration, and the pool lets go of what the last iteration
//! did not use. Set `PPO_WGPU_NO_POOL=1` to turn reuse off when hunting a bug.

use super::{Counters, Gpu};
use crate::error::{Error, Result, ensure_shape};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Element type of a tensor. Every element is 4 bytes; the kernels compute in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    U32,
}

#[derive(Default)]
pub(crate) struct BufferPool {
    /// Storage buffers given back, by size.
    free: Mutex<FreeLists>,
    /// Bytes of storage buffers and textures the device holds: in use or kept by the pool.
    allocated: AtomicU64,
    /// Staging buffers for readback, by size.
    staging: Mutex<FreeLists>,
    /// Scratch textures: see `Gpu::scratch_texture`.
    scratch_textures: Mutex<ScratchTextures>,
    /// Counts the calls of `Gpu::trim_pool`.
    epoch: AtomicU64,
}

/// Buffers by size, each with the pool's epoch when it was given back.
type FreeLists = HashMap<u64, Vec<(wgpu::Buffer, u64)>>;

/// Textures by (slot, width, height), each with the pool's epoch at its last use.
type ScratchTextures = HashMap<(u32, u32, u32), (Texture, u64)>;

/// Bytes of a scratch texture of key (slot, width, height): 16 per rgba32float texel.
fn texture_bytes(&(_, width, height): &(u32, u32, u32)) -> u64 {
    16 * width as u64 * height as u64
}

/// Drops the buffers of `lists` given back before epoch `keep_from`; returns their bytes.
fn drop_older(lists: &mut FreeLists, keep_from: u64) -> u64 {
    let mut bytes = 0;
    lists.retain(|&size, list| {
        list.retain(|&(_, epoch)| {
            epoch >= keep_from || {
                bytes += size;
                false
            }
        });
        !list.is_empty()
    });
    bytes
}

/// A storage buffer that returns itself to its pool when dropped.
struct PooledBuffer {
    buffer: wgpu::Buffer,
    pool: Arc<Gpu>,
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let pool = &self.pool.pool;
        if std::env::var_os("PPO_WGPU_NO_POOL").is_none() {
            let epoch = pool.epoch.load(Ordering::Relaxed);
            pool.free.lock().unwrap().entry(self.buffer.size()).or_default().push((self.buffer.clone(), epoch));
        } else {
            pool.allocated.fetch_sub(self.buffer.size(), Ordering::Relaxed);
        }
    }
}

/// A 2D `rgba32float` texture: `height` rows of `width` texels of four f32s. The texture-operand
/// matmul packs its operands into these (`kernels::matmul`).
#[derive(Clone)]
pub struct Texture {
    inner: Arc<(wgpu::Texture, wgpu::TextureView)>,
}

impl std::fmt::Debug for Texture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Texture({}×{} rgba32float)", self.width(), self.height())
    }
}

impl Texture {
    /// Texels per row (each four f32s).
    pub fn width(&self) -> u32 {
        self.inner.0.width()
    }
    /// Rows.
    pub fn height(&self) -> u32 {
        self.inner.0.height()
    }
    pub(crate) fn view(&self) -> &wgpu::TextureView {
        &self.inner.1
    }
    pub(crate) fn texture(&self) -> &wgpu::Texture {
        &self.inner.0
    }
}

/// Scratch textures a device keeps before it lets them all go (a run whose shapes keep
/// changing would otherwise keep one per shape).
const SCRATCH_TEXTURES_KEPT: usize = 64;

#[derive(Clone)]
pub struct Tensor {
    buffer: Arc<PooledBuffer>,
    /// Offset of the first element, in elements.
    offset: usize,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?} {:?} @{})", self.dtype, self.shape, self.offset)
    }
}

const ELEM_BYTES: u64 = 4;

impl Tensor {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer.buffer
    }
    pub(crate) fn byte_offset(&self) -> u64 {
        self.offset as u64 * ELEM_BYTES
    }
    /// Bytes viewed by this tensor (at least 4, so that empty tensors still bind).
    pub(crate) fn byte_len(&self) -> u64 {
        (self.len() as u64 * ELEM_BYTES).max(ELEM_BYTES)
    }

    /// The same memory read as `dtype`: the stand-in a kernel binds where its flags keep a
    /// binding of the other element type unread (an f16 operand's f32 binding, and so on).
    pub fn bitcast(&self, dtype: DType) -> Tensor {
        Tensor { dtype, ..self.clone() }
    }

    /// The same data under another shape with the same number of elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        ensure_shape(n == self.len(), || format!("cannot reshape {:?} to {shape:?}", self.shape))?;
        Ok(Tensor { shape: shape.to_vec(), ..self.clone() })
    }

    /// A view of `shape` starting `offset` elements into this tensor, e.g. one parameter of a
    /// flat parameter buffer. The offset must respect the storage-binding alignment.
    pub fn view(&self, gpu: &Gpu, offset: usize, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        ensure_shape(offset + n <= self.len(), || {
            format!("view of {shape:?} at {offset} does not fit in {:?}", self.shape)
        })?;
        let align = gpu.limits.min_storage_buffer_offset_alignment as usize / ELEM_BYTES as usize;
        ensure_shape((self.offset + offset).is_multiple_of(align), || {
            format!("view offset {offset} is not a multiple of the storage alignment ({align} elements)")
        })?;
        Ok(Tensor {
            buffer: self.buffer.clone(),
            offset: self.offset + offset,
            shape: shape.to_vec(),
            dtype: self.dtype,
        })
    }
}

impl Gpu {
    /// A tensor with undefined contents (a pooled buffer may hold old data). A tensor larger
    /// than the adapter's max_buffer_size is an error naming both.
    pub fn tensor(self: &Arc<Self>, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let size = (n as u64 * ELEM_BYTES).max(ELEM_BYTES).next_multiple_of(256);
        if size > self.limits.max_buffer_size {
            return Err(Error::MissingCapability(format!(
                "a tensor of shape {shape:?} needs {size} bytes, above max_buffer_size = {} on {}; use a smaller batch or sequence",
                self.limits.max_buffer_size, self.info.name
            )));
        }
        let reused = self.pool.free.lock().unwrap().get_mut(&size).and_then(Vec::pop).map(|(buffer, _)| buffer);
        let buffer = match reused {
            Some(buffer) => buffer,
            None => {
                // Out of device memory is an error for the caller, not a panic inside wgpu.
                let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
                Counters::bump(&self.counters.buffers);
                let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                if let Some(e) = pollster::block_on(scope.pop()) {
                    return Err(Error::MissingCapability(format!(
                        "out of GPU memory allocating {size} bytes for a tensor of shape {shape:?} on {} ({} bytes already held): {e}",
                        self.info.name,
                        self.tensor_bytes_allocated()
                    )));
                }
                self.pool.allocated.fetch_add(size, Ordering::Relaxed);
                buffer
            }
        };
        Ok(Tensor {
            buffer: Arc::new(PooledBuffer { buffer, pool: self.clone() }),
            offset: 0,
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// A `width` × `height` rgba32float scratch texture for kernels that pack an operand and
    /// read it back within the same recorder: one per (slot, size), shared by every caller.
    /// That is safe because dispatches run in the order they were recorded and submitted, so a
    /// pack and the product that reads it finish before the next pack into the same texture;
    /// two textures a dispatch reads at once need different slots. Sizes beyond the adapter's
    /// max_texture_dimension_2d are an error naming it (callers split their work to fit).
    pub fn scratch_texture(self: &Arc<Self>, slot: u32, width: usize, height: usize) -> Result<Texture> {
        let max = self.limits.max_texture_dimension_2d as usize;
        if width == 0 || height == 0 || width > max || height > max {
            return Err(Error::MissingCapability(format!(
                "a {width}×{height} texture is outside 1..={max} (max_texture_dimension_2d on {})",
                self.info.name
            )));
        }
        let key = (slot, width as u32, height as u32);
        let epoch = self.pool.epoch.load(Ordering::Relaxed);
        let mut scratch = self.pool.scratch_textures.lock().unwrap();
        if let Some((t, used)) = scratch.get_mut(&key) {
            *used = epoch;
            return Ok(t.clone());
        }
        if scratch.len() >= SCRATCH_TEXTURES_KEPT {
            // Recorders still holding one keep it alive until they submit.
            let bytes: u64 = scratch.keys().map(texture_bytes).sum();
            self.pool.allocated.fetch_sub(bytes, Ordering::Relaxed);
            scratch.clear();
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        Counters::bump(&self.counters.buffers);
        let texture = self.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("scratch"),
            size: wgpu::Extent3d { width: key.1, height: key.2, depth_or_array_layers: 1 },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Float,
            // Written by the pack kernels or a copy, read as a read-only storage texture (never
            // sampled).
            usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::MissingCapability(format!(
                "out of GPU memory allocating a {width}×{height} rgba32float texture on {}: {e}",
                self.info.name
            )));
        }
        self.pool.allocated.fetch_add(texture_bytes(&key), Ordering::Relaxed);
        let view = texture.create_view(&Default::default());
        let t = Texture { inner: Arc::new((texture, view)) };
        scratch.insert(key, (t.clone(), epoch));
        Ok(t)
    }

    /// Bytes of tensor (and texture) storage this device holds: in use, or kept by the pool for
    /// reuse. A training loop in its steady state leaves it unchanged: every tensor comes from
    /// the pool.
    pub fn tensor_bytes_allocated(&self) -> u64 {
        self.pool.allocated.load(Ordering::Relaxed)
    }

    /// Lets go of what the pool keeps but the last iteration of a loop did not use: buffers
    /// given back before the previous call and not taken since, and scratch textures not used
    /// since it. A training loop calls it once per iteration. One whose shapes repeat keeps
    /// everything; one whose shapes change (prompts of other lengths each iteration) holds the
    /// buffers of its last two iterations instead of one set per shape it ever met.
    pub fn trim_pool(&self) {
        let keep_from = self.pool.epoch.fetch_add(1, Ordering::Relaxed);
        let mut freed = drop_older(&mut self.pool.free.lock().unwrap(), keep_from);
        drop_older(&mut self.pool.staging.lock().unwrap(), keep_from); // not counted in `allocated`
        self.pool.scratch_textures.lock().unwrap().retain(|key, (_, used)| {
            *used >= keep_from || {
                freed += texture_bytes(key);
                false
            }
        });
        self.pool.allocated.fetch_sub(freed, Ordering::Relaxed);
    }

    /// An f32 tensor holding `data`.
    pub fn upload(self: &Arc<Self>, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        self.upload_bytes(shape, DType::F32, bytemuck::cast_slice(data))
    }

    /// A u32 tensor holding `data` (token ids, positions, index lists).
    pub fn upload_u32(self: &Arc<Self>, shape: &[usize], data: &[u32]) -> Result<Tensor> {
        self.upload_bytes(shape, DType::U32, bytemuck::cast_slice(data))
    }

    fn upload_bytes(self: &Arc<Self>, shape: &[usize], dtype: DType, bytes: &[u8]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        ensure_shape(bytes.len() == n * ELEM_BYTES as usize, || {
            format!("upload of shape {shape:?} got {} elements", bytes.len() / ELEM_BYTES as usize)
        })?;
        let t = self.tensor(shape, dtype)?;
        if !bytes.is_empty() {
            self.queue.write_buffer(t.buffer(), t.byte_offset(), bytes);
        }
        Ok(t)
    }

    /// Overwrites a tensor's contents from the host (ordered before the next submit).
    pub fn write(&self, t: &Tensor, data: &[f32]) -> Result<()> {
        ensure_shape(data.len() == t.len(), || format!("write of {} elements into {t:?}", data.len()))?;
        self.queue.write_buffer(t.buffer(), t.byte_offset(), bytemuck::cast_slice(data));
        Ok(())
    }

    /// Copies a tensor back to the host, waiting for all submitted work. A round trip:
    /// training code calls this only for a few scalars per step.
    pub fn download(&self, t: &Tensor) -> Result<Vec<f32>> {
        Ok(bytemuck::cast_slice(&self.download_bytes(t)?).to_vec())
    }

    /// Copies `len` elements of a tensor starting at element `start` back to the host.
    pub fn download_range(&self, t: &Tensor, start: usize, len: usize) -> Result<Vec<f32>> {
        ensure_shape(start + len <= t.len(), || format!("range {start}..{} of {t:?}", start + len))?;
        let part = Tensor { buffer: t.buffer.clone(), offset: t.offset + start, shape: vec![len], dtype: t.dtype };
        Ok(bytemuck::cast_slice(&self.download_bytes(&part)?).to_vec())
    }

    pub fn download_u32(&self, t: &Tensor) -> Result<Vec<u32>> {
        Ok(bytemuck::cast_slice(&self.download_bytes(t)?).to_vec())
    }

    fn download_bytes(&self, t: &Tensor) -> Result<Vec<u8>> {
        let size = t.byte_len().next_multiple_of(256);
        let reused = self.pool.staging.lock().unwrap().get_mut(&size).and_then(Vec::pop).map(|(buffer, _)| buffer);
        let staging = reused.unwrap_or_else(|| {
            Counters::bump(&self.counters.buffers);
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(t.buffer(), t.byte_offset(), &staging, 0, t.byte_len());
        self.queue.submit([encoder.finish()]);
        Counters::bump(&self.counters.submits);
        Counters::bump(&self.counters.readbacks);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, ..t.byte_len(), move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv().map_err(|e| Error::Readback(e.to_string()))?.map_err(|e| Error::Readback(e.to_string()))?;
        let bytes = {
            let view = staging.get_mapped_range(..t.byte_len()).map_err(|e| Error::Readback(e.to_string()))?;
            view[..t.len() * ELEM_BYTES as usize].to_vec()
        };
        staging.unmap();
        let epoch = self.pool.epoch.load(Ordering::Relaxed);
        self.pool.staging.lock().unwrap().entry(size).or_default().push((staging, epoch));
        Ok(bytes)
    }
}
