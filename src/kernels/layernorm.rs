//! LayerNorm forward and backward, and the forward fused with the residual add before it.
//! Shader: `layernorm.wgsl`. Four variants, chosen per adapter by measurement (`variant`): an
//! invocation per row reading storage buffers or textures (CPU adapters), a workgroup per row,
//! or a subgroup per row.

use super::matmul::{Block, NARROW_ROWS, pack, pack_method};
use super::{as_matrix, bind, bind_texture, expect_len, flag, groups, subgroup_rows_per_group};
use crate::error::{Result, ensure_shape};
use crate::gpu::{
    Gpu, Recorder, Shader, Tensor, Texture, Work, choose_by_measurement, matches_reference, seconds_per_call,
};
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
    /// One invocation per row, reading the rows, weight and bias through textures the host
    /// packs them into (TEXTURE_LOADS in the shader; a copy or the pack shader, as the texture
    /// matmul packs its operands): on lavapipe the forward ran 1.7× faster, packing included.
    /// Only for C a multiple of 4 and rows within the adapter's texture size; other rows run an
    /// invocation per row from the buffers.
    Texture,
}

/// The names of the variants, as `PPO_WGPU_LAYERNORM` and the cache spell them.
pub const VARIANTS: [(LayernormVariant, &str); 4] = [
    (LayernormVariant::InvocationPerRow, "invocation-per-row"),
    (LayernormVariant::WorkgroupPerRow, "workgroup-per-row"),
    (LayernormVariant::SubgroupPerRow, "subgroup-per-row"),
    (LayernormVariant::Texture, "texture"),
];

/// Scratch-texture slots of the texture variant (`Gpu::scratch_texture`; the matmul uses 0 and
/// 1, attention 2 and 3): inp, the second operand (addend or dout), weight, bias.
const SLOT_INP: u32 = 4;

/// The LayerNorm variant this adapter runs for rows of `rows`: `narrow_variant` for fewer than
/// matmul::NARROW_ROWS (a decode step's, one row per sequence), else `variant`.
pub fn variant_for(gpu: &Arc<Gpu>, rows: usize) -> Result<LayernormVariant> {
    if rows < NARROW_ROWS { narrow_variant(gpu) } else { variant(gpu) }
}

/// The LayerNorm variant this adapter runs for at least NARROW_ROWS rows: chosen by
/// measurement on first use and cached (see `gpu::variants`), or forced with
/// PPO_WGPU_LAYERNORM=invocation-per-row|workgroup-per-row|subgroup-per-row|texture.
pub fn variant(gpu: &Arc<Gpu>) -> Result<LayernormVariant> {
    // A small model's and GPT-2's widths over a batch of tokens, forward and backward.
    let shapes = [(2048, 128), (256, 768)];
    choose_by_measurement(gpu, "layernorm", &VARIANTS, "GB/s", |gpu, v| measure_variant(gpu, v, &shapes, true))
}

/// The variant for fewer than NARROW_ROWS rows, chosen the same way (family
/// `layernorm_narrow`, forced with PPO_WGPU_LAYERNORM_NARROW=…): a decode step's forward, where
/// the texture variant's four packs per call can cost more than its loads save (on lavapipe
/// the shipped demo's run took 7.1–7.6 s with it against 6.2–6.7 without).
pub fn narrow_variant(gpu: &Arc<Gpu>) -> Result<LayernormVariant> {
    // A decode step of 32 sequences at a small model's and GPT-2's widths, forward only.
    let shapes = [(32, 128), (32, 768)];
    choose_by_measurement(gpu, "layernorm_narrow", &VARIANTS, "GB/s", |gpu, v| measure_variant(gpu, v, &shapes, false))
}

/// A variant's GB/s over `shapes` (rows, C): a forward fused with its residual add (as the model
/// runs all but one LayerNorm of a forward), and with `backward` a backward, after a check of
/// both against the CPU reference (None if it fails).
fn measure_variant(
    gpu: &Arc<Gpu>,
    variant: LayernormVariant,
    shapes: &[(usize, usize)],
    backward: bool,
) -> Result<Option<f64>> {
    if variant == LayernormVariant::SubgroupPerRow && !gpu.has_subgroups() {
        return Ok(None); // it would run invocation-per-row: nothing of its own to measure
    }
    let mut rng = crate::rng::Rng::new(12);
    let f32s = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
    let (mut bytes, mut seconds) = (0.0, 0.0);
    for &(rows, c) in [(37, 20)].iter().chain(shapes) {
        let (x, add, dout) = (rng.normals(rows * c, 1.0), rng.normals(rows * c, 1.0), rng.normals(rows * c, 1.0));
        let (w, b) = (rng.normals(c, 1.0), rng.normals(c, 1.0));
        let up = |v: &[f64], shape: &[usize]| gpu.upload(shape, &f32s(v));
        let (tx, tadd, tdout) = (up(&x, &[rows, c])?, up(&add, &[rows, c])?, up(&dout, &[rows, c])?);
        let (tw, tb) = (up(&w, &[c])?, up(&b, &[c])?);
        let zeros = |shape: &[usize]| gpu.upload(shape, &vec![0.0; shape.iter().product()]);
        let (residual, out, mean, rstd) = (zeros(&[rows, c])?, zeros(&[rows, c])?, zeros(&[rows])?, zeros(&[rows])?);
        let (dinp, dw, db) = (zeros(&[rows, c])?, zeros(&[c])?, zeros(&[c])?);
        let forward = |rec: &mut Recorder| {
            residual_forward_with_variant(rec, variant, &residual, &out, &mean, &rstd, &tx, &tadd, &tw, &tb, 1e-5)
        };
        let step = |rec: &mut Recorder| -> Result<()> {
            forward(rec)?;
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
        if backward {
            seconds += seconds_per_call(gpu, step)?;
            // What the kernels must move at least (their `Work`): the forward reads both summands
            // and writes the sum and out, the backward reads inp, dout and dinp and writes dinp,
            // then reads inp and dout again.
            bytes += (4 * 9 * rows * c) as f64;
        } else {
            seconds += seconds_per_call(gpu, forward)?;
            bytes += (4 * 4 * rows * c) as f64;
        }
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
    let variant = variant_for(rec.gpu(), as_matrix(inp).0)?;
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
    let variant = variant_for(rec.gpu(), as_matrix(a).0)?;
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
        // Without a sum, inp stands in for the summand and a `Recorder::stand_in` for the sum
        // (both left unread; out there too would bind a writable buffer twice).
        let stand_in = rec.stand_in(0)?;
        let (addend, residual) = sum.unwrap_or((inp, &stand_in));
        let (loads, t) = row_textures(rec, variant, rows, c, [inp, addend], weight, Some(bias))?;
        let b = [
            bind(13, inp),
            bind(14, weight),
            bind(15, bias),
            bind(16, out),
            bind(5, mean),
            bind(6, rstd),
            bind(19, addend),
            bind(20, residual),
            bind_texture(23, &t[0]),
            bind_texture(24, &t[1]),
            bind_texture(25, &t[2]),
            bind_texture(26, &t[3]),
        ];
        let entry = format!("layernorm_forward{suffix}");
        let constants = [("RESIDUAL", flag(sum.is_some())), ("TEXTURE_LOADS", flag(loads))];
        let work = match sum {
            Some(_) => Work::floats(4 * rows * c + 2 * c + 2 * rows),
            None => Work::floats(2 * rows * c + 2 * c + 2 * rows),
        };
        rec.dispatch(shader, &entry, &constants, bytemuck::bytes_of(&params), &b, grid, work)
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
        LayernormVariant::InvocationPerRow | LayernormVariant::Texture => invocation_per_row,
        LayernormVariant::WorkgroupPerRow => (&SHADER, "_wg4", gpu.grid(rows), 0),
        LayernormVariant::SubgroupPerRow if gpu.has_subgroups() => {
            let rows_per_group = subgroup_rows_per_group(gpu, WG);
            (&SUBGROUP_SHADER, "_sg4", gpu.grid(groups(rows, rows_per_group)), rows_per_group as u32)
        }
        LayernormVariant::SubgroupPerRow => invocation_per_row,
    }
}

/// The textures a vec4 entry point binds at 23–26, and whether it reads through them
/// (TEXTURE_LOADS): with the texture variant, the two [rows, C] `operands` (the same tensor
/// twice where the entry point reads one), weight and bias packed into textures C/4 texels wide,
/// one texel row per row; otherwise, or when the rows exceed the adapter's texture size, 1×1
/// stand-ins that stay unread (and for a bias that is None).
fn row_textures(
    rec: &mut Recorder,
    variant: LayernormVariant,
    rows: usize,
    c: usize,
    operands: [&Tensor; 2],
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<(bool, [Texture; 4])> {
    let gpu = rec.gpu().clone();
    let stand_in = gpu.scratch_texture(SLOT_INP, 1, 1)?;
    let max = gpu.limits.max_texture_dimension_2d as usize;
    if variant != LayernormVariant::Texture || rows > max || c / 4 > max {
        return Ok((false, [stand_in.clone(), stand_in.clone(), stand_in.clone(), stand_in]));
    }
    let method = pack_method(&gpu)?;
    let mut packed = |slot: u32, t: &Tensor, rows: usize| {
        pack(rec, method, slot, t, Block { rows, cols: c, stride: c, offset: 0, transposed: false }, c / 4, rows)
    };
    let inp = packed(SLOT_INP, operands[0], rows)?;
    let second =
        if std::ptr::eq(operands[0], operands[1]) { inp.clone() } else { packed(SLOT_INP + 1, operands[1], rows)? };
    let w = packed(SLOT_INP + 2, weight, 1)?;
    let b = match bias {
        Some(bias) => packed(SLOT_INP + 3, bias, 1)?,
        None => stand_in,
    };
    Ok((true, [inp, second, w, b]))
}

/// The scratch-texture bytes the texture variant keeps for rows of `c` (whole vec4s): the two
/// operand textures, weight, bias and the 1×1 stand-in (`row_textures`).
pub fn texture_scratch_bytes(rows: usize, c: usize) -> usize {
    16 * (c / 4 * (2 * rows + 2) + 1)
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
    let variant = variant_for(rec.gpu(), as_matrix(inp).0)?;
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
    // The texture variant's textures (C a multiple of 4), read by both kernels below.
    let textures =
        if c.is_multiple_of(4) { Some(row_textures(rec, variant, rows, c, [inp, dout], weight, None)?) } else { None };
    if let Some((loads, t)) = &textures {
        // (The bias texture, 26, is not bound: the input gradient does not read it.)
        let b = [
            bind(13, inp),
            bind(14, weight),
            bind(17, dout),
            bind(18, dinp),
            bind(11, mean),
            bind(12, rstd),
            bind_texture(23, &t[0]),
            bind_texture(24, &t[1]),
            bind_texture(25, &t[2]),
        ];
        let entry = format!("layernorm_backward_input{suffix}");
        rec.dispatch(shader, &entry, &[("TEXTURE_LOADS", flag(*loads))], p, &b, grid, work)?;
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
        if let Some((loads, t)) = &textures {
            // The textures hold every row: they serve a single slice.
            let loads = *loads && n == rows;
            let b = [
                bind(13, &inp),
                bind(17, &dout),
                bind(21, dweight),
                bind(22, dbias),
                bind(11, &mean),
                bind(12, &rstd),
                bind_texture(23, &t[0]),
                bind_texture(24, &t[1]),
            ];
            let grid = gpu.grid(groups(c / 4, PARAMS_COLS));
            rec.dispatch(&SHADER, "layernorm_backward_params4", &[("TEXTURE_LOADS", flag(loads))], p, &b, grid, work)?;
        } else {
            let b =
                [bind(1, &inp), bind(7, &dout), bind(9, dweight), bind(10, dbias), bind(11, &mean), bind(12, &rstd)];
            rec.dispatch(&SHADER, "layernorm_backward_params", &[], p, &b, gpu.grid(groups(c, PARAMS_COLS)), work)?;
        }
    }
    Ok(())
}
