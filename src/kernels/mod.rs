//! One module per kernel family: each holds the Rust side of one `shaders/*.wgsl` file, with a
//! function per entry point that checks shapes and records the dispatch into a `Recorder`.

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod embedding;
pub mod f16_weights;
pub mod gae;
pub mod gelu;
pub mod group_advantages;
pub mod kv_cache;
pub mod layernorm;
pub mod matmul;
pub mod padded_vocab;
pub mod ppo;
pub mod preference;
pub mod residual;
pub mod rewards;
pub mod rollout;
pub mod sampling;
pub mod window;

use crate::error::{Result, ensure_shape};
use crate::gpu::{Binding, DType, Gpu, Resource, Tensor, Texture};

/// `@binding(index)` = `tensor`, an `array<f32>` in the shader.
pub(crate) fn bind(index: u32, tensor: &Tensor) -> Binding<'_> {
    Binding { index, resource: Resource::Tensor(tensor, DType::F32) }
}

/// `@binding(index)` = `tensor`, an `array<u32>` in the shader (token ids, masks, indices).
pub(crate) fn bind_u32(index: u32, tensor: &Tensor) -> Binding<'_> {
    Binding { index, resource: Resource::Tensor(tensor, DType::U32) }
}

/// `@binding(index)` = `texture`, an rgba32float storage texture (read or write).
pub(crate) fn bind_texture(index: u32, texture: &Texture) -> Binding<'_> {
    Binding { index, resource: Resource::Texture(texture) }
}

/// A boolean override constant's value (WGSL's `override NAME: bool`).
pub(crate) fn flag(on: bool) -> f64 {
    on as u8 as f64
}

/// (rows, cols) of a tensor seen as a matrix whose rows are its last axis.
pub(crate) fn as_matrix(t: &Tensor) -> (usize, usize) {
    let cols = *t.shape().last().unwrap_or(&1);
    (t.len().checked_div(cols).unwrap_or(0), cols)
}

/// Checks that a tensor has exactly `n` elements.
pub(crate) fn expect_len(t: &Tensor, n: usize, what: &str) -> Result<()> {
    ensure_shape(t.len() == n, || format!("{what}: expected {n} elements, got {:?}", t.shape()))
}

/// Row ranges (start, count) of a [rows, cols] f32 tensor that each fit one storage binding:
/// all rows at once when the tensor fits, else the most rows that fit, in multiples of 64 (so
/// every slice of a row-major tensor, and of its per-row companions, starts on a 256-byte
/// boundary). Kernels over tensors larger than the binding limit run once per range.
pub(crate) fn row_ranges(gpu: &Gpu, rows: usize, cols: usize) -> Vec<(usize, usize)> {
    let limit = gpu.limits.max_storage_buffer_binding_size as usize / 4;
    let step = if rows * cols <= limit { rows.max(1) } else { (limit / cols.max(1) / 64 * 64).max(64) };
    (0..rows).step_by(step).map(|start| (start, step.min(rows - start))).collect()
}

/// An elementwise kernel's form and grid for `n` elements in workgroups of `wg`: the vec4 form
/// (one invocation per 4 elements, a quarter of the loads) when n is a multiple of 4, else one
/// invocation per element.
pub(crate) fn elementwise(gpu: &Gpu, n: usize, wg: usize) -> (bool, [u32; 3]) {
    let vec4 = n.is_multiple_of(4);
    (vec4, gpu.grid(groups(if vec4 { n / 4 } else { n }, wg)))
}

/// The most steps one invocation walks in its loops. Software adapters stop an invocation's
/// loops after a fixed number of iterations in all (llvmpipe: 65535, silently, leaving the rest
/// of its work undone), so a kernel that loops over a dimension that grows with the batch or
/// the vocabulary splits its dispatches to stay under this (a multiple of 64, so that row
/// slices stay aligned views).
pub const MAX_SERIAL_STEPS: usize = 16384;

/// (start, count) ranges of at most MAX_SERIAL_STEPS covering 0..n.
pub(crate) fn serial_ranges(n: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).step_by(MAX_SERIAL_STEPS).map(move |start| (start, MAX_SERIAL_STEPS.min(n - start)))
}

/// Rows per workgroup of `wg` invocations for the subgroup-per-row kernels (`workgroup_rows` in
/// the prelude): two rows per subgroup at the smallest size the adapter reports. The shaders'
/// subgroups share a workgroup's rows out whatever size they have, and walk their loop over rows
/// on every adapter (tests included).
pub(crate) fn subgroup_rows_per_group(gpu: &Gpu, wg: usize) -> usize {
    2 * (wg / gpu.min_subgroup_size()).max(1)
}

/// The subgroup size of the kernels that hand values round a subgroup by fixed lanes with
/// `subgroupBroadcast` (the texture-subgroup matmul and attention): lavapipe's 8-wide SIMD.
/// They run only where every subgroup has exactly this many invocations (`broadcast_lanes_fit`).
pub const BROADCAST_LANES: usize = 8;

/// Whether every subgroup of this device has BROADCAST_LANES invocations.
pub(crate) fn broadcast_lanes_fit(gpu: &Gpu) -> bool {
    gpu.fixed_subgroup_size() == Some(BROADCAST_LANES)
}

/// Workgroups of `size` needed to cover `n` invocations.
pub(crate) fn groups(n: usize, size: usize) -> usize {
    n.div_ceil(size)
}

/// Every shader of the crate, for validation and for warming the pipeline cache.
pub const ALL_SHADERS: &[&crate::gpu::Shader] = &[
    &adamw::SHADER,
    &adamw::SUBGROUP_SHADER,
    &attention::SHADER,
    &attention::SUBGROUP_SHADER,
    &cross_entropy::SHADER,
    &cross_entropy::SUBGROUP_SHADER,
    &embedding::SHADER,
    &f16_weights::SHADER,
    &gae::SHADER,
    &gelu::SHADER,
    &group_advantages::SHADER,
    &kv_cache::SHADER,
    &layernorm::SHADER,
    &layernorm::SUBGROUP_SHADER,
    &matmul::SHADER,
    &matmul::TILED_SHADER,
    &matmul::TEXTURE_SHADER,
    &matmul::TEXTURE_SUBGROUP_SHADER,
    &matmul::SPLIT_K_SHADER,
    &padded_vocab::SHADER,
    &ppo::SHADER,
    &ppo::SUBGROUP_SHADER,
    &ppo::UNFUSED_SHADER,
    &preference::SHADER,
    &residual::SHADER,
    &rewards::SHADER,
    &rollout::SHADER,
    &sampling::SHADER,
    &window::SHADER,
];

/// Every workgroup size and row stride the shaders declare as a constant, with the Rust
/// constant the host code uses for it: (shader, constant, value). A test checks each against
/// the shader text.
pub const SHADER_CONSTANTS: &[(&str, &str, usize)] = &[
    ("ppo_loss", "INPUT_COLUMNS", ppo::INPUT_COLUMNS),
    ("ppo_loss", "STATS", ppo::STAT_NAMES.len()),
    ("rollout", "INPUT_COLUMNS", ppo::INPUT_COLUMNS),
    ("adamw", "WG", adamw::WG),
    ("f16_weights", "WG", f16_weights::WG),
    ("attention", "WG", attention::WG),
    ("attention", "TILE_ROWS", attention::TILE_ROWS),
    ("cross_entropy", "WG", cross_entropy::WG),
    ("embedding", "WG", embedding::WG),
    ("gae", "WG_SEQUENCES", gae::WG_SEQUENCES),
    ("gae", "SCAN_CHUNKS", gae::SCAN_CHUNKS),
    ("gelu", "WG", gelu::WG),
    ("group_advantages", "WG", group_advantages::WG),
    ("group_advantages", "WG_SEQUENCES", group_advantages::WG_SEQUENCES),
    ("kv_cache", "WG", kv_cache::WG),
    ("kv_cache", "WG_WRITE", kv_cache::WG_WRITE),
    ("layernorm", "WG", layernorm::WG),
    ("layernorm", "COLS", layernorm::PARAMS_COLS),
    ("matmul", "WG_X", matmul::WG_X),
    ("matmul", "WG_Y", matmul::WG_Y),
    ("matmul_tiled", "WG", matmul::WG),
    ("matmul_tiled", "TILE", matmul::TILE),
    ("matmul_tiled", "LARGE_TILE", matmul::LARGE_TILE),
    ("matmul_tiled", "COLS", matmul::BIAS_COLS),
    ("matmul_texture", "WG", matmul::WG),
    ("matmul_texture", "TILE", matmul::TEXTURE_TILE),
    ("matmul_texture", "GROUP_ROWS", matmul::TEXTURE_GROUP_ROWS),
    ("matmul_texture_subgroup", "SUBGROUP_BLOCKS", matmul::SUBGROUP_BLOCKS),
    ("matmul_split_k", "WG", matmul::SPLIT_K_WG),
    ("matmul_split_k", "ROWS", matmul::SPLIT_K_ROWS),
    ("padded_vocab", "WG", padded_vocab::WG),
    ("window", "WG", window::WG),
    ("ppo_loss", "WG", ppo::WG),
    ("ppo_loss", "WG_STATS", ppo::WG_STATS),
    ("preference", "WG", preference::WG),
    ("residual", "WG", residual::WG),
    ("rewards", "WG_SEQUENCES", rewards::WG_SEQUENCES),
    ("rewards", "WG", rewards::WG),
    ("rollout", "WG", rollout::WG),
    ("rollout", "WG_SEQUENCES", rollout::WG_SEQUENCES),
    ("sampling", "MAX_WG", sampling::MAX_LANES),
];

/// Every set of override constants the kernel functions pass to `shader`'s pipelines (one empty
/// set for a shader without overrides), so that tests can translate each specialisation to
/// every backend: attention's HEAD_DIM (multiples of 4 up to `attention::MAX_HEAD_DIM`; the
/// subgroup entry points' 16, 32 and 64) with and without TEXTURE_LOADS, decode attention's
/// HEAD_DIM and APPEND, matmul's A_SCALAR and B_F16, the tiled and split-K matmuls' TRANS_A /
/// TRANS_B and B_F16 (split-K's VEC4 too), the packs' SRC_VEC4, the texture-subgroup matmul's
/// A_STORED and B_STORED, the texture kernels' SUM_B_COLUMNS, each with every epilogue of the
/// matmul shaders (`matmul::epilogue`), LayerNorm's RESIDUAL and TEXTURE_LOADS, and the
/// sampler's lanes.
pub fn override_sets(shader: &str) -> Vec<Vec<(&'static str, f64)>> {
    let sets = own_override_sets(shader);
    if !shader.starts_with("matmul") {
        return sets;
    }
    let gelu = [None, Some(matmul::GeluStep::Forward), Some(matmul::GeluStep::Backward)];
    let epilogues =
        gelu.into_iter().flat_map(|g| (0..4).map(move |bits| matmul::epilogue(bits & 1 != 0, bits & 2 != 0, g)));
    epilogues.flat_map(|e| sets.iter().map(move |set| [&set[..], &e].concat())).collect()
}

/// `override_sets` without the matmul epilogues.
fn own_override_sets(shader: &str) -> Vec<Vec<(&'static str, f64)>> {
    let flags = |name: &'static str| [vec![(name, 0.0)], vec![(name, 1.0)]];
    let head_dims = |max: usize| (4..=max).step_by(4).map(|hd| ("HEAD_DIM", hd as f64));
    match shader {
        "attention" => head_dims(attention::MAX_HEAD_DIM)
            .flat_map(|hd| [vec![hd, ("TEXTURE_LOADS", 0.0)], vec![hd, ("TEXTURE_LOADS", 1.0)]])
            .collect(),
        "attention_subgroup" => attention::SUBGROUP_HEAD_DIMS
            .iter()
            .flat_map(|&hd| [0.0, 1.0].map(|loads| vec![("HEAD_DIM", hd as f64), ("TEXTURE_LOADS", loads)]))
            .collect(),
        "kv_cache" => head_dims(kv_cache::MAX_SERIAL_HEAD_DIM)
            .flat_map(|hd| [0.0, 1.0].map(|append| vec![hd, ("APPEND", append)]))
            .collect(),
        "matmul" => [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)]
            .into_iter()
            .map(|(a, b)| vec![("A_SCALAR", a), ("B_F16", b)])
            .collect(),
        "matmul_tiled" => [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]
            .into_iter()
            .flat_map(|(a, b)| [0.0, 1.0].map(|f16| vec![("TRANS_A", a), ("TRANS_B", b), ("B_F16", f16)]))
            .collect(),
        "matmul_split_k" => [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]
            .into_iter()
            .flat_map(|(a, b)| [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)].map(move |f| (a, b, f)))
            .map(|(a, b, (f16, vec4))| vec![("TRANS_A", a), ("TRANS_B", b), ("B_F16", f16), ("VEC4", vec4)])
            .collect(),
        "matmul_texture" | "matmul_texture_subgroup" => {
            let own: Vec<Vec<(&str, f64)>> = if shader == "matmul_texture" {
                flags("SRC_VEC4").into()
            } else {
                [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)].map(|(a, b)| vec![("A_STORED", a), ("B_STORED", b)]).into()
            };
            let sums = |on: f64| own.iter().map(move |set| [&set[..], &[("SUM_B_COLUMNS", on)]].concat());
            sums(0.0).chain(sums(1.0)).collect()
        }
        "layernorm" | "layernorm_subgroup" => [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)]
            .into_iter()
            .map(|(residual, loads)| vec![("RESIDUAL", residual), ("TEXTURE_LOADS", loads)])
            .collect(),
        "cross_entropy" | "cross_entropy_subgroup" | "ppo_loss" | "ppo_loss_subgroup" | "ppo_unfused" => {
            flags("VEC4").into()
        }
        "sampling" => sampling::LANES.iter().map(|(lanes, _)| vec![("WG", lanes.count() as f64)]).collect(),
        _ => vec![vec![]],
    }
}
