//! Sampling the next token on the GPU: temperature, top-k, top-p, greedy, and a counter-based
//! random stream per (seed, sample, step). Shader: `sampling.wgsl`; the CPU reference is
//! `reference::sample_threshold` with `reference::uniform_at`.

use super::padded_vocab::{MIN_TEMPERATURE, check_temperature};
use super::{bind, bind_u32, expect_len};
use crate::error::{Error, Result, ensure_shape};
use crate::gpu::{Recorder, Shader, Tensor, Work};

pub const SHADER: Shader =
    Shader { name: "sampling", source: include_str!("../../shaders/sampling.wgsl"), includes: &[] };

/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 256;

/// `eos` value meaning "no end-of-sequence token".
pub const NO_EOS: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    v: u32,
    row_stride: u32,
    row_base: u32,
    inv_temperature: f32,
    top_k: u32,
    top_p: f32,
    step: u32,
    first_sample: u32,
    seed_lo: u32,
    seed_hi: u32,
    eos: u32,
    pad: u32,
    steps: u32,
}

/// How the next token is drawn from a row of logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the most likely tokens whose probability reaches p (1 = all).
    pub top_p: f32,
}

impl Sampling {
    /// Checks the values a user gave.
    pub fn validate(&self) -> Result<()> {
        if self.temperature != 0.0 && check_temperature(self.temperature, "--temperature").is_err() {
            return Err(Error::Input(format!(
                "--temperature {} must be 0 (greedy) or at least {MIN_TEMPERATURE}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Input(format!("--top-p {} must be in (0, 1]", self.top_p)));
        }
        Ok(())
    }
}

/// Where the rows to sample from sit in a logits tensor: row b at b·stride + base, V values.
#[derive(Clone, Copy, Debug)]
pub struct LogitRows {
    pub rows: usize,
    pub v: usize,
    pub stride: usize,
    pub base: usize,
}

/// The per-row generation state the sampler reads and advances.
pub struct SamplerState<'a> {
    /// u32 [B, steps]: column `step` receives the tokens.
    pub tokens: &'a Tensor,
    /// u32 [B]: the token each row feeds to the next decode step.
    pub next_ids: &'a Tensor,
    /// u32 [B]: that token's position (prompt_len + step).
    pub next_pos: &'a Tensor,
    /// u32 [B]: 1 once a row has drawn `eos` (later steps emit `pad`). Zero it before step 0.
    pub done: &'a Tensor,
    /// u32 [B]: real (unpadded) prompt tokens per row.
    pub prompt_len: &'a Tensor,
}

/// Draws token `step` of every row: the stream of row b is (seed, first_sample + b, step).
#[allow(clippy::too_many_arguments)]
pub fn sample_tokens(
    rec: &mut Recorder,
    logits: &Tensor,
    rows: LogitRows,
    state: &SamplerState,
    sampling: Sampling,
    seed: u64,
    first_sample: usize,
    step: usize,
    eos: Option<u32>,
    pad: u32,
) -> Result<()> {
    sampling.validate()?;
    let LogitRows { rows: b, v, stride, base } = rows;
    ensure_shape(b == 0 || (b - 1) * stride + base + v <= logits.len(), || {
        format!("sampling rows {rows:?} do not fit in logits {:?}", logits.shape())
    })?;
    let steps = state.tokens.len() / b.max(1);
    expect_len(state.tokens, b * steps, "sampled tokens")?;
    ensure_shape(step < steps, || format!("sampling step {step} past the {steps} columns of the token buffer"))?;
    for (t, what) in [
        (state.next_ids, "next ids"),
        (state.next_pos, "next positions"),
        (state.done, "done flags"),
        (state.prompt_len, "prompt lengths"),
    ] {
        expect_len(t, b, what)?;
    }
    let p = Params {
        rows: b as u32,
        v: v as u32,
        row_stride: stride as u32,
        row_base: base as u32,
        inv_temperature: if sampling.temperature == 0.0 { 0.0 } else { 1.0 / sampling.temperature },
        top_k: sampling.top_k.min(u32::MAX as usize) as u32,
        top_p: sampling.top_p,
        step: step as u32,
        first_sample: first_sample as u32,
        seed_lo: seed as u32,
        seed_hi: (seed >> 32) as u32,
        eos: eos.unwrap_or(NO_EOS),
        pad,
        steps: steps as u32,
    };
    let bindings = [
        bind(1, logits),
        bind_u32(2, state.tokens),
        bind_u32(3, state.next_ids),
        bind_u32(4, state.next_pos),
        bind_u32(5, state.done),
        bind_u32(6, state.prompt_len),
    ];
    let grid = rec.gpu().grid(b);
    // The row is read a few dozen times: once for the maximum and the softmax, then once per
    // bit of each threshold search (32 each for top-k and top-p when asked), then for the draw.
    let passes = 3 + 32 * ((sampling.top_k > 0) as usize + (sampling.top_p < 1.0) as usize);
    let work = Work::floats(passes * b * v);
    rec.dispatch(&SHADER, "sample_tokens", &[], bytemuck::bytes_of(&p), &bindings, grid, work)
}
