//! Sampling the next token on the GPU: temperature, top-k, top-p, greedy, and a counter-based
//! random stream per (seed, sample, step). Shader: `sampling.wgsl`; the CPU reference is
//! `reference::sample_threshold` with `reference::uniform_at`.

use super::padded_vocab::{MIN_TEMPERATURE, check_temperature};
use super::{MAX_SERIAL_STEPS, bind, bind_u32, expect_len};
use crate::error::{Error, Result, ensure_shape};
use crate::gpu::{DType, Gpu, Recorder, Shader, Tensor, Work, choose_by_measurement, seconds_per_call};
use std::sync::Arc;

pub const SHADER: Shader =
    Shader { name: "sampling", source: include_str!("../../shaders/sampling.wgsl"), includes: &[] };

/// The most lanes a row's workgroup has (`MAX_WG` in the shader).
pub const MAX_LANES: usize = 256;

/// How many lanes (a workgroup's invocations) share one row's passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lanes {
    /// 256 lanes: what a GPU wants for a vocabulary of thousands.
    Wide,
    /// 32 lanes: fewer barrier switches on a CPU adapter, whose lanes take turns on one core
    /// (for vocabularies up to 16384; larger ones run 256 lanes, see `sample_tokens_with`).
    Narrow,
    /// 8 lanes: one SIMD vector of a CPU adapter such as lavapipe, whose barriers then have no
    /// other lanes to switch to (for vocabularies up to 4096; larger ones run 32 lanes, or 256).
    Vector,
}

impl Lanes {
    /// Invocations per row (`WG` in the shader).
    pub fn count(self) -> usize {
        match self {
            Lanes::Wide => MAX_LANES,
            Lanes::Narrow => 32,
            Lanes::Vector => 8,
        }
    }
}

/// The names of the lane counts, as `PPO_WGPU_SAMPLING` and the cache file spell them.
pub const LANES: [(Lanes, &str); 3] =
    [(Lanes::Wide, "256-lanes"), (Lanes::Narrow, "32-lanes"), (Lanes::Vector, "8-lanes")];

/// The lanes this adapter samples a row with: chosen by measurement on first use and cached
/// (family `sampling`, forced with PPO_WGPU_SAMPLING=256-lanes|32-lanes|8-lanes).
pub fn lanes(gpu: &Arc<Gpu>) -> Result<Lanes> {
    choose_by_measurement(gpu, "sampling", &LANES, "G logits/s", measure_lanes)
}

/// A lane count's rate in logits read per second (each pass over a row counted) at a small
/// model's rollout (32 rows of 512, plain sampling and with both cuts) and at 8 rows of 16384
/// (plain sampling), after a check that it draws what the CPU reference draws for the same random numbers
/// (greedy exactly; sampled rows all within the reference's kept set and at most one of 64
/// drawing another token, which f32 against f64 sums allow at a boundary).
fn measure_lanes(gpu: &Arc<Gpu>, lanes: Lanes) -> Result<Option<f64>> {
    let mut rng = crate::rng::Rng::new(37);
    let seed = 0x5eed;
    let (mut logits_read, mut seconds) = (0.0, 0.0);
    for (b, v, sampling, timed) in [
        (64, 300, Sampling { temperature: 0.0, top_k: 0, top_p: 1.0 }, false),
        (64, 300, Sampling { temperature: 0.8, top_k: 20, top_p: 0.9 }, false),
        (32, 512, Sampling { temperature: 1.0, top_k: 0, top_p: 1.0 }, true),
        (32, 512, Sampling { temperature: 0.7, top_k: 50, top_p: 0.95 }, true),
        (8, 16384, Sampling { temperature: 1.0, top_k: 0, top_p: 1.0 }, true),
    ] {
        let logits: Vec<f32> = rng.normals(b * v, 2.0).into_iter().map(|x| x as f32).collect();
        let state = SamplerState::new(gpu, &vec![1; b], 1)?;
        let t_logits = gpu.upload(&[b, v], &logits)?;
        let rows = LogitRows { rows: b, v, stride: v, base: 0 };
        let draw =
            |rec: &mut Recorder| sample_tokens_with(rec, lanes, &t_logits, rows, &state, sampling, seed, 0, 0, None, 0);
        if !timed {
            let mut rec = Recorder::new(gpu);
            draw(&mut rec)?;
            rec.submit();
            let got = gpu.download_u32(&state.tokens)?;
            let mut mismatches = 0;
            for (row, &token) in got.iter().enumerate() {
                let z = &logits[row * v..(row + 1) * v];
                let Sampling { temperature, top_k, top_p } = sampling;
                let kept = crate::reference::sampling_distribution(z, temperature, top_k, top_p);
                let u = crate::reference::uniform_at(seed, row as u32, 0);
                let want = crate::reference::sample_threshold(z, temperature, top_k, top_p, u);
                if !kept.iter().any(|&(i, _)| i == token) {
                    return Ok(None);
                }
                mismatches += (token != want) as usize;
            }
            if mismatches > 1 || (sampling.temperature == 0.0 && mismatches > 0) {
                return Ok(None);
            }
            continue;
        }
        seconds += seconds_per_call(gpu, draw)?;
        logits_read += (passes(sampling) * b * v) as f64;
    }
    Ok(Some(logits_read / seconds / 1e9))
}

/// How many times a draw reads each logit of its row: once for the maximum and the softmax,
/// once per bit of each threshold search (32 each for top-k and top-p when asked), once for
/// the draw.
fn passes(sampling: Sampling) -> usize {
    3 + 32 * ((sampling.top_k > 0) as usize + (sampling.top_p < 1.0) as usize)
}

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
pub struct SamplerState {
    /// u32 [B, steps]: column `step` receives the tokens.
    pub tokens: Tensor,
    /// u32 [B]: the token each row feeds to the next decode step.
    pub next_ids: Tensor,
    /// u32 [B]: that token's position (prompt_len + step).
    pub next_pos: Tensor,
    /// u32 [B]: 1 once a row has drawn `eos` (later steps emit `pad`).
    pub done: Tensor,
    /// u32 [B]: real (unpadded) prompt tokens per row.
    pub prompt_len: Tensor,
}

impl SamplerState {
    /// The state of rows with `prompt_len` real prompt tokens each, `steps` tokens to draw, no
    /// row ended.
    pub fn new(gpu: &Arc<Gpu>, prompt_len: &[u32], steps: usize) -> Result<SamplerState> {
        let b = prompt_len.len();
        let u32s = |shape: &[usize]| gpu.tensor(shape, DType::U32);
        Ok(SamplerState {
            tokens: u32s(&[b, steps])?,
            next_ids: u32s(&[b])?,
            next_pos: u32s(&[b])?,
            done: gpu.upload_u32(&[b], &vec![0; b])?,
            prompt_len: gpu.upload_u32(&[b], prompt_len)?,
        })
    }
}

/// Draws token `step` of every row: the stream of row b is (seed, first_sample + b, step); on
/// the adapter's lane count.
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
    let lanes = lanes(rec.gpu())?;
    sample_tokens_with(rec, lanes, logits, rows, state, sampling, seed, first_sample, step, eos, pad)
}

/// As `sample_tokens`, with the lanes named (tests and benches compare them).
#[allow(clippy::too_many_arguments)]
pub fn sample_tokens_with(
    rec: &mut Recorder,
    lanes: Lanes,
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
    expect_len(&state.tokens, b * steps, "sampled tokens")?;
    ensure_shape(step < steps, || format!("sampling step {step} past the {steps} columns of the token buffer"))?;
    for (t, what) in [
        (&state.next_ids, "next ids"),
        (&state.next_pos, "next positions"),
        (&state.done, "done flags"),
        (&state.prompt_len, "prompt lengths"),
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
        bind_u32(2, &state.tokens),
        bind_u32(3, &state.next_ids),
        bind_u32(4, &state.next_pos),
        bind_u32(5, &state.done),
        bind_u32(6, &state.prompt_len),
    ];
    // A threshold search walks a lane's slice of the row 32 times in one loop: keep that within
    // MAX_SERIAL_STEPS (llvmpipe stops a loop nest silently at 65535 steps), with the fewest
    // lanes at least those asked for that do (8 lanes past 4096 values run 32, past 16384 256).
    let fits = |lanes: Lanes| 32 * v.div_ceil(lanes.count()) <= MAX_SERIAL_STEPS;
    let mut wider = [Lanes::Vector, Lanes::Narrow, Lanes::Wide].into_iter().filter(|l| l.count() >= lanes.count());
    let lanes = wider.find(|&l| fits(l)).unwrap_or(Lanes::Wide);
    let grid = rec.gpu().grid(b);
    let work = Work::floats(passes(sampling) * b * v);
    let constants = [("WG", lanes.count() as f64)];
    rec.dispatch(&SHADER, "sample_tokens", &constants, bytemuck::bytes_of(&p), &bindings, grid, work)
}
