//! Per-token KL-penalised rewards and masked whitening. Shader: `rewards.wgsl`.

use super::{as_matrix, bind, expect_len, groups};
use crate::error::Result;
use crate::gpu::{Recorder, Shader, Tensor, Work};

pub const SHADER: Shader =
    Shader { name: "rewards", source: include_str!("../../shaders/rewards.wgsl"), includes: &[] };

/// Sequences per workgroup (one invocation each) (`WG_SEQUENCES` in the shader).
pub const WG_SEQUENCES: usize = 64;
/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    b: u32,
    t: u32,
    beta: f32,
    k3: u32,
    shift_mean: u32,
}

/// The per-token KL estimator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KlEstimator {
    /// logp_old − logp_ref (TRL's default).
    K1,
    /// (ρ − 1) − log ρ with ρ = p_ref/p_old: unbiased and never negative.
    K3,
}

/// kl [B, T] = the masked per-token KL estimate; rewards [B, T] = −β·kl, plus scores [B] at each
/// sequence's last trained token.
#[allow(clippy::too_many_arguments)]
pub fn kl_rewards(
    rec: &mut Recorder,
    kl: &Tensor,
    rewards: &Tensor,
    logp_old: &Tensor,
    logp_ref: &Tensor,
    mask: &Tensor,
    scores: &Tensor,
    beta: f32,
    estimator: KlEstimator,
) -> Result<()> {
    let (b, t) = as_matrix(logp_old);
    for (x, what) in [(logp_ref, "reference log-probs"), (mask, "response mask"), (kl, "KL"), (rewards, "rewards")] {
        expect_len(x, b * t, what)?;
    }
    expect_len(scores, b, "scores")?;
    let p = Params { b: b as u32, t: t as u32, beta, k3: (estimator == KlEstimator::K3) as u32, shift_mean: 1 };
    let bindings =
        [bind(1, logp_old), bind(2, logp_ref), bind(3, mask), bind(4, scores), bind(5, kl), bind(6, rewards)];
    let work = Work::floats(5 * b * t + b); // both log-probs and the mask read, KL and rewards written
    let grid = [groups(b, WG_SEQUENCES) as u32, 1, 1];
    rec.dispatch(&SHADER, "kl_rewards", &[], bytemuck::bytes_of(&p), &bindings, grid, work)
}

/// moments [3] = (mean, unbiased variance, count) of x [B, T] over the entries where mask ≠ 0.
pub fn masked_moments(rec: &mut Recorder, moments: &Tensor, x: &Tensor, mask: &Tensor) -> Result<()> {
    let (b, t) = as_matrix(x);
    expect_len(mask, b * t, "moments mask")?;
    expect_len(moments, 3, "moments")?;
    let p = Params { b: b as u32, t: t as u32, ..Default::default() };
    let p = bytemuck::bytes_of(&p);
    let work = Work::floats(3 * b * t); // two passes over x, one over the mask
    rec.dispatch(&SHADER, "masked_moments", &[], p, &[bind(3, mask), bind(7, x), bind(8, moments)], [1, 1, 1], work)
}

/// Whitens x [B, T] over its masked-in entries in place: m·(x − mean)/sqrt(var + 1e−8), the
/// variance unbiased as TRL's; with `shift_mean` false the mean is added back (TRL's rewards).
/// `moments` [3] receives (mean, var, count) of x before whitening.
pub fn masked_whiten(rec: &mut Recorder, x: &Tensor, mask: &Tensor, moments: &Tensor, shift_mean: bool) -> Result<()> {
    masked_moments(rec, moments, x, mask)?;
    let (b, t) = as_matrix(x);
    let p = Params { b: b as u32, t: t as u32, shift_mean: shift_mean as u32, ..Default::default() };
    let grid = rec.gpu().grid(groups(b * t, WG));
    rec.dispatch(
        &SHADER,
        "masked_whiten",
        &[],
        bytemuck::bytes_of(&p),
        &[bind(3, mask), bind(7, x), bind(9, moments)],
        grid,
        Work::floats(3 * b * t),
    )
}
