//! Log-softmax and cross-entropy forward and backward. Shader: `cross_entropy.wgsl`.

use super::{as_matrix, bind, bind_u32, expect_len, row_ranges};
use crate::error::Result;
use crate::gpu::{Recorder, Shader, Tensor, Work};

pub const SHADER: Shader =
    Shader { name: "cross_entropy", source: include_str!("../../shaders/cross_entropy.wgsl"), includes: &[] };

/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 64;

/// A target that contributes no loss (a prompt or padding position).
pub const IGNORE: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    v: u32,
    inv_temperature: f32,
}

fn params(logits: &Tensor, temperature: f32) -> Params {
    let (rows, v) = as_matrix(logits);
    Params { rows: rows as u32, v: v as u32, inv_temperature: 1.0 / temperature }
}

/// With z = logits/temperature: loss [N] = lse − z[n, target_n] (0 for IGNORE), so −loss is the
/// log-probability of the target; lse [N] = log Σ exp(z[n, :]).
pub fn cross_entropy_forward(
    rec: &mut Recorder,
    loss: &Tensor,
    lse: &Tensor,
    logits: &Tensor,
    targets: &Tensor,
    temperature: f32,
) -> Result<()> {
    let (rows, v) = as_matrix(logits);
    for (t, what) in [(loss, "cross-entropy loss"), (lse, "cross-entropy lse"), (targets, "cross-entropy targets")] {
        expect_len(t, rows, what)?;
    }
    let gpu = rec.gpu().clone();
    for (r0, n) in row_ranges(&gpu, rows, v) {
        let (logits, targets) = (logits.view(&gpu, r0 * v, &[n, v])?, targets.view(&gpu, r0, &[n])?);
        let (lse, loss) = (lse.view(&gpu, r0, &[n])?, loss.view(&gpu, r0, &[n])?);
        let p = params(&logits, temperature);
        let b = [bind(1, &logits), bind_u32(2, &targets), bind(3, &lse), bind(4, &loss)];
        let work = Work::floats(n * v + 3 * n);
        rec.dispatch(&SHADER, "cross_entropy_forward", &[], bytemuck::bytes_of(&p), &b, gpu.grid(n), work)?;
    }
    Ok(())
}

/// logp [N, V] = log_softmax(logits/temperature) along each row.
pub fn log_softmax_forward(rec: &mut Recorder, logp: &Tensor, logits: &Tensor, temperature: f32) -> Result<()> {
    let (rows, v) = as_matrix(logits);
    expect_len(logp, logits.len(), "log-softmax output")?;
    let gpu = rec.gpu().clone();
    for (r0, n) in row_ranges(&gpu, rows, v) {
        let (logits, logp) = (logits.view(&gpu, r0 * v, &[n, v])?, logp.view(&gpu, r0 * v, &[n, v])?);
        let p = params(&logits, temperature);
        let b = [bind(1, &logits), bind(5, &logp)];
        let work = Work::floats(2 * n * v);
        rec.dispatch(&SHADER, "log_softmax_forward", &[], bytemuck::bytes_of(&p), &b, gpu.grid(n), work)?;
    }
    Ok(())
}

/// Overwrites `logits` [N, V] with ∂L/∂logits for L = Σ_n dloss_n · loss_n:
/// dloss_n · (softmax(logits/τ) − onehot(target_n)) / τ, zero on IGNORE rows. `lse` comes from
/// the forward at the same temperature.
pub fn cross_entropy_backward(
    rec: &mut Recorder,
    logits: &Tensor,
    dloss: &Tensor,
    lse: &Tensor,
    targets: &Tensor,
    temperature: f32,
) -> Result<()> {
    let (rows, v) = as_matrix(logits);
    for (t, what) in [(dloss, "cross-entropy dloss"), (lse, "cross-entropy lse"), (targets, "cross-entropy targets")] {
        expect_len(t, rows, what)?;
    }
    let gpu = rec.gpu().clone();
    for (r0, n) in row_ranges(&gpu, rows, v) {
        let (logits, targets) = (logits.view(&gpu, r0 * v, &[n, v])?, targets.view(&gpu, r0, &[n])?);
        let (dloss, lse) = (dloss.view(&gpu, r0, &[n])?, lse.view(&gpu, r0, &[n])?);
        let p = params(&logits, temperature);
        let b = [bind_u32(2, &targets), bind(6, &logits), bind(7, &dloss), bind(8, &lse)];
        let work = Work::floats(2 * n * v + 3 * n); // the logits read, their gradient written in place
        rec.dispatch(&SHADER, "cross_entropy_backward", &[], bytemuck::bytes_of(&p), &b, gpu.grid(n), work)?;
    }
    Ok(())
}
