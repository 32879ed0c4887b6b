//! Generalised advantage estimation on the GPU. Shader: `gae.wgsl`.

use super::{as_matrix, bind, expect_len, groups};
use crate::error::Result;
use crate::gpu::{Recorder, Shader, Tensor, Work};

pub const SHADER: Shader = Shader { name: "gae", source: include_str!("../../shaders/gae.wgsl"), includes: &[] };

/// Sequences per workgroup (one invocation each) (`WG_SEQUENCES` in the shader).
pub const WG_SEQUENCES: usize = 64;
/// gae_scan: invocations per sequence (`SCAN_CHUNKS` in the shader).
pub const SCAN_CHUNKS: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    b: u32,
    t: u32,
    gamma: f32,
    lam: f32,
}

/// Which GAE kernel to run; both give the same advantages. On lavapipe the per-sequence walk
/// is the faster at B = 512, T = 1024 (`cargo bench -- gae`); the scan is for long sequences
/// in small batches, where the walk leaves a GPU idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GaeKernel {
    /// One invocation per sequence, serial in time.
    PerSequence,
    /// One workgroup per sequence, a parallel scan over affine maps in time.
    Scan,
}

/// advantages, returns [B, T] from rewards, values and the response mask [B, T].
#[allow(clippy::too_many_arguments)]
pub fn gae(
    rec: &mut Recorder,
    kernel: GaeKernel,
    advantages: &Tensor,
    returns: &Tensor,
    rewards: &Tensor,
    values: &Tensor,
    mask: &Tensor,
    gamma: f32,
    lam: f32,
) -> Result<()> {
    let (b, t) = as_matrix(rewards);
    for (x, what) in
        [(values, "GAE values"), (mask, "GAE mask"), (advantages, "GAE advantages"), (returns, "GAE returns")]
    {
        expect_len(x, b * t, what)?;
    }
    let p = Params { b: b as u32, t: t as u32, gamma, lam };
    let bindings = [bind(1, rewards), bind(2, values), bind(3, mask), bind(4, advantages), bind(5, returns)];
    let work = Work::floats(5 * b * t); // three tensors read, two written
    match kernel {
        GaeKernel::PerSequence => rec.dispatch(
            &SHADER,
            "gae_per_sequence",
            &[],
            bytemuck::bytes_of(&p),
            &bindings,
            [groups(b, WG_SEQUENCES) as u32, 1, 1],
            work,
        ),
        GaeKernel::Scan => {
            rec.dispatch(&SHADER, "gae_scan", &[], bytemuck::bytes_of(&p), &bindings, [b as u32, 1, 1], work)
        }
    }
}
