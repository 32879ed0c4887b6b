//! The GPU layer: device and queue, cached pipelines, pooled tensors, and a recorder that
//! batches many kernel dispatches into one compute pass and one submit.
//!
//! Nothing above this layer needs to name a wgpu type: kernels take `&mut Recorder` and
//! `&Tensor`s, and the model and trainer only ever see those.

mod profiler;
mod recorder;
mod tensor;
mod variants;

pub use profiler::{Iteration, KernelRow, PerIteration, Phase, PhaseRow, Profile, Work};
pub use recorder::{Binding, PRELUDE, Pipeline, Recorder, Resource, Shader, WritableBindings};
pub use tensor::{DType, Tensor, Texture};
pub use variants::{CACHE_ENV, CACHE_FORMAT, Choice, kernels_fingerprint};
pub(crate) use variants::{choose_by_measurement, matches_reference, seconds_per_call};

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tensor::BufferPool;

/// The environment variable that picks an adapter by a substring of its name.
pub const ADAPTER_ENV: &str = "PPO_WGPU_ADAPTER";

/// Running totals of the host↔GPU work a device has done (see `Gpu::counts`).
#[derive(Default)]
pub(crate) struct Counters {
    dispatches: std::sync::atomic::AtomicU64,
    submits: std::sync::atomic::AtomicU64,
    readbacks: std::sync::atomic::AtomicU64,
    buffers: std::sync::atomic::AtomicU64,
    pipelines: std::sync::atomic::AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &std::sync::atomic::AtomicU64) {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A snapshot of a device's counters: kernel dispatches, command submissions, readbacks (host
/// waits for data), GPU buffers created (the pool's reuses excluded) and pipelines compiled.
/// (The profiler's own timestamp readbacks are not counted.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub dispatches: u64,
    pub submits: u64,
    pub readbacks: u64,
    pub buffers: u64,
    pub pipelines: u64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            dispatches: self.dispatches - o.dispatches,
            submits: self.submits - o.submits,
            readbacks: self.readbacks - o.readbacks,
            buffers: self.buffers - o.buffers,
            pipelines: self.pipelines - o.pipelines,
        }
    }
}

impl std::ops::Add for Counts {
    type Output = Counts;
    fn add(self, o: Counts) -> Counts {
        Counts {
            dispatches: self.dispatches + o.dispatches,
            submits: self.submits + o.submits,
            readbacks: self.readbacks + o.readbacks,
            buffers: self.buffers + o.buffers,
            pipelines: self.pipelines + o.pipelines,
        }
    }
}

/// The matmul implementations, one chosen per adapter by measurement (`kernels::matmul::variant`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulVariant {
    /// Workgroup-shared tiles: the fast kernel on real GPUs.
    WorkgroupTiled,
    /// No workgroup memory, 8×16 outputs per invocation in vec4 registers: the fast kernel on
    /// CPU adapters (lavapipe), where barriers are expensive.
    RegisterTiled,
    /// Operands packed into rgba32float textures, 16×16 outputs per invocation: the fast kernel
    /// on CPU adapters whose storage-buffer loads are slow (lavapipe on AVX2 hosts).
    Texture,
    /// The texture kernel with the rows of A shared across a subgroup of 8 invocations by
    /// broadcast, 32×8 outputs per invocation: fewer texel fetches, where those bound the
    /// texture kernel (lavapipe). Offered where the adapter's subgroups have exactly 8
    /// invocations; elsewhere it runs as `Texture`.
    TextureSubgroup,
    /// K split into slices, one invocation per output column and slice, and a second pass that
    /// adds the slices: for products of few rows (a decode step's) on GPUs, where the tiled
    /// kernels leave most of the GPU idle. Products of more than
    /// `kernels::matmul::SPLIT_K_MAX_ROWS` rows run workgroup-tiled.
    SplitK,
    /// Workgroup-shared tiles of 128×128 outputs, 8×8 per invocation (`WorkgroupTiled`'s are
    /// 64×64, 4×4 each): more arithmetic per staged element, for large products on GPUs.
    WorkgroupTiledLarge,
}

impl MatmulVariant {
    /// Whether the variant packs its operands into textures (`Texture`, `TextureSubgroup`).
    pub fn reads_textures(self) -> bool {
        matches!(self, MatmulVariant::Texture | MatmulVariant::TextureSubgroup)
    }
}

/// Limits to lower below what the adapter offers (`Gpu::with_lower_limits`).
#[derive(Clone, Copy, Debug, Default)]
pub struct LowerLimits {
    pub storage_binding_bytes: Option<u64>,
    pub texture_dimension: Option<u32>,
    /// Leave subgroup operations off even where the adapter has them (tests of the variants'
    /// fallbacks on adapters without them). Such a device measures its variants on a twin
    /// without them too, and neither reads nor writes the variant cache, whose entries describe
    /// the adapter as it is.
    pub no_subgroups: bool,
    /// No limit better than WebGPU's defaults, what a browser gives a page that asks for
    /// nothing more (`wgpu::Limits::defaults()`: 128 MiB storage bindings, 256 MiB buffers,
    /// 8192-texel textures, binding offsets aligned to 256 bytes, …): tests that the whole
    /// pipeline runs within them.
    pub webgpu_defaults: bool,
}

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// What was lowered below the adapter's offer.
    pub(crate) lower: LowerLimits,
    /// The kernel variants chosen for this device, by family, and the cache file behind them.
    choices: Mutex<std::collections::BTreeMap<String, Choice>>,
    variant_cache: Mutex<Option<std::path::PathBuf>>,
    /// Each shader's compiled module, and its entry points' writable bindings.
    modules: Mutex<HashMap<&'static str, (wgpu::ShaderModule, Arc<WritableBindings>)>>,
    pipelines: Mutex<HashMap<String, Pipeline>>,
    pool: BufferPool,
    /// Uniform buffers for recorders, reused once a recorder has submitted.
    uniform_arenas: Mutex<Vec<wgpu::Buffer>>,
    /// What this device has done so far, for tests and benches that check the budgets of
    /// docs/design.md §7.
    pub(crate) counters: Counters,
    /// The profiler (`--profile`): on or off, what it has gathered, and its pooled timestamp
    /// query sets.
    profiling: std::sync::atomic::AtomicBool,
    profile: Mutex<profiler::ProfileData>,
    query_kits: Mutex<Vec<profiler::QueryKit>>,
    /// Submitted recorders' timed dispatches, with the kits their timestamps resolve into,
    /// read at the next wait rather than at their submit (`profiler::Gpu::defer_timed`).
    pending_timed: Mutex<Vec<(profiler::QueryKit, Vec<profiler::Timed>)>>,
    /// Errors wgpu reported outside an error scope (validation, out of memory), kept until the
    /// next `wait` or download turns the first into this crate's error instead of a panic.
    uncaptured: Arc<Mutex<Vec<String>>>,
}

/// Backends we ask for: Vulkan, Metal, DX12. Never GL: on Linux it would silently pick the
/// llvmpipe GL adapter, which lacks the features real training wants.
const BACKENDS: wgpu::Backends = wgpu::Backends::PRIMARY;

/// Minimum limits the kernels rely on (the WebGPU defaults, stated here so that a weaker
/// adapter gets an error that names what it lacks).
const NEEDED_STORAGE_BUFFERS_PER_STAGE: u32 = 8;
const NEEDED_WORKGROUP_STORAGE_BYTES: u32 = 16 * 1024;
const NEEDED_INVOCATIONS_PER_WORKGROUP: u32 = 256;

fn device_type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

const NO_DRIVER_HINT: &str = "install a Vulkan driver (on Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1`, \
     which includes the lavapipe software adapter), or a Metal/DX12 capable GPU driver. With an NVIDIA \
     driver installed, the Vulkan loader (libvulkan1) and glvnd (libglvnd0 libglx0 libegl1) must be \
     there too: NVIDIA's Vulkan driver lives in its GLX library";

/// The host CPU's model name (`model name` in /proc/cpuinfo on Linux), for reports: on a
/// software adapter the CPU sets the speed.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Lists the adapters wgpu can see on the backends we use.
pub fn list_adapters() -> Vec<wgpu::AdapterInfo> {
    let instance = new_instance();
    pollster::block_on(instance.enumerate_adapters(BACKENDS)).iter().map(|a| a.get_info()).collect()
}

fn new_instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = BACKENDS;
    wgpu::Instance::new(desc)
}

impl Gpu {
    /// Opens a device on the adapter whose name contains `name_filter` (case-insensitive), or on
    /// `$PPO_WGPU_ADAPTER` when the filter is `None`, or else on the highest-performance adapter.
    pub fn new(name_filter: Option<&str>) -> Result<Arc<Gpu>> {
        Self::with_binding_limit(name_filter, None)
    }

    /// As `new`, with the storage-binding limit lowered to `max_binding_bytes` (when given):
    /// tests use it to exercise the paths that split work across bindings on small shapes.
    pub fn with_binding_limit(name_filter: Option<&str>, max_binding_bytes: Option<u64>) -> Result<Arc<Gpu>> {
        Self::with_lower_limits(
            name_filter,
            LowerLimits { storage_binding_bytes: max_binding_bytes, ..Default::default() },
        )
    }

    /// As `new`, with some limits lowered below what the adapter offers (tests use it to
    /// exercise the paths that split work to fit them, on small shapes).
    pub fn with_lower_limits(name_filter: Option<&str>, lower: LowerLimits) -> Result<Arc<Gpu>> {
        let env_filter = std::env::var(ADAPTER_ENV).ok().filter(|s| !s.is_empty());
        let filter = name_filter.map(str::to_string).or(env_filter);

        let instance = new_instance();
        let mut adapters = pollster::block_on(instance.enumerate_adapters(BACKENDS));
        if adapters.is_empty() {
            return Err(Error::NoAdapter(format!("wgpu found no Vulkan, Metal or DX12 adapter; {NO_DRIVER_HINT}")));
        }
        adapters.sort_by_key(|a| device_type_rank(a.get_info().device_type));
        let adapter = match &filter {
            None => adapters.remove(0),
            Some(f) => {
                let needle = f.to_lowercase();
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                let at = names.iter().position(|n| n.to_lowercase().contains(&needle)).ok_or_else(|| {
                    Error::NoAdapter(format!("no adapter name contains {f:?}; available: {}", names.join(", ")))
                })?;
                adapters.remove(at)
            }
        };
        Self::open(adapter, lower)
    }

    fn open(adapter: wgpu::Adapter, lower: LowerLimits) -> Result<Arc<Gpu>> {
        let info = adapter.get_info();
        let available = adapter.limits();
        let needed = [
            (
                "max_storage_buffers_per_shader_stage",
                available.max_storage_buffers_per_shader_stage,
                NEEDED_STORAGE_BUFFERS_PER_STAGE,
            ),
            (
                "max_compute_workgroup_storage_size",
                available.max_compute_workgroup_storage_size,
                NEEDED_WORKGROUP_STORAGE_BYTES,
            ),
            (
                "max_compute_invocations_per_workgroup",
                available.max_compute_invocations_per_workgroup,
                NEEDED_INVOCATIONS_PER_WORKGROUP,
            ),
        ];
        for (name, have, need) in needed {
            if have < need {
                return Err(Error::MissingCapability(format!(
                    "{}: {name} is {have}, the kernels need {need}",
                    info.name
                )));
            }
        }
        // Ask for everything the adapter offers: GPT-2-small activations need storage bindings
        // and buffers far above the WebGPU defaults (128 MiB / 256 MiB).
        let mut limits = available.clone();
        if let Some(max) = lower.storage_binding_bytes {
            limits.max_storage_buffer_binding_size = limits.max_storage_buffer_binding_size.min(max);
        }
        if let Some(max) = lower.texture_dimension {
            limits.max_texture_dimension_2d = limits.max_texture_dimension_2d.min(max);
        }
        if lower.webgpu_defaults {
            limits = limits.or_worse_values_from(&wgpu::Limits::defaults());
        }
        // Timestamp queries where the adapter has them, for the profiler (they cost nothing
        // until it asks for them), and subgroup operations, for the kernel variants that use
        // them (offered only where the device has them: `has_subgroups`).
        let mut features = adapter.features() & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP);
        if lower.no_subgroups {
            features.remove(wgpu::Features::SUBGROUP);
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("ppo-wgpu"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Device(format!("{}: {e}", info.name)))?;
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| sink.lock().unwrap().push(e.to_string())));
        Ok(Arc::new(Gpu {
            device,
            queue,
            info,
            limits,
            lower,
            choices: Mutex::new(Default::default()),
            variant_cache: Mutex::new(if lower.no_subgroups { None } else { variants::default_cache_path() }),
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            pool: BufferPool::default(),
            uniform_arenas: Mutex::new(Vec::new()),
            counters: Counters::default(),
            profiling: Default::default(),
            profile: Mutex::new(profiler::ProfileData::new(Counts::default())),
            query_kits: Mutex::new(Vec::new()),
            pending_timed: Mutex::new(Vec::new()),
            uncaptured,
        }))
    }

    /// The counters so far; subtract two snapshots to count what happened in between.
    pub fn counts(&self) -> Counts {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let c = &self.counters;
        Counts {
            dispatches: get(&c.dispatches),
            submits: get(&c.submits),
            readbacks: get(&c.readbacks),
            buffers: get(&c.buffers),
            pipelines: get(&c.pipelines),
        }
    }

    /// Whether kernels may use subgroup operations (`subgroupAdd`, …) on this device.
    pub fn has_subgroups(&self) -> bool {
        self.device.features().contains(wgpu::Features::SUBGROUP)
    }

    /// The size of every subgroup, where the device has subgroup operations and the adapter
    /// reports one size only (a kernel that hands values round a subgroup by fixed lanes
    /// needs it: `kernels::matmul`'s texture-subgroup variant).
    pub fn fixed_subgroup_size(&self) -> Option<usize> {
        let (min, max) = (self.info.subgroup_min_size, self.info.subgroup_max_size);
        (self.has_subgroups() && min == max && min > 0).then_some(min as usize)
    }

    /// The smallest subgroup the adapter reports (a kernel sizes its grid by it).
    pub fn min_subgroup_size(&self) -> usize {
        self.info.subgroup_min_size.max(1) as usize
    }

    /// A one-line description: adapter name, backend, device type, driver.
    pub fn describe(&self) -> String {
        let i = &self.info;
        format!("{} ({:?}, {:?}, driver {} {})", i.name, i.backend, i.device_type, i.driver, i.driver_info)
    }

    /// The limits that matter to the kernels, as (name, value) rows for `ppo-wgpu info`.
    pub fn limit_rows(&self) -> Vec<(&'static str, u64)> {
        let l = &self.limits;
        vec![
            ("max_buffer_size", l.max_buffer_size),
            ("max_storage_buffer_binding_size", l.max_storage_buffer_binding_size),
            ("max_storage_buffers_per_shader_stage", l.max_storage_buffers_per_shader_stage as u64),
            ("max_compute_workgroup_storage_size", l.max_compute_workgroup_storage_size as u64),
            ("max_compute_invocations_per_workgroup", l.max_compute_invocations_per_workgroup as u64),
            ("max_compute_workgroups_per_dimension", l.max_compute_workgroups_per_dimension as u64),
            ("min_storage_buffer_offset_alignment", l.min_storage_buffer_offset_alignment as u64),
            ("max_texture_dimension_2d", l.max_texture_dimension_2d as u64),
        ]
    }

    /// The compute pipeline for `entry` of `shader` with the given override constants, compiled
    /// on first use and cached: pipelines are never created in a training loop. A shader or
    /// pipeline wgpu rejects is an error naming it.
    pub fn pipeline(&self, shader: &Shader, entry: &str, constants: &[(&str, f64)]) -> Result<Pipeline> {
        let key = format!("{}:{entry}:{constants:?}", shader.name);
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        // Compiled without wgpu's injected bounds checks, which halve matmul throughput on
        // lavapipe: every kernel clamps or guards its own indices against `params`, and the
        // kernel functions check `params` against the bound tensors' sizes on the host. Set
        // PPO_WGPU_CHECKED=1 to compile with the checks when debugging a kernel.
        let checks = if std::env::var_os("PPO_WGPU_CHECKED").is_some() {
            wgpu::ShaderRuntimeChecks::checked()
        } else {
            wgpu::ShaderRuntimeChecks::unchecked()
        };
        let (module, writable) = {
            let mut modules = self.modules.lock().unwrap();
            if !modules.contains_key(shader.name) {
                let writable = shader
                    .writable_bindings()
                    .map_err(|e| Error::Gpu(format!("compiling {key} on {}: {e}", self.info.name)))?;
                let writable = Arc::new(writable);
                let module = unsafe {
                    self.device.create_shader_module_trusted(
                        wgpu::ShaderModuleDescriptor {
                            label: Some(shader.name),
                            source: wgpu::ShaderSource::Wgsl(shader.wgsl().into()),
                        },
                        checks,
                    )
                };
                modules.insert(shader.name, (module, writable));
            }
            modules[shader.name].clone()
        };
        let compute = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&key),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            self.modules.lock().unwrap().remove(shader.name);
            return Err(Error::Gpu(format!("compiling {key} on {}: {e}", self.info.name)));
        }
        let pipeline = Pipeline { compute, writable: writable.get(entry).map_or(&[][..], |w| w).into() };
        self.pipelines.lock().unwrap().insert(key, pipeline.clone());
        Counters::bump(&self.counters.pipelines);
        Ok(pipeline)
    }

    /// Workgroup counts for `n_groups` workgroups laid out as a 2D grid whose x fits the
    /// per-dimension limit. Kernels recover the flat index as `wid.y * nwg.x + wid.x`.
    pub fn grid(&self, n_groups: usize) -> [u32; 3] {
        let max_x = self.limits.max_compute_workgroups_per_dimension as usize;
        if n_groups <= max_x {
            [n_groups.max(1) as u32, 1, 1]
        } else {
            [max_x as u32, n_groups.div_ceil(max_x) as u32, 1]
        }
    }

    /// Blocks until all submitted work has finished. A lost device, or an error wgpu reported
    /// since the last wait, is an error here. (With `download*`, the only place the host waits
    /// for the GPU: on WebGPU these become async.)
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Device(format!("{}: lost while waiting for submitted work: {e}", self.info.name)))?;
        self.read_pending_timestamps(); // the profiler's, now that the GPU has run them
        self.take_uncaptured_error()
    }

    /// The first error wgpu reported outside an error scope since the last call, as an error.
    pub fn take_uncaptured_error(&self) -> Result<()> {
        let mut errors = self.uncaptured.lock().unwrap();
        match errors.first().cloned() {
            Some(first) => {
                let more = errors.len() - 1;
                errors.clear();
                let more = if more > 0 { format!(" (and {more} more)") } else { String::new() };
                Err(Error::Gpu(format!("{}: {first}{more}", self.info.name)))
            }
            None => Ok(()),
        }
    }
}
