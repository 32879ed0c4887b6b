//! Global gradient norm with clipping, and AdamW. Shader: `adamw.wgsl`. The norm's first pass
//! has two variants, chosen per adapter by measurement (`norm_variant`): workgroups reducing in
//! workgroup memory, or a span per subgroup summed with subgroupAdd (`adamw_subgroup.wgsl`).

use super::{bind, elementwise, expect_len, groups, row_ranges};
use crate::error::{Result, ensure_shape};
use crate::gpu::{
    DType, Gpu, Recorder, Shader, Tensor, Work, choose_by_measurement, matches_reference, seconds_per_call,
};
use std::sync::Arc;

pub const SHADER: Shader = Shader { name: "adamw", source: include_str!("../../shaders/adamw.wgsl"), includes: &[] };

/// The subgroup form of the norm's first pass: a module of its own, since it compiles only on
/// adapters with subgroups; everything else comes from adamw.wgsl, included after it.
pub const SUBGROUP_SHADER: Shader = Shader {
    name: "adamw_subgroup",
    source: include_str!("../../shaders/adamw_subgroup.wgsl"),
    includes: &[include_str!("../../shaders/adamw.wgsl")],
};

/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 256;

/// Most workgroups (and partial sums) of the first grad-norm pass: enough to fill a large GPU
/// (1024 × 256 invocations) on a large model's gradient.
pub const NORM_PARTIALS: usize = 1024;

/// Fewest elements (vec4s in the vec4 form) each grad-norm invocation sums: smaller gradients
/// run fewer workgroups, since a workgroup's reduction costs more than a few loads (3× the
/// time on lavapipe at the tiny model's 0.9M parameters with all 1024).
const NORM_MIN_PER_INVOCATION: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bias_correction1: f32,
    bias_correction2: f32,
    max_norm: f32,
    first_partial: u32,
}

/// AdamW hyperparameters for one update.
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW { lr: 1e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// How the norm's first pass spreads the gradient over invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormVariant {
    /// Workgroups walking the gradient grid-stride, each adding its invocations' sums in
    /// workgroup memory (barriers).
    Workgroup,
    /// A contiguous span of the gradient per subgroup, its lanes on neighbouring vec4s, summed
    /// with subgroupAdd: no barriers. Only for gradients of whole vec4s on adapters with
    /// subgroups; elsewhere the workgroup form runs.
    SubgroupSpans,
}

/// The names of the variants, as `PPO_WGPU_GRAD_NORM` and the cache spell them.
pub const NORM_VARIANTS: [(NormVariant, &str); 2] =
    [(NormVariant::Workgroup, "workgroup"), (NormVariant::SubgroupSpans, "subgroup-spans")];

/// The gradient-norm variant this adapter runs: chosen by measurement on first use and cached
/// (see `gpu::variants`), or forced with PPO_WGPU_GRAD_NORM=workgroup|subgroup-spans.
pub fn norm_variant(gpu: &Arc<Gpu>) -> Result<NormVariant> {
    choose_by_measurement(gpu, "grad_norm", &NORM_VARIANTS, "GB/s", measure_norm_variant)
}

/// A variant's GB/s over gradients of the tiny model's size and of 8M floats (a slice of
/// GPT-2's), after a check against the CPU reference on a small random one (None if it fails).
fn measure_norm_variant(gpu: &Arc<Gpu>, variant: NormVariant) -> Result<Option<f64>> {
    if variant == NormVariant::SubgroupSpans && !gpu.has_subgroups() {
        return Ok(None); // it would run the workgroup form: nothing of its own to measure
    }
    let (norm_scale, partial) = (gpu.tensor(&[2], DType::F32)?, gpu.tensor(&[NORM_PARTIALS], DType::F32)?);
    let mut rng = crate::rng::Rng::new(13);
    let grad: Vec<f64> = rng.normals(4 * 1237, 0.1);
    let t_grad = gpu.upload(&[grad.len()], &grad.iter().map(|&g| g as f32).collect::<Vec<_>>())?;
    let mut rec = Recorder::new(gpu);
    grad_norm_with_variant(&mut rec, variant, &norm_scale, &partial, &t_grad, 1.0)?;
    rec.submit();
    let (norm, scale) = crate::reference::grad_norm(&grad, 1.0);
    if !matches_reference(&gpu.download(&norm_scale)?, &[norm, scale]) {
        return Ok(None);
    }
    let (mut bytes, mut seconds) = (0.0, 0.0);
    for n in [1 << 20, 1 << 23] {
        let t_grad = gpu.upload(&[n], &vec![0.01f32; n])?;
        seconds +=
            seconds_per_call(gpu, |rec| grad_norm_with_variant(rec, variant, &norm_scale, &partial, &t_grad, 1.0))?;
        bytes += (4 * n) as f64;
    }
    Ok(Some(bytes / seconds / 1e9))
}

/// norm_scale [2] = [‖grad‖₂, clip scale] where the scale is min(1, max_norm/(‖grad‖+1e-6))
/// (1 when max_norm ≤ 0). `partial` [NORM_PARTIALS] is scratch.
pub fn grad_norm(
    rec: &mut Recorder,
    norm_scale: &Tensor,
    partial: &Tensor,
    grad: &Tensor,
    max_norm: f32,
) -> Result<()> {
    let variant = norm_variant(rec.gpu())?;
    grad_norm_with_variant(rec, variant, norm_scale, partial, grad, max_norm)
}

/// As `grad_norm`, with the variant named (benches and tests compare them).
pub fn grad_norm_with_variant(
    rec: &mut Recorder,
    variant: NormVariant,
    norm_scale: &Tensor,
    partial: &Tensor,
    grad: &Tensor,
    max_norm: f32,
) -> Result<()> {
    expect_len(partial, NORM_PARTIALS, "grad-norm partial sums")?;
    expect_len(norm_scale, 2, "grad-norm output")?;
    let gpu = rec.gpu().clone();
    let slices = row_ranges(&gpu, grad.len(), 1);
    let per_slice = NORM_PARTIALS / slices.len();
    ensure_shape(per_slice > 0, || {
        format!("gradient of {} floats needs more than {NORM_PARTIALS} binding slices", grad.len())
    })?;
    // The subgroup form's partial sums per workgroup, at most (one per subgroup).
    let sums_per_group = WG / gpu.min_subgroup_size();
    // Workgroups that do not run would leave stale partials: clear them.
    rec.zero(partial);
    for (i, (start, n)) in slices.into_iter().enumerate() {
        let slice = grad.view(&gpu, start, &[n])?;
        let vec4 = n.is_multiple_of(4);
        let p = Params { n: n as u32, max_norm, first_partial: (i * per_slice) as u32, ..Default::default() };
        let work = Work::flops(2 * n, n); // Σ g²
        let wanted = groups(if vec4 { n / 4 } else { n }, WG * NORM_MIN_PER_INVOCATION);
        if variant == NormVariant::SubgroupSpans && vec4 && gpu.has_subgroups() && per_slice >= sums_per_group {
            let wgs = wanted.clamp(1, per_slice / sums_per_group);
            let b = [bind(9, &slice), bind(2, partial)];
            rec.dispatch(
                &SUBGROUP_SHADER,
                "grad_norm_partial_sg4",
                &[],
                bytemuck::bytes_of(&p),
                &b,
                [wgs as u32, 1, 1],
                work,
            )?;
            continue;
        }
        let wgs = wanted.clamp(1, per_slice);
        let (entry, b) = if vec4 {
            ("grad_norm_partial4", [bind(9, &slice), bind(2, partial)])
        } else {
            ("grad_norm_partial", [bind(1, &slice), bind(2, partial)])
        };
        rec.dispatch(&SHADER, entry, &[], bytemuck::bytes_of(&p), &b, [wgs as u32, 1, 1], work)?;
    }
    let p = Params { n: NORM_PARTIALS as u32, max_norm, ..Default::default() };
    rec.dispatch(
        &SHADER,
        "grad_norm_finalize",
        &[],
        bytemuck::bytes_of(&p),
        &[bind(3, partial), bind(4, norm_scale)],
        [1, 1, 1],
        Work::floats(NORM_PARTIALS + 2),
    )
}

/// One AdamW step (t ≥ 1) on `param` with `grad` scaled by norm_scale[1].
#[allow(clippy::too_many_arguments)]
pub fn adamw_update(
    rec: &mut Recorder,
    param: &Tensor,
    m: &Tensor,
    v: &Tensor,
    grad: &Tensor,
    norm_scale: &Tensor,
    hp: &AdamW,
    t: u32,
) -> Result<()> {
    let n = param.len();
    for (x, what) in [(m, "AdamW first moment"), (v, "AdamW second moment"), (grad, "AdamW gradient")] {
        expect_len(x, n, what)?;
    }
    expect_len(norm_scale, 2, "grad-norm output")?;
    let p = Params {
        n: n as u32,
        lr: hp.lr,
        beta1: hp.beta1,
        beta2: hp.beta2,
        eps: hp.eps,
        weight_decay: hp.weight_decay,
        bias_correction1: 1.0 - hp.beta1.powi(t as i32),
        bias_correction2: 1.0 - hp.beta2.powi(t as i32),
        max_norm: 0.0,
        first_partial: 0,
    };
    let gpu = rec.gpu().clone();
    for (start, len) in row_ranges(&gpu, n, 1) {
        let p = Params { n: len as u32, ..p };
        let slice = |t: &Tensor| t.view(&gpu, start, &[len]);
        let (grad, param, m, v) = (slice(grad)?, slice(param)?, slice(m)?, slice(v)?);
        // Reads gradient, parameter and both moments, writes the last three; ~15 flops each.
        let work = Work::flops(15 * len, 7 * len);
        let (entry, b, grid) = match elementwise(&gpu, len, WG) {
            (true, grid) => (
                "adamw_update4",
                [bind(9, &grad), bind(5, norm_scale), bind(10, &param), bind(11, &m), bind(12, &v)],
                grid,
            ),
            (false, grid) => {
                ("adamw_update", [bind(1, &grad), bind(5, norm_scale), bind(6, &param), bind(7, &m), bind(8, &v)], grid)
            }
        };
        rec.dispatch(&SHADER, entry, &[], bytemuck::bytes_of(&p), &b, grid, work)?;
    }
    Ok(())
}
