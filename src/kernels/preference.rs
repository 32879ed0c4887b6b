//! The Bradley–Terry preference loss and its gradient, for reward-model training. Shader:
//! `preference.wgsl`; the CPU reference is `reference::bradley_terry`.

use super::{as_matrix, bind, bind_u32, expect_len, groups};
use crate::error::{Result, ensure_shape};
use crate::gpu::{Recorder, Shader, Tensor, Work};

pub const SHADER: Shader =
    Shader { name: "preference", source: include_str!("../../shaders/preference.wgsl"), includes: &[] };

/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    pairs: u32,
    t: u32,
    inv_pairs: f32,
}

/// For rewards [2N, T] (rows 2i chosen, 2i + 1 rejected, each read at its last position with
/// mask [2N, T] ≠ 0): drewards [2N, T] = ∂L/∂rewards of L = mean −log σ(r_chosen − r_rejected),
/// and pair_stats [N, 2] = (loss, correct) per pair.
pub fn bradley_terry(
    rec: &mut Recorder,
    drewards: &Tensor,
    pair_stats: &Tensor,
    rewards: &Tensor,
    mask: &Tensor,
) -> Result<()> {
    let (rows, t) = as_matrix(rewards);
    ensure_shape(rows % 2 == 0, || format!("preference rewards: {rows} rows are not chosen/rejected pairs"))?;
    let n = rows / 2;
    expect_len(mask, rows * t, "preference mask")?;
    expect_len(drewards, rows * t, "preference reward gradient")?;
    expect_len(pair_stats, n * 2, "preference pair statistics")?;
    let p = Params { pairs: n as u32, t: t as u32, inv_pairs: 1.0 / n.max(1) as f32 };
    let bindings = [bind(1, rewards), bind_u32(2, mask), bind(3, drewards), bind(4, pair_stats)];
    let work = Work::floats(4 * rows * t + 2 * n); // rewards and mask read, the gradient written
    rec.dispatch(&SHADER, "bradley_terry", &[], bytemuck::bytes_of(&p), &bindings, [groups(n, WG) as u32, 1, 1], work)
}
