//! A generation's weights in f16: a decode step's linear layers and LM head can read their
//! weights as f16 values two to a u32 word (`to_f16`, made once per generation), which halves
//! the bytes each step moves while the products still accumulate in f32. Shader:
//! `f16_weights.wgsl` (the conversion); every matmul kernel reads such a B (`matmul::is_f16`).
//! Whether generation uses them is chosen per adapter by measurement (`format`). Only sampling
//! sees the rounding: the training forward recomputes every log-prob with the f32 weights, so
//! PPO's ratio is unaffected.

use super::matmul::{Layout, TEXTURE_TILE, matmul};
use super::{bind, bind_u32, groups};
use crate::error::{Result, ensure_shape};
use crate::gpu::{
    DType, Gpu, Recorder, Shader, Tensor, Work, choose_by_measurement, matches_reference, seconds_per_call,
};
use std::sync::Arc;

pub const SHADER: Shader =
    Shader { name: "f16_weights", source: include_str!("../../shaders/f16_weights.wgsl"), includes: &[] };

/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 256;

/// What a decode step's products read their weights from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// The f32 parameters themselves.
    F32,
    /// f16 copies, two values to a u32 word.
    F16,
}

/// The names of the formats, as `PPO_WGPU_DECODE_WEIGHTS` and the cache file spell them.
pub const FORMATS: [(WeightFormat, &str); 2] = [(WeightFormat::F32, "f32"), (WeightFormat::F16, "f16")];

/// The format this adapter's decode steps of `rows` sequences read their weights in: chosen by
/// measurement on first use and cached, in two families since the rows decide which kernels can
/// run: `decode_weights` for fewer than `matmul::TEXTURE_TILE` rows, where every product runs on
/// storage buffers, and `decode_weights_wide` for more, where f32 weights can go to the texture
/// kernels and f16 ones cannot (forced with PPO_WGPU_DECODE_WEIGHTS=f32|f16 and
/// PPO_WGPU_DECODE_WEIGHTS_WIDE=f32|f16).
pub fn format(gpu: &Arc<Gpu>, rows: usize) -> Result<WeightFormat> {
    if rows >= TEXTURE_TILE {
        choose_by_measurement(gpu, "decode_weights_wide", &FORMATS, "GFLOP/s", |gpu, format| {
            measure_format(gpu, format, 32)
        })
    } else {
        choose_by_measurement(gpu, "decode_weights", &FORMATS, "GFLOP/s", |gpu, format| measure_format(gpu, format, 8))
    }
}

/// An f16 copy of the f32 matrix `w` (an even number of columns): u32 [.., columns / 2], each
/// value rounded to the nearest f16 (clamped to ±65504), as `matmul` reads a B.
pub fn to_f16(rec: &mut Recorder, w: &Tensor) -> Result<Tensor> {
    let cols = w.shape().last().copied().unwrap_or(1);
    ensure_shape(w.dtype() == DType::F32 && cols.is_multiple_of(2), || {
        format!("an f16 copy needs an f32 matrix with an even number of columns, got {w:?}")
    })?;
    let mut shape = w.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last /= 2;
    }
    let gpu = rec.gpu().clone();
    let out = gpu.tensor(&shape, DType::U32)?;
    // In pieces that each bind within the adapter's limit (GPT-2's wte is 154 MB in f32),
    // 128 values at a time so that both views start on 256-byte boundaries.
    let limit = gpu.limits.max_storage_buffer_binding_size as usize / 4;
    let step = (limit / 128 * 128).max(128);
    let (src, dst) = (w.reshape(&[w.len()])?, out.reshape(&[out.len()])?);
    for start in (0..w.len()).step_by(step) {
        let values = step.min(w.len() - start);
        let (piece, words) = (src.view(&gpu, start, &[values])?, dst.view(&gpu, start / 2, &[values / 2])?);
        let grid = gpu.grid(groups(values / 2, WG));
        let params = (values / 2) as u32;
        let bindings = [bind(1, &piece), bind_u32(2, &words)];
        let work = Work::floats(values + values / 2);
        rec.dispatch(&SHADER, "to_f16_pairs", &[], bytemuck::bytes_of(&params), &bindings, grid, work)?;
    }
    Ok(out)
}

/// `w` as a decode step reads it in `format`: the tensor itself, or an f16 copy. (A matrix with
/// an odd number of columns stays f32, since f16 pairs need even rows; a model's weights all have
/// even rows, its head dimension being a multiple of 4.)
pub fn in_format(rec: &mut Recorder, w: &Tensor, format: WeightFormat) -> Result<Tensor> {
    let even_rows = w.shape().last().is_some_and(|cols| cols.is_multiple_of(2));
    match format {
        WeightFormat::F16 if even_rows => to_f16(rec, w),
        _ => Ok(w.clone()),
    }
}

/// A format's GFLOP/s over a decode step's products (forward NN through each linear layer of a
/// block, and the LM head's NT) of `rows` sequences at a small model's widths (C = 128,
/// V = 512) and at GPT-2's block (C = 768), with the matmul variant those rows run on; the
/// conversion is left out (once per generation, against a step per token). First a check
/// against the CPU reference, for f16 with the weights rounded as `to_f16` rounds them.
fn measure_format(gpu: &Arc<Gpu>, format: WeightFormat, rows: usize) -> Result<Option<f64>> {
    let mut rng = crate::rng::Rng::new(29);
    let f32s = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
    let held = |w: &[f64]| match format {
        WeightFormat::F32 => w.to_vec(),
        WeightFormat::F16 => w.iter().map(|&x| crate::reference::round_to_f16(x as f32) as f64).collect(),
    };
    for (layout, (m, n, k)) in [(Layout::NN, (5, 44, 30)), (Layout::NT, (9, 20, 52)), (Layout::NN, (37, 24, 16))] {
        let (a, b) = (rng.normals(m * k, 1.0), rng.normals(k * n, 1.0));
        let b_shape = if layout == Layout::NT { [n, k] } else { [k, n] };
        let (ta, tb, out) =
            (gpu.upload(&[m, k], &f32s(&a))?, gpu.upload(&b_shape, &f32s(&b))?, gpu.tensor(&[m, n], DType::F32)?);
        let mut rec = Recorder::new(gpu);
        let weights = in_format(&mut rec, &tb, format)?;
        matmul(&mut rec, &out, &ta, &weights, None, layout, false)?;
        rec.submit();
        let want = crate::reference::matmul(&a, &held(&b), m, n, k, layout);
        if !matches_reference(&gpu.download(&out)?, &want) {
            return Ok(None);
        }
    }
    let (mut flops, mut seconds) = (0.0, 0.0);
    for (m, c, v) in [(rows, 128, 512), (rows, 768, 0)] {
        // (layout, n, k) of each product: c_attn, attn.c_proj, c_fc, mlp.c_proj, the LM head.
        let mut products =
            vec![(Layout::NN, 3 * c, c), (Layout::NN, c, c), (Layout::NN, 4 * c, c), (Layout::NN, c, 4 * c)];
        if v > 0 {
            products.push((Layout::NT, v, c));
        }
        let x = gpu.upload(&[m, 4 * c], &vec![0.5; m * 4 * c])?;
        let mut operands = Vec::new();
        let mut rec = Recorder::new(gpu);
        for &(layout, n, k) in &products {
            let b_shape = if layout == Layout::NT { [n, k] } else { [k, n] };
            let weights = in_format(&mut rec, &gpu.upload(&b_shape, &vec![0.25; n * k])?, format)?;
            let (a, out) = (x.view(gpu, 0, &[m, k])?, gpu.tensor(&[m, n], DType::F32)?);
            operands.push((layout, a, weights, out));
            flops += (2 * m * n * k) as f64;
        }
        rec.submit();
        seconds += seconds_per_call(gpu, |rec| {
            operands.iter().try_for_each(|(layout, a, w, out)| matmul(rec, out, a, w, None, *layout, false))
        })?;
    }
    Ok(Some(flops / seconds / 1e9))
}
