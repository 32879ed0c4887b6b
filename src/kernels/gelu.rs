//! GELU (tanh approximation) forward and backward. Shader: `gelu.wgsl`.

use super::{bind, expect_len, groups};
use crate::error::Result;
use crate::gpu::{Recorder, Shader, Tensor, Work};

pub const SHADER: Shader = Shader { name: "gelu", source: include_str!("../../shaders/gelu.wgsl"), includes: &[] };

/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 256;

/// out = gelu(inp), elementwise.
pub fn gelu_forward(rec: &mut Recorder, out: &Tensor, inp: &Tensor) -> Result<()> {
    expect_len(out, inp.len(), "gelu output")?;
    let n = inp.len() as u32;
    let grid = rec.gpu().grid(groups(inp.len(), WG));
    let work = Work::floats(2 * inp.len());
    rec.dispatch(&SHADER, "gelu_forward", &[], bytemuck::bytes_of(&n), &[bind(1, inp), bind(2, out)], grid, work)
}

/// dinp = gelu'(inp) · dout, elementwise (overwrites dinp).
pub fn gelu_backward(rec: &mut Recorder, dinp: &Tensor, inp: &Tensor, dout: &Tensor) -> Result<()> {
    expect_len(dout, inp.len(), "gelu dout")?;
    expect_len(dinp, inp.len(), "gelu dinp")?;
    let n = inp.len() as u32;
    let grid = rec.gpu().grid(groups(inp.len(), WG));
    rec.dispatch(
        &SHADER,
        "gelu_backward",
        &[],
        bytemuck::bytes_of(&n),
        &[bind(1, inp), bind(3, dout), bind(4, dinp)],
        grid,
        Work::floats(3 * inp.len()),
    )
}
