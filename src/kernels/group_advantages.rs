//! The group advantages of GRPO and RLOO: each completion against the other completions of its
//! prompt. Shader: `group_advantages.wgsl`.

use super::{as_matrix, bind, expect_len, groups};
use crate::error::{Result, ensure_shape};
use crate::gpu::{Recorder, Shader, Tensor, Work};

pub const SHADER: Shader =
    Shader { name: "group_advantages", source: include_str!("../../shaders/group_advantages.wgsl"), includes: &[] };

/// sequence_returns: sequences per workgroup (one invocation each) (`WG_SEQUENCES` in the shader).
pub const WG_SEQUENCES: usize = 64;
/// group_advantages: positions per workgroup (`WG` in the shader).
pub const WG: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    b: u32,
    t: u32,
    group: u32,
    baseline: u32,
}

/// What a completion's return is compared with (the shader's BASELINE_* codes, in order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBaseline {
    /// GRPO: (r − mean)/(std + 1e−4) over the group, the std unbiased.
    MeanStd,
    /// GRPO without scaling (Dr. GRPO): r − mean.
    Mean,
    /// RLOO: r minus the mean of the group's other returns.
    LeaveOneOut,
}

/// returns [B] = the row sums of rewards [B, T].
pub fn sequence_returns(rec: &mut Recorder, returns: &Tensor, rewards: &Tensor) -> Result<()> {
    let (b, t) = as_matrix(rewards);
    expect_len(returns, b, "sequence returns")?;
    let p = Params { b: b as u32, t: t as u32, ..Default::default() };
    let bindings = [bind(1, rewards), bind(2, returns)];
    rec.dispatch(
        &SHADER,
        "sequence_returns",
        &[],
        bytemuck::bytes_of(&p),
        &bindings,
        [groups(b, WG_SEQUENCES) as u32, 1, 1],
        Work::floats(b * t + b),
    )
}

/// advantages [B, T] = mask [B, T] times each row's advantage from returns [B], the rows taken
/// in groups of `group` consecutive ones.
pub fn group_advantages(
    rec: &mut Recorder,
    advantages: &Tensor,
    returns: &Tensor,
    mask: &Tensor,
    group: usize,
    baseline: GroupBaseline,
) -> Result<()> {
    let (b, t) = as_matrix(mask);
    ensure_shape(group >= 2 && b % group == 0, || {
        format!("group advantages: {b} rows are not whole groups of {group} (at least 2) completions")
    })?;
    expect_len(returns, b, "group returns")?;
    expect_len(advantages, b * t, "group advantages")?;
    let p = Params { b: b as u32, t: t as u32, group: group as u32, baseline: baseline as u32 };
    let grid = rec.gpu().grid(groups(b * t, WG));
    let bindings = [bind(3, returns), bind(4, mask), bind(5, advantages)];
    let work = Work::floats(2 * b * t + b); // the mask read, the advantages written, each return read
    rec.dispatch(&SHADER, "group_advantages", &[], bytemuck::bytes_of(&p), &bindings, grid, work)
}
