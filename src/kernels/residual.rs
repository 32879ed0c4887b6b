//! Residual add (forward) and gradient accumulation. Shader: `residual.wgsl`.

use super::{bind, elementwise, expect_len};
use crate::error::Result;
use crate::gpu::{Recorder, Shader, Tensor, Work};

pub const SHADER: Shader =
    Shader { name: "residual", source: include_str!("../../shaders/residual.wgsl"), includes: &[] };

/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 256;

/// out = a + b, elementwise. (The model's forward runs its residual adds fused with the
/// LayerNorm after them, `layernorm::residual_layernorm_forward`, which falls back on this.)
pub fn residual_forward(rec: &mut Recorder, out: &Tensor, a: &Tensor, b: &Tensor) -> Result<()> {
    expect_len(b, a.len(), "residual operand b")?;
    expect_len(out, a.len(), "residual output")?;
    let n = a.len() as u32;
    let work = Work::floats(3 * a.len());
    match elementwise(rec.gpu(), a.len(), WG) {
        (true, grid) => {
            let b = [bind(4, a), bind(5, b), bind(6, out)];
            rec.dispatch(&SHADER, "residual_forward4", &[], bytemuck::bytes_of(&n), &b, grid, work)
        }
        (false, grid) => {
            let b = [bind(1, a), bind(2, b), bind(3, out)];
            rec.dispatch(&SHADER, "residual_forward", &[], bytemuck::bytes_of(&n), &b, grid, work)
        }
    }
}

/// dst += src, elementwise: the backward of a residual add sends its gradient to both branches.
pub fn accumulate(rec: &mut Recorder, dst: &Tensor, src: &Tensor) -> Result<()> {
    expect_len(dst, src.len(), "accumulate destination")?;
    let n = src.len() as u32;
    let work = Work::floats(3 * src.len());
    match elementwise(rec.gpu(), src.len(), WG) {
        (true, grid) => {
            let b = [bind(4, src), bind(6, dst)];
            rec.dispatch(&SHADER, "accumulate4", &[], bytemuck::bytes_of(&n), &b, grid, work)
        }
        (false, grid) => {
            let b = [bind(1, src), bind(3, dst)];
            rec.dispatch(&SHADER, "accumulate", &[], bytemuck::bytes_of(&n), &b, grid, work)
        }
    }
}
