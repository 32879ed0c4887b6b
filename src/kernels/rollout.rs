//! Rollout glue on the GPU: per-token values, the packed PPO loss inputs, minibatch row
//! gathers and per-sequence scores. Shader: `rollout.wgsl`.

use super::{as_matrix, bind, bind_u32, expect_len, groups};
use crate::error::{Result, ensure_shape};
use crate::gpu::{DType, Recorder, Shader, Tensor, Work};

pub const SHADER: Shader =
    Shader { name: "rollout", source: include_str!("../../shaders/rollout.wgsl"), includes: &[] };

/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 256;
/// Sequences per workgroup (one invocation each) (`WG_SEQUENCES` in the shader).
pub const WG_SEQUENCES: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    b: u32,
    t: u32,
    width: u32,
    n: u32,
}

/// out [B, T]: out[b, j] = values[b, j − 1], 0 at j = 0.
pub fn values_per_token(rec: &mut Recorder, out: &Tensor, values: &Tensor) -> Result<()> {
    let (b, t) = as_matrix(values);
    expect_len(out, b * t, "per-token values")?;
    let p = Params { b: b as u32, t: t as u32, ..Default::default() };
    let grid = rec.gpu().grid(groups(b * t, WG));
    let work = Work::floats(2 * b * t);
    rec.dispatch(&SHADER, "values_per_token", &[], bytemuck::bytes_of(&p), &[bind(1, values), bind(2, out)], grid, work)
}

/// The per-token tensors of a rollout, [B, T] each, as `pack_loss_inputs` reads them.
pub struct LossInputs<'a> {
    pub mask: &'a Tensor,
    pub old_logprobs: &'a Tensor,
    pub old_values: &'a Tensor,
    pub advantages: &'a Tensor,
    pub returns: &'a Tensor,
    pub ref_logprobs: &'a Tensor,
}

/// inputs [B·T, 8] = (mask, old_logprob, old_value, advantage, return, ref_logprob, 1/n_b, 0)
/// per position (`kernels::ppo::INPUT_COLUMNS`), n_b the trained tokens of the position's row.
pub fn pack_loss_inputs(rec: &mut Recorder, inputs: &Tensor, x: &LossInputs) -> Result<()> {
    let (b, t) = as_matrix(x.mask);
    for (y, what) in [
        (x.old_logprobs, "log-probs"),
        (x.old_values, "values"),
        (x.advantages, "advantages"),
        (x.returns, "returns"),
        (x.ref_logprobs, "reference log-probs"),
    ] {
        expect_len(y, b * t, what)?;
    }
    expect_len(inputs, b * t * 8, "packed loss inputs")?;
    let p = Params { b: b as u32, t: t as u32, ..Default::default() };
    let bindings = [
        bind(2, inputs),
        bind(5, x.mask),
        bind(6, x.old_logprobs),
        bind(7, x.old_values),
        bind(8, x.advantages),
        bind(9, x.returns),
        bind(10, x.ref_logprobs),
    ];
    let work = Work::floats(6 * b * t + b * t * 8);
    rec.dispatch(&SHADER, "pack_loss_inputs", &[], bytemuck::bytes_of(&p), &bindings, [b as u32, 1, 1], work)
}

/// dst [R, W] = src[rows[r], ·] for src [N, W] and rows u32 [R] (each < N).
pub fn gather_rows(rec: &mut Recorder, dst: &Tensor, src: &Tensor, rows: &Tensor) -> Result<()> {
    let (n, width) = as_matrix(src);
    ensure_shape(rows.dtype() == DType::U32, || "gather rows: row indices must be u32".into())?;
    expect_len(dst, rows.len() * width, "gathered rows")?;
    ensure_shape(n > 0 || rows.is_empty(), || "gather rows from an empty tensor".into())?;
    let p = Params { b: n as u32, width: width as u32, n: (rows.len() * width) as u32, ..Default::default() };
    let grid = rec.gpu().grid(groups(rows.len() * width, WG));
    rec.dispatch(
        &SHADER,
        "gather_rows",
        &[],
        bytemuck::bytes_of(&p),
        &[bind(1, src), bind(2, dst), bind_u32(3, rows)],
        grid,
        Work::floats(2 * rows.len() * width),
    )
}

/// scores [B] = x [B, T] at each row's last position with mask [B, T] (u32) ≠ 0 (0 if none).
pub fn last_token_scores(rec: &mut Recorder, scores: &Tensor, x: &Tensor, mask: &Tensor) -> Result<()> {
    let (b, t) = as_matrix(x);
    expect_len(mask, b * t, "score mask")?;
    expect_len(scores, b, "scores")?;
    let p = Params { b: b as u32, t: t as u32, ..Default::default() };
    let bindings = [bind(1, x), bind(2, scores), bind_u32(4, mask)];
    rec.dispatch(
        &SHADER,
        "last_token_scores",
        &[],
        bytemuck::bytes_of(&p),
        &bindings,
        [groups(b, WG_SEQUENCES) as u32, 1, 1],
        Work::floats(2 * b * t + b),
    )
}
