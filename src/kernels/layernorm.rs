//! LayerNorm forward and backward, and the forward fused with the residual add before it.
//! Shader: `layernorm.wgsl`. Three variants, chosen per adapter by measurement (`variant`): an
//! invocation per row (CPU adapters), a workgroup per row, or a subgroup per row.

use super::{as_matrix, bind, expect_len, groups, subgroup_rows_per_group};
use crate::error::{Result, ensure_shape};
use crate::gpu::{Gpu, Recorder, Shader, Tensor, Work, choose_by_measurement, matches_reference, seconds_per_call};
use std::sync::Arc;

pub const SHADER: Shader =
    Shader { name: "layernorm", source: include_str!("../../shaders/layernorm.wgsl"), includes: &[] };

/// The subgroup-per-row entries: a module of their own, since it compiles only on adapters
/// with subgroups; everything else comes from layernorm.wgsl, included after it.
pub const SUBGROUP_SHADER: Shader = Shader {
    name: "layernorm_subgroup",
    source: include_str!("../../shaders/layernorm_subgroup.wgsl"),
    includes: &[include_str!("../../shaders/layernorm.wgsl")],
};

/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 64;

/// Channels per workgroup of the parameter-gradient kernel (`COLS` in the shader).
pub const PARAMS_COLS: usize = 16;

/// How a row is spread over invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayernormVariant {
    /// One invocation per row, walking it serially: no barriers (CPU adapters).
    InvocationPerRow,
    /// One workgroup of 64 per row, neighbouring invocations on neighbouring vec4s, partial
    /// sums reduced in workgroup memory (GPUs). Only for C a multiple of 4; other rows run an
    /// invocation per row.
    WorkgroupPerRow,
    /// One subgroup per row, neighbouring invocations on neighbouring vec4s, partial sums added
    /// with subgroupAdd: no barriers. Only for C a multiple of 4 on adapters with subgroups;
    /// elsewhere an invocation per row.
    SubgroupPerRow,
}

/// The names of the variants, as `PPO_WGPU_LAYERNORM` and the cache spell them.
pub const VARIANTS: [(LayernormVariant, &str); 3] = [
    (LayernormVariant::InvocationPerRow, "invocation-per-row"),
    (LayernormVariant::WorkgroupPerRow, "workgroup-per-row"),
    (LayernormVariant::SubgroupPerRow, "subgroup-per-row"),
];

/// The LayerNorm variant this adapter runs: chosen by measurement on first use and cached (see
/// `gpu::variants`), or forced with
/// PPO_WGPU_LAYERNORM=invocation-per-row|workgroup-per-row|subgroup-per-row.
pub fn variant(gpu: &Arc<Gpu>) -> Result<LayernormVariant> {
    choose_by_measurement(gpu, "layernorm", &VARIANTS, "GB/s", measure_variant)
}

/// A variant's GB/s over a forward fused with its residual add (as the model runs all but one
/// LayerNorm of a forward) and a backward, at a small model's and GPT-2's widths, after a check
/// against the CPU reference (None if it fails).
fn measure_variant(gpu: &Arc<Gpu>, variant: LayernormVariant) -> Result<Option<f64>> {
    if variant == LayernormVariant::SubgroupPerRow && !gpu.has_subgroups() {
        return Ok(None); // it would run invocation-per-row: nothing of its own to measure
    }
    let mut rng = crate::rng::Rng::new(12);
    let f32s = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
    let (mut bytes, mut seconds) = (0.0, 0.0);
    for (rows, c) in [(37, 20), (2048, 128), (256, 768)] {
        let (x, add, dout) = (rng.normals(rows * c, 1.0), rng.normals(rows * c, 1.0), rng.normals(rows * c, 1.0));
        let (w, b) = (rng.normals(c, 1.0), rng.normals(c, 1.0));
        let up = |v: &[f64], shape: &[usize]| gpu.upload(shape, &f32s(v));
        let (tx, tadd, tdout) = (up(&x, &[rows, c])?, up(&add, &[rows, c])?, up(&dout, &[rows, c])?);
        let (tw, tb) = (up(&w, &[c])?, up(&b, &[c])?);
        let zeros = |shape: &[usize]| gpu.upload(shape, &vec![0.0; shape.iter().product()]);
        let (residual, out, mean, rstd) = (zeros(&[rows, c])?, zeros(&[rows, c])?, zeros(&[rows])?, zeros(&[rows])?);
        let (dinp, dw, db) = (zeros(&[rows, c])?, zeros(&[c])?, zeros(&[c])?);
        let step = |rec: &mut Recorder| -> Result<()> {
            residual_forward_with_variant(rec, variant, &residual, &out, &mean, &rstd, &tx, &tadd, &tw, &tb, 1e-5)?;
            backward_with_variant(rec, variant, &dinp, &dw, &db, &tdout, &residual, &tw, &mean, &rstd)
        };
        if rows == 37 {
            // The check: one forward and one backward against the CPU reference.
            let mut rec = Recorder::new(gpu);
            step(&mut rec)?;
            rec.submit();
            let sum: Vec<f64> = x.iter().zip(&add).map(|(x, a)| x + a).collect();
            let (want_out, _, _) = crate::reference::layernorm_forward(&sum, &w, &b, c, 1e-5);
            let (want_dinp, _, _) = crate::reference::layernorm_backward(&dout, &sum, &w, c, 1e-5);
            if !matches_reference(&gpu.download(&residual)?, &sum)
                || !matches_reference(&gpu.download(&out)?, &want_out)
                || !matches_reference(&gpu.download(&dinp)?, &want_dinp)
            {
                return Ok(None);
            }
            continue;
        }
        seconds += seconds_per_call(gpu, step)?;
        // What the kernels must move at least (their `Work`): the forward reads both summands and
        // writes the sum and out, the backward reads inp, dout and dinp and writes dinp, then
        // reads inp and dout again.
        bytes += (4 * 9 * rows * c) as f64;
    }
    Ok(Some(bytes / seconds / 1e9))
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    c: u32,
    eps: f32,
    rows_per_group: u32, // the _sg4 entries: rows per workgroup
}

/// out [N, C] = layernorm(inp [N, C]) · weight [C] + bias [C]; saves mean [N] and rstd [N].
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    rec: &mut Recorder,
    out: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    inp: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> Result<()> {
    let variant = variant(rec.gpu())?;
    forward_with_variant(rec, variant, out, mean, rstd, inp, weight, bias, eps)
}

/// As `layernorm_forward`, with the variant named (benches and tests compare them).
#[allow(clippy::too_many_arguments)]
pub fn forward_with_variant(
    rec: &mut Recorder,
    variant: LayernormVariant,
    out: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    inp: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> Result<()> {
    record_forward(rec, variant, out, mean, rstd, inp, None, weight, bias, eps)
}

/// residual [N, C] = a + b, then out [N, C] = layernorm(residual) · weight + bias, saving mean
/// and rstd as `layernorm_forward` does: llm.c's fused residual forward, one dispatch where a
/// residual add and a LayerNorm would be two (a transformer block ends in both twice).
#[allow(clippy::too_many_arguments)]
pub fn residual_layernorm_forward(
    rec: &mut Recorder,
    residual: &Tensor,
    out: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    a: &Tensor,
    b: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> Result<()> {
    let variant = variant(rec.gpu())?;
    residual_forward_with_variant(rec, variant, residual, out, mean, rstd, a, b, weight, bias, eps)
}

/// As `residual_layernorm_forward`, with the variant named. Rows that are not whole vec4s run
/// the residual add and the LayerNorm as two kernels.
#[allow(clippy::too_many_arguments)]
pub fn residual_forward_with_variant(
    rec: &mut Recorder,
    variant: LayernormVariant,
    residual: &Tensor,
    out: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    a: &Tensor,
    b: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> Result<()> {
    let (rows, c) = as_matrix(a);
    expect_len(b, rows * c, "residual operand b")?;
    expect_len(residual, rows * c, "residual output")?;
    if !c.is_multiple_of(4) {
        super::residual::residual_forward(rec, residual, a, b)?;
        return record_forward(rec, variant, out, mean, rstd, residual, None, weight, bias, eps);
    }
    record_forward(rec, variant, out, mean, rstd, a, Some((b, residual)), weight, bias, eps)
}

/// Records the forward of rows `inp`, or with `sum` = (addend, residual) of rows inp + addend,
/// stored at `residual` (C a multiple of 4).
#[allow(clippy::too_many_arguments)]
fn record_forward(
    rec: &mut Recorder,
    variant: LayernormVariant,
    out: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    inp: &Tensor,
    sum: Option<(&Tensor, &Tensor)>,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> Result<()> {
    let (rows, c) = as_matrix(inp);
    expect_len(out, rows * c, "layernorm output")?;
    expect_len(weight, c, "layernorm weight")?;
    expect_len(bias, c, "layernorm bias")?;
    expect_len(mean, rows, "layernorm mean")?;
    expect_len(rstd, rows, "layernorm rstd")?;
    let (shader, suffix, grid, rows_per_group) = row_launch(rec.gpu(), variant, rows, c);
    let params = Params { rows: rows as u32, c: c as u32, eps, rows_per_group };
    if c.is_multiple_of(4) {
        // Without a sum, inp and out stand in for the summand and the sum (left unread).
        let (addend, residual) = sum.unwrap_or((inp, out));
        let b = [
            bind(13, inp),
            bind(14, weight),
            bind(15, bias),
            bind(16, out),
            bind(5, mean),
            bind(6, rstd),
            bind(19, addend),
            bind(20, residual),
        ];
        let entry = format!("layernorm_forward{suffix}");
        let (constants, work): (&[(&str, f64)], _) = match sum {
            Some(_) => (&[("RESIDUAL", 1.0)], Work::floats(4 * rows * c + 2 * c + 2 * rows)),
            None => (&[], Work::floats(2 * rows * c + 2 * c + 2 * rows)),
        };
        rec.dispatch(shader, &entry, constants, bytemuck::bytes_of(&params), &b, grid, work)
    } else {
        ensure_shape(sum.is_none(), || format!("the fused residual LayerNorm needs rows of whole vec4s, not {c}"))?;
        let b = [bind(1, inp), bind(2, weight), bind(3, bias), bind(4, out), bind(5, mean), bind(6, rstd)];
        let work = Work::floats(2 * rows * c + 2 * c + 2 * rows);
        rec.dispatch(&SHADER, "layernorm_forward", &[], bytemuck::bytes_of(&params), &b, grid, work)
    }
}

/// How `variant` runs rows of `c` on this adapter: the shader, the suffix of its vec4 entry
/// points, the grid, and the rows per workgroup of the subgroup form. Rows that are not whole
/// vec4s, and the subgroup variant on an adapter without subgroups, run an invocation per row.
fn row_launch(
    gpu: &Arc<Gpu>,
    variant: LayernormVariant,
    rows: usize,
    c: usize,
) -> (&'static Shader, &'static str, [u32; 3], u32) {
    let invocation_per_row = (&SHADER, "4", gpu.grid(groups(rows, WG)), 0);
    if !c.is_multiple_of(4) {
        return invocation_per_row;
    }
    match variant {
        LayernormVariant::InvocationPerRow => invocation_per_row,
        LayernormVariant::WorkgroupPerRow => (&SHADER, "_wg4", gpu.grid(rows), 0),
        LayernormVariant::SubgroupPerRow if gpu.has_subgroups() => {
            let rows_per_group = subgroup_rows_per_group(gpu, WG);
            (&SUBGROUP_SHADER, "_sg4", gpu.grid(groups(rows, rows_per_group)), rows_per_group as u32)
        }
        LayernormVariant::SubgroupPerRow => invocation_per_row,
    }
}

/// Accumulates the LayerNorm gradients: dinp += ∂L/∂inp, dweight += ∂L/∂w, dbias += ∂L/∂b.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    rec: &mut Recorder,
    dinp: &Tensor,
    dweight: &Tensor,
    dbias: &Tensor,
    dout: &Tensor,
    inp: &Tensor,
    weight: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
) -> Result<()> {
    let variant = variant(rec.gpu())?;
    backward_with_variant(rec, variant, dinp, dweight, dbias, dout, inp, weight, mean, rstd)
}

/// As `layernorm_backward`, with the variant named.
#[allow(clippy::too_many_arguments)]
pub fn backward_with_variant(
    rec: &mut Recorder,
    variant: LayernormVariant,
    dinp: &Tensor,
    dweight: &Tensor,
    dbias: &Tensor,
    dout: &Tensor,
    inp: &Tensor,
    weight: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
) -> Result<()> {
    let (rows, c) = as_matrix(inp);
    expect_len(dout, rows * c, "layernorm dout")?;
    expect_len(dinp, rows * c, "layernorm dinp")?;
    expect_len(weight, c, "layernorm weight")?;
    expect_len(dweight, c, "layernorm dweight")?;
    expect_len(dbias, c, "layernorm dbias")?;
    expect_len(mean, rows, "layernorm mean")?;
    expect_len(rstd, rows, "layernorm rstd")?;
    let (shader, suffix, grid, rows_per_group) = row_launch(rec.gpu(), variant, rows, c);
    let params = Params { rows: rows as u32, c: c as u32, eps: 0.0, rows_per_group };
    let p = bytemuck::bytes_of(&params);
    let work = Work::floats(3 * rows * c + c + 2 * rows);
    if c.is_multiple_of(4) {
        let b = [bind(13, inp), bind(14, weight), bind(17, dout), bind(18, dinp), bind(11, mean), bind(12, rstd)];
        rec.dispatch(shader, &format!("layernorm_backward_input{suffix}"), &[], p, &b, grid, work)?;
    } else {
        let b = [bind(1, inp), bind(2, weight), bind(7, dout), bind(8, dinp), bind(11, mean), bind(12, rstd)];
        rec.dispatch(&SHADER, "layernorm_backward_input", &[], p, &b, grid, work)?;
    }
    // The parameter gradients: each workgroup sums PARAMS_COLS channels (vec4s of channels, C a
    // multiple of 4) over the rows, more than MAX_SERIAL_STEPS rows as slices.
    let gpu = rec.gpu().clone();
    for (r0, n) in super::serial_ranges(rows) {
        let (inp, dout) = (inp.view(&gpu, r0 * c, &[n, c])?, dout.view(&gpu, r0 * c, &[n, c])?);
        let (mean, rstd) = (mean.view(&gpu, r0, &[n])?, rstd.view(&gpu, r0, &[n])?);
        let params = Params { rows: n as u32, c: c as u32, eps: 0.0, rows_per_group: 0 };
        let p = bytemuck::bytes_of(&params);
        let work = Work::floats(2 * n * c + 4 * c + 2 * n);
        if c.is_multiple_of(4) {
            let b =
                [bind(13, &inp), bind(17, &dout), bind(21, dweight), bind(22, dbias), bind(11, &mean), bind(12, &rstd)];
            let grid = gpu.grid(groups(c / 4, PARAMS_COLS));
            rec.dispatch(&SHADER, "layernorm_backward_params4", &[], p, &b, grid, work)?;
        } else {
            let b =
                [bind(1, &inp), bind(7, &dout), bind(9, dweight), bind(10, dbias), bind(11, &mean), bind(12, &rstd)];
            rec.dispatch(&SHADER, "layernorm_backward_params", &[], p, &b, gpu.grid(groups(c, PARAMS_COLS)), work)?;
        }
    }
    Ok(())
}
