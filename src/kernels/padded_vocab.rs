//! The padded vocabulary's logit mask. Shader: `padded_vocab.wgsl`.
//!
//! The GPU model holds `wte` with Vp = V rounded up to a multiple of 64 rows
//! (`GptConfig::padded_vocab_size`), so the LM head's products (logits = x·wteᵀ, dx = dlogits·wte,
//! dwte = dlogitsᵀ·x) run on the aligned paths. Its logits have Vp columns; the padded ones are
//! set to MASKED_LOGIT, which every softmax kernel (cross-entropy, PPO losses, log-probs) turns
//! into probability 0 and gradient 0, exactly. The sampler reads only the first V columns.

use super::{bind, expect_len, groups, row_ranges};
use crate::error::{Error, Result};
use crate::gpu::{Recorder, Shader, Tensor, Work};

pub const SHADER: Shader =
    Shader { name: "padded_vocab", source: include_str!("../../shaders/padded_vocab.wgsl"), includes: &[] };

/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 256;

/// The value of a padded column's logit: exp(MASKED_LOGIT/τ − max) is 0 in f32 for any real
/// logits, and MASKED_LOGIT/τ stays finite (the softmax kernels never see an infinity) for every
/// τ ≥ MIN_TEMPERATURE.
pub const MASKED_LOGIT: f32 = -1.0e30;

/// The lowest softmax temperature the model's log-probs accept (see MASKED_LOGIT).
pub const MIN_TEMPERATURE: f32 = 1e-6;

/// Checks a softmax temperature for the model's logits: finite and at least MIN_TEMPERATURE.
pub fn check_temperature(temperature: f32, what: &str) -> Result<()> {
    if temperature.is_finite() && temperature >= MIN_TEMPERATURE {
        return Ok(());
    }
    Err(Error::Input(format!("{what} {temperature} must be at least {MIN_TEMPERATURE} (and finite)")))
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    v: u32,
    stride: u32,
    masked: f32,
}

/// Sets columns v.. of every row of `logits` [N, Vp] to MASKED_LOGIT (nothing when v = Vp).
pub fn mask_padded_logits(rec: &mut Recorder, logits: &Tensor, v: usize) -> Result<()> {
    let stride = *logits.shape().last().unwrap_or(&0);
    if v > stride {
        return Err(Error::Shape(format!("mask_padded_logits: {v} real columns in rows of {stride}")));
    }
    let rows = logits.len().checked_div(stride).unwrap_or(0);
    expect_len(logits, rows * stride, "padded logits")?;
    let pad = stride - v;
    if pad == 0 || rows == 0 {
        return Ok(());
    }
    let gpu = rec.gpu().clone();
    for (r0, n) in row_ranges(&gpu, rows, stride) {
        let slice = logits.view(&gpu, r0 * stride, &[n, stride])?;
        let params = Params { rows: n as u32, v: v as u32, stride: stride as u32, masked: MASKED_LOGIT };
        let grid = gpu.grid(groups(n * pad, WG));
        let work = Work::floats(n * pad);
        rec.dispatch(&SHADER, "mask_padded_logits", &[], bytemuck::bytes_of(&params), &[bind(1, &slice)], grid, work)?;
    }
    Ok(())
}
