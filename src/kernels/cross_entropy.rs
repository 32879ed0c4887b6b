//! Log-softmax and cross-entropy forward and backward. Shaders: `cross_entropy.wgsl` and
//! `cross_entropy_subgroup.wgsl`. Three variants, chosen per adapter by measurement (`variant`):
//! a workgroup per row (GPUs), a subgroup per row (GPUs with subgroups), or an invocation per
//! row (CPU adapters); rows too long for an invocation alone (GPT-2's vocabulary) choose between
//! the first two on a measurement of their own (`long_variant`).

use super::{as_matrix, bind, bind_u32, expect_len, groups, row_ranges, subgroup_rows_per_group};
use crate::error::Result;
use crate::gpu::{Gpu, Recorder, Shader, Tensor, Work, choose_by_measurement, matches_reference, seconds_per_call};
use std::sync::Arc;

pub const SHADER: Shader =
    Shader { name: "cross_entropy", source: include_str!("../../shaders/cross_entropy.wgsl"), includes: &[] };

/// The subgroup-per-row entries: a module of their own, since it compiles only on adapters with
/// subgroups; everything else comes from cross_entropy.wgsl, included after it.
pub const SUBGROUP_SHADER: Shader = Shader {
    name: "cross_entropy_subgroup",
    source: include_str!("../../shaders/cross_entropy_subgroup.wgsl"),
    includes: &[include_str!("../../shaders/cross_entropy.wgsl")],
};

/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 64;

/// A target that contributes no loss (a prompt or padding position).
pub const IGNORE: u32 = u32::MAX;

/// How a row of logits is spread over invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowVariant {
    /// A workgroup of 64 per row, strided slices merged by a tree in workgroup memory (GPUs).
    WorkgroupPerRow,
    /// One invocation walks each row alone: no barriers (CPU adapters).
    InvocationPerRow,
    /// A subgroup per row, its lanes' slices merged with subgroupMax/subgroupAdd: no barriers
    /// (adapters with subgroups; without, an invocation per row). The PPO losses have no
    /// subgroup form: their row walk is a family of its own (`kernels::ppo::row_variant`).
    SubgroupPerRow,
}

/// The names of the variants, as `PPO_WGPU_CROSS_ENTROPY` and the cache spell them.
pub const VARIANTS: [(RowVariant, &str); 3] = [
    (RowVariant::WorkgroupPerRow, "workgroup-per-row"),
    (RowVariant::InvocationPerRow, "invocation-per-row"),
    (RowVariant::SubgroupPerRow, "subgroup-per-row"),
];

/// The walks of rows longer than an invocation walks alone (GPT-2's vocabulary; family
/// `cross_entropy_long`, forced with `PPO_WGPU_CROSS_ENTROPY_LONG`).
pub const LONG_VARIANTS: [(RowVariant, &str); 2] =
    [(RowVariant::WorkgroupPerRow, "workgroup-per-row"), (RowVariant::SubgroupPerRow, "subgroup-per-row")];

/// The variant for rows of `v` logits: `variant`, or past SERIAL_MAX_COLUMNS `long_variant`.
pub fn variant_for(gpu: &Arc<Gpu>, v: usize) -> Result<RowVariant> {
    if v <= SERIAL_MAX_COLUMNS { variant(gpu) } else { long_variant(gpu) }
}

/// The variant for rows of at most SERIAL_MAX_COLUMNS: chosen by measurement on first use and
/// cached (see `gpu::variants`), or forced with
/// PPO_WGPU_CROSS_ENTROPY=workgroup-per-row|invocation-per-row|subgroup-per-row. Measured at a
/// small model's vocabulary (1024 rows of 512) and at the longest rows all three run (64 of
/// SERIAL_MAX_COLUMNS).
pub fn variant(gpu: &Arc<Gpu>) -> Result<RowVariant> {
    choose_by_measurement(gpu, "cross_entropy", &VARIANTS, "GB/s", |gpu, variant| {
        measure(gpu, variant, &[(37, 203), (37, 204)], &[(1024, 512), (64, SERIAL_MAX_COLUMNS)])
    })
}

/// The variant for longer rows: chosen by measurement (family `cross_entropy_long`) at GPT-2's
/// padded vocabulary, 64 rows of 50304.
pub fn long_variant(gpu: &Arc<Gpu>) -> Result<RowVariant> {
    choose_by_measurement(gpu, "cross_entropy_long", &LONG_VARIANTS, "GB/s", |gpu, variant| {
        measure(gpu, variant, &[(5, SERIAL_MAX_COLUMNS + 4)], &[(64, 50304)])
    })
}

/// A variant's GB/s over a forward and a backward at each of `shapes` (rows, V), after a check
/// against the CPU reference at each of `checks` (None if one fails).
fn measure(
    gpu: &Arc<Gpu>,
    variant: RowVariant,
    checks: &[(usize, usize)],
    shapes: &[(usize, usize)],
) -> Result<Option<f64>> {
    if variant == RowVariant::SubgroupPerRow && !gpu.has_subgroups() {
        return Ok(None); // it would run invocation-per-row: nothing of its own to measure
    }
    let mut rng = crate::rng::Rng::new(13);
    let (mut bytes, mut seconds) = (0.0, 0.0);
    for (i, &(rows, v)) in checks.iter().chain(shapes).enumerate() {
        let logits = rng.normals(rows * v, 2.0);
        let targets: Vec<u32> = (0..rows).map(|r| if r % 5 == 4 { IGNORE } else { (r * 31 % v) as u32 }).collect();
        let dloss = rng.normals(rows, 1.0);
        let f32s = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let (t_logits, t_targets, t_dloss) = (
            gpu.upload(&[rows, v], &f32s(&logits))?,
            gpu.upload_u32(&[rows], &targets)?,
            gpu.upload(&[rows], &f32s(&dloss))?,
        );
        let (loss, lse) = (gpu.upload(&[rows], &vec![0.0; rows])?, gpu.upload(&[rows], &vec![0.0; rows])?);
        // The backward overwrites the logits with their gradient: the timed calls go on
        // differentiating what the previous call left, which costs the same.
        let step = |rec: &mut Recorder| -> Result<()> {
            forward_with_variant(rec, variant, &loss, &lse, &t_logits, &t_targets, 1.0)?;
            backward_with_variant(rec, variant, &t_logits, &t_dloss, &lse, &t_targets, 1.0)
        };
        if i < checks.len() {
            let mut rec = Recorder::new(gpu);
            step(&mut rec)?;
            rec.submit();
            let want_loss = crate::reference::cross_entropy_forward(&logits, &targets, v);
            let want_lse = crate::reference::logsumexp_rows(&logits, v);
            let want_grad = crate::reference::cross_entropy_backward(&logits, &targets, &dloss, v);
            let ok = matches_reference(&gpu.download(&loss)?, &want_loss)
                && matches_reference(&gpu.download(&lse)?, &want_lse)
                && matches_reference(&gpu.download(&t_logits)?, &want_grad);
            if !ok {
                return Ok(None);
            }
            continue;
        }
        seconds += seconds_per_call(gpu, step)?;
        bytes += (4 * 3 * rows * v) as f64; // the forward reads the logits, the backward reads and writes them
    }
    Ok(Some(bytes / seconds / 1e9))
}

/// The longest row an invocation walks alone (see MAX_SERIAL_STEPS): longer rows (GPT-2's
/// vocabulary: two passes of 50304) run a workgroup or a subgroup per row (`long_variant`).
pub const SERIAL_MAX_COLUMNS: usize = super::MAX_SERIAL_STEPS;

/// The `VEC4` override of the row walks over a vocabulary of `v` (here and in the PPO losses):
/// on where `v` is a multiple of 4.
pub(crate) fn vec4_walk(v: usize) -> [(&'static str, f64); 1] {
    [("VEC4", if v.is_multiple_of(4) { 1.0 } else { 0.0 })]
}

/// How `n` rows of `v` run the entry `name` of a row kernel in the variant's layout: the shader,
/// the entry, the grid and the rows per workgroup (`rows_per_group` of the kernel's Params).
/// `shaders` are the module of the plain entries and the module of their `_sg` forms (a
/// subgroup per row; without subgroups on the adapter, an invocation per row); `_serial` is an
/// invocation per row, for rows of at most SERIAL_MAX_COLUMNS (longer ones run a workgroup
/// per row). The PPO loss kernels (kernels::ppo), which walk rows of the vocabulary the same
/// way, use the same entry names (and their own choice, `ppo_rows`).
pub(crate) fn row_launch(
    gpu: &Gpu,
    variant: RowVariant,
    shaders: [&'static Shader; 2],
    name: &'static str,
    n: usize,
    v: usize,
) -> (&'static Shader, String, [u32; 3], u32) {
    match variant {
        RowVariant::SubgroupPerRow if gpu.has_subgroups() => {
            let rows_per_group = subgroup_rows_per_group(gpu, WG);
            (shaders[1], format!("{name}_sg"), gpu.grid(groups(n, rows_per_group)), rows_per_group as u32)
        }
        RowVariant::InvocationPerRow | RowVariant::SubgroupPerRow if v <= SERIAL_MAX_COLUMNS => {
            (shaders[0], format!("{name}_serial"), gpu.grid(groups(n, WG)), 0)
        }
        _ => (shaders[0], name.to_string(), gpu.grid(n), 0),
    }
}

/// `row_launch` for the cross-entropy entries.
fn launch(
    gpu: &Gpu,
    variant: RowVariant,
    name: &'static str,
    n: usize,
    v: usize,
) -> (&'static Shader, String, [u32; 3], u32) {
    row_launch(gpu, variant, [&SHADER, &SUBGROUP_SHADER], name, n, v)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    v: u32,
    inv_temperature: f32,
    rows_per_group: u32,
}

fn params(logits: &Tensor, temperature: f32, rows_per_group: u32) -> Params {
    let (rows, v) = as_matrix(logits);
    Params { rows: rows as u32, v: v as u32, inv_temperature: 1.0 / temperature, rows_per_group }
}

/// A row tensor at its two bindings, scalar and vec4: itself at the one the walks over rows of
/// `v` read (`vec4_walk`), the recorder's stand-in `slot` at the other (`Recorder::stand_in`).
pub(crate) fn row_bindings(rec: &mut Recorder, t: &Tensor, v: usize, slot: usize) -> Result<[Tensor; 2]> {
    let stand_in = rec.stand_in(slot)?;
    Ok(if v.is_multiple_of(4) { [stand_in, t.clone()] } else { [t.clone(), stand_in] })
}

/// With z = logits/temperature: loss [N] = lse − z[n, target_n] (0 for IGNORE), so −loss is the
/// log-probability of the target; lse [N] = log Σ exp(z[n, :]).
pub fn cross_entropy_forward(
    rec: &mut Recorder,
    loss: &Tensor,
    lse: &Tensor,
    logits: &Tensor,
    targets: &Tensor,
    temperature: f32,
) -> Result<()> {
    let variant = variant_for(rec.gpu(), as_matrix(logits).1)?;
    forward_with_variant(rec, variant, loss, lse, logits, targets, temperature)
}

/// As `cross_entropy_forward`, with the variant named (benches and tests compare them).
pub fn forward_with_variant(
    rec: &mut Recorder,
    variant: RowVariant,
    loss: &Tensor,
    lse: &Tensor,
    logits: &Tensor,
    targets: &Tensor,
    temperature: f32,
) -> Result<()> {
    let (rows, v) = as_matrix(logits);
    for (t, what) in [(loss, "cross-entropy loss"), (lse, "cross-entropy lse"), (targets, "cross-entropy targets")] {
        expect_len(t, rows, what)?;
    }
    let gpu = rec.gpu().clone();
    for (r0, n) in row_ranges(&gpu, rows, v) {
        let (logits, targets) = (logits.view(&gpu, r0 * v, &[n, v])?, targets.view(&gpu, r0, &[n])?);
        let (lse, loss) = (lse.view(&gpu, r0, &[n])?, loss.view(&gpu, r0, &[n])?);
        let (shader, entry, grid, rows_per_group) = launch(&gpu, variant, "cross_entropy_forward", n, v);
        let p = params(&logits, temperature, rows_per_group);
        let [logits1, logits4] = row_bindings(rec, &logits, v, 0)?;
        let b = [bind(1, &logits1), bind_u32(2, &targets), bind(3, &lse), bind(4, &loss), bind(9, &logits4)];
        let work = Work::floats(n * v + 3 * n);
        rec.dispatch(shader, &entry, &vec4_walk(v), bytemuck::bytes_of(&p), &b, grid, work)?;
    }
    Ok(())
}

/// logp [N, V] = log_softmax(logits/temperature) along each row.
pub fn log_softmax_forward(rec: &mut Recorder, logp: &Tensor, logits: &Tensor, temperature: f32) -> Result<()> {
    let variant = variant_for(rec.gpu(), as_matrix(logits).1)?;
    log_softmax_with_variant(rec, variant, logp, logits, temperature)
}

/// As `log_softmax_forward`, with the variant named.
pub fn log_softmax_with_variant(
    rec: &mut Recorder,
    variant: RowVariant,
    logp: &Tensor,
    logits: &Tensor,
    temperature: f32,
) -> Result<()> {
    let (rows, v) = as_matrix(logits);
    expect_len(logp, logits.len(), "log-softmax output")?;
    let gpu = rec.gpu().clone();
    for (r0, n) in row_ranges(&gpu, rows, v) {
        let (logits, logp) = (logits.view(&gpu, r0 * v, &[n, v])?, logp.view(&gpu, r0 * v, &[n, v])?);
        let (shader, entry, grid, rows_per_group) = launch(&gpu, variant, "log_softmax_forward", n, v);
        let p = params(&logits, temperature, rows_per_group);
        let ([logits1, logits4], [logp1, logp4]) = (row_bindings(rec, &logits, v, 0)?, row_bindings(rec, &logp, v, 1)?);
        let b = [bind(1, &logits1), bind(5, &logp1), bind(9, &logits4), bind(10, &logp4)];
        let work = Work::floats(2 * n * v);
        rec.dispatch(shader, &entry, &vec4_walk(v), bytemuck::bytes_of(&p), &b, grid, work)?;
    }
    Ok(())
}

/// Overwrites `logits` [N, V] with ∂L/∂logits for L = Σ_n dloss_n · loss_n:
/// dloss_n · (softmax(logits/τ) − onehot(target_n)) / τ, zero on IGNORE rows. `lse` comes from
/// the forward at the same temperature.
pub fn cross_entropy_backward(
    rec: &mut Recorder,
    logits: &Tensor,
    dloss: &Tensor,
    lse: &Tensor,
    targets: &Tensor,
    temperature: f32,
) -> Result<()> {
    let variant = variant_for(rec.gpu(), as_matrix(logits).1)?;
    backward_with_variant(rec, variant, logits, dloss, lse, targets, temperature)
}

/// As `cross_entropy_backward`, with the variant named.
pub fn backward_with_variant(
    rec: &mut Recorder,
    variant: RowVariant,
    logits: &Tensor,
    dloss: &Tensor,
    lse: &Tensor,
    targets: &Tensor,
    temperature: f32,
) -> Result<()> {
    let (rows, v) = as_matrix(logits);
    for (t, what) in [(dloss, "cross-entropy dloss"), (lse, "cross-entropy lse"), (targets, "cross-entropy targets")] {
        expect_len(t, rows, what)?;
    }
    let gpu = rec.gpu().clone();
    for (r0, n) in row_ranges(&gpu, rows, v) {
        let (logits, targets) = (logits.view(&gpu, r0 * v, &[n, v])?, targets.view(&gpu, r0, &[n])?);
        let (dloss, lse) = (dloss.view(&gpu, r0, &[n])?, lse.view(&gpu, r0, &[n])?);
        let (shader, entry, grid, rows_per_group) = launch(&gpu, variant, "cross_entropy_backward", n, v);
        let p = params(&logits, temperature, rows_per_group);
        let [logits1, logits4] = row_bindings(rec, &logits, v, 0)?;
        let b = [bind_u32(2, &targets), bind(6, &logits1), bind(7, &dloss), bind(8, &lse), bind(11, &logits4)];
        let work = Work::floats(2 * n * v + 3 * n); // the logits read, their gradient written in place
        rec.dispatch(shader, &entry, &vec4_walk(v), bytemuck::bytes_of(&p), &b, grid, work)?;
    }
    Ok(())
}
