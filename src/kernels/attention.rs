//! Causal multi-head attention with a key padding mask, forward and backward.
//! Shader: `attention.wgsl`.

use super::{bind, bind_u32, expect_len, groups};
use crate::error::{Result, ensure_shape};
use crate::gpu::{Recorder, Shader, Tensor, Work};

pub const SHADER: Shader =
    Shader { name: "attention", source: include_str!("../../shaders/attention.wgsl"), includes: &[] };

/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 64;

/// Largest head dimension the kernels hold in registers.
pub const MAX_HEAD_DIM: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    b: u32,
    t: u32,
    c: u32,
    nh: u32,
}

/// Shape of an attention call: batch, sequence length, channels, heads.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub n_head: usize,
}

impl AttentionShape {
    /// The forward's work: per (batch, head), causal Q·Kᵀ and P·V over T·(T + 1)/2 pairs of
    /// head_dim-long vectors, 2 flops per multiply-add; reads qkv, writes out and lse.
    fn forward_work(&self) -> Work {
        let AttentionShape { b, t, c, .. } = *self;
        let pairs = b * t * (t + 1) / 2;
        Work::flops(2 * 2 * pairs * c, b * t * (3 * c + c) + self.rows())
    }

    /// Checks the head dimension and the tensors every attention kernel reads (qkv, mask, the
    /// forward's out and lse); returns the uniform parameters and the head dimension.
    fn check(&self, qkv: &Tensor, mask: &Tensor, out: &Tensor, lse: &Tensor) -> Result<(Params, f64)> {
        let AttentionShape { b, t, c, n_head } = *self;
        ensure_shape(n_head > 0 && c % n_head == 0, || {
            format!("attention: n_embd {c} is not divisible by n_head {n_head}")
        })?;
        let hd = c / n_head;
        ensure_shape(hd % 4 == 0 && hd <= MAX_HEAD_DIM, || {
            format!("attention: head dimension {hd} must be a multiple of 4 and at most {MAX_HEAD_DIM}")
        })?;
        expect_len(qkv, b * t * 3 * c, "attention qkv")?;
        expect_len(mask, b * t, "attention mask")?;
        expect_len(out, b * t * c, "attention output")?;
        expect_len(lse, self.rows(), "attention lse")?;
        Ok((Params { b: b as u32, t: t as u32, c: c as u32, nh: n_head as u32 }, hd as f64))
    }

    fn rows(&self) -> usize {
        self.b * self.n_head * self.t
    }
}

/// out [B, T, C] = attention(qkv [B, T, 3C]) under a causal and key padding `mask` [B, T] (u32,
/// nonzero = real token); saves lse [B, NH, T] for the backward.
pub fn attention_forward(
    rec: &mut Recorder,
    out: &Tensor,
    lse: &Tensor,
    qkv: &Tensor,
    mask: &Tensor,
    shape: AttentionShape,
) -> Result<()> {
    let (params, hd) = shape.check(qkv, mask, out, lse)?;
    let grid = rec.gpu().grid(groups(shape.rows(), WG));
    let bindings = [bind(1, qkv), bind_u32(2, mask), bind(3, out), bind(4, lse)];
    let p = bytemuck::bytes_of(&params);
    rec.dispatch(&SHADER, "attention_forward", &[("HEAD_DIM", hd)], p, &bindings, grid, shape.forward_work())
}

/// dqkv [B, T, 3C] = ∂L/∂qkv (overwritten) from dout [B, T, C] and the forward's out and lse;
/// `delta` [B, NH, T] is scratch.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    rec: &mut Recorder,
    dqkv: &Tensor,
    delta: &Tensor,
    dout: &Tensor,
    qkv: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    mask: &Tensor,
    shape: AttentionShape,
) -> Result<()> {
    let (params, hd) = shape.check(qkv, mask, out, lse)?;
    expect_len(dqkv, qkv.len(), "attention dqkv")?;
    expect_len(dout, out.len(), "attention dout")?;
    expect_len(delta, lse.len(), "attention delta")?;
    let grid = rec.gpu().grid(groups(shape.rows(), WG));
    let constants = [("HEAD_DIM", hd)];
    let p = bytemuck::bytes_of(&params);
    rec.dispatch(
        &SHADER,
        "attention_backward_delta",
        &constants,
        p,
        &[bind(5, out), bind(6, dout), bind(8, delta)],
        grid,
        Work::flops(2 * out.len(), 2 * out.len() + lse.len()),
    )?;
    // Each of the two backward kernels recomputes the scores and does the forward's work twice
    // over (dP = dO·Vᵀ and dQ = dS·K; dV = Pᵀ·dO and dK = dSᵀ·Q).
    let AttentionShape { b: batch, t, c, .. } = shape;
    let backward =
        Work::flops(3 * shape.forward_work().flops as usize / 2, batch * t * (3 * c + 3 * c + c) + 2 * lse.len());
    let b = [bind(1, qkv), bind_u32(2, mask), bind(6, dout), bind(7, lse), bind(9, delta), bind(10, dqkv)];
    rec.dispatch(&SHADER, "attention_backward_query", &constants, p, &b, grid, backward)?;
    rec.dispatch(&SHADER, "attention_backward_key_value", &constants, p, &b, grid, backward)
}
