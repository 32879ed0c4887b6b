//! GELU (tanh approximation) forward and backward. Shader: `gelu.wgsl`.

use super::{bind, elementwise, expect_len};
use crate::error::Result;
use crate::gpu::{Recorder, Shader, Tensor, Work};

pub const SHADER: Shader = Shader { name: "gelu", source: include_str!("../../shaders/gelu.wgsl"), includes: &[] };

/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 256;

/// out = gelu(inp), elementwise.
pub fn gelu_forward(rec: &mut Recorder, out: &Tensor, inp: &Tensor) -> Result<()> {
    expect_len(out, inp.len(), "gelu output")?;
    let n = inp.len() as u32;
    let work = Work::floats(2 * inp.len());
    let (entry, b) = match elementwise(rec.gpu(), inp.len(), WG) {
        (true, grid) => ("gelu_forward4", ([bind(5, inp), bind(6, out)], grid)),
        (false, grid) => ("gelu_forward", ([bind(1, inp), bind(2, out)], grid)),
    };
    rec.dispatch(&SHADER, entry, &[], bytemuck::bytes_of(&n), &b.0, b.1, work)
}

/// dinp = gelu'(inp) · dout, elementwise (overwrites dinp).
pub fn gelu_backward(rec: &mut Recorder, dinp: &Tensor, inp: &Tensor, dout: &Tensor) -> Result<()> {
    expect_len(dout, inp.len(), "gelu dout")?;
    expect_len(dinp, inp.len(), "gelu dinp")?;
    let n = inp.len() as u32;
    let work = Work::floats(3 * inp.len());
    let (entry, b) = match elementwise(rec.gpu(), inp.len(), WG) {
        (true, grid) => ("gelu_backward4", ([bind(5, inp), bind(7, dout), bind(8, dinp)], grid)),
        (false, grid) => ("gelu_backward", ([bind(1, inp), bind(3, dout), bind(4, dinp)], grid)),
    };
    rec.dispatch(&SHADER, entry, &[], bytemuck::bytes_of(&n), &b.0, b.1, work)
}
