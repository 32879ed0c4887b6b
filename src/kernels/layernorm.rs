//! LayerNorm forward and backward. Shader: `layernorm.wgsl`.

use super::{as_matrix, bind, expect_len, groups};
use crate::error::Result;
use crate::gpu::{Recorder, Shader, Tensor, Work};

pub const SHADER: Shader =
    Shader { name: "layernorm", source: include_str!("../../shaders/layernorm.wgsl"), includes: &[] };

/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    c: u32,
    eps: f32,
}

/// out [N, C] = layernorm(inp [N, C]) · weight [C] + bias [C]; saves mean [N] and rstd [N].
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    rec: &mut Recorder,
    out: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    inp: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> Result<()> {
    let (rows, c) = as_matrix(inp);
    expect_len(out, rows * c, "layernorm output")?;
    expect_len(weight, c, "layernorm weight")?;
    expect_len(bias, c, "layernorm bias")?;
    expect_len(mean, rows, "layernorm mean")?;
    expect_len(rstd, rows, "layernorm rstd")?;
    let params = Params { rows: rows as u32, c: c as u32, eps };
    let grid = rec.gpu().grid(groups(rows, WG));
    let work = Work::floats(2 * rows * c + 2 * c + 2 * rows);
    let (entry, b) = if c.is_multiple_of(4) {
        (
            "layernorm_forward4",
            [bind(13, inp), bind(14, weight), bind(15, bias), bind(16, out), bind(5, mean), bind(6, rstd)],
        )
    } else {
        (
            "layernorm_forward",
            [bind(1, inp), bind(2, weight), bind(3, bias), bind(4, out), bind(5, mean), bind(6, rstd)],
        )
    };
    rec.dispatch(&SHADER, entry, &[], bytemuck::bytes_of(&params), &b, grid, work)
}

/// Accumulates the LayerNorm gradients: dinp += ∂L/∂inp, dweight += ∂L/∂w, dbias += ∂L/∂b.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    rec: &mut Recorder,
    dinp: &Tensor,
    dweight: &Tensor,
    dbias: &Tensor,
    dout: &Tensor,
    inp: &Tensor,
    weight: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
) -> Result<()> {
    let (rows, c) = as_matrix(inp);
    expect_len(dout, rows * c, "layernorm dout")?;
    expect_len(dinp, rows * c, "layernorm dinp")?;
    expect_len(weight, c, "layernorm weight")?;
    expect_len(dweight, c, "layernorm dweight")?;
    expect_len(dbias, c, "layernorm dbias")?;
    expect_len(mean, rows, "layernorm mean")?;
    expect_len(rstd, rows, "layernorm rstd")?;
    let params = Params { rows: rows as u32, c: c as u32, eps: 0.0 };
    let p = bytemuck::bytes_of(&params);
    let grid = rec.gpu().grid(groups(rows, WG));
    let (entry, b) = if c.is_multiple_of(4) {
        let b = [bind(13, inp), bind(14, weight), bind(17, dout), bind(18, dinp), bind(11, mean), bind(12, rstd)];
        ("layernorm_backward_input4", b)
    } else {
        (
            "layernorm_backward_input",
            [bind(1, inp), bind(2, weight), bind(7, dout), bind(8, dinp), bind(11, mean), bind(12, rstd)],
        )
    };
    rec.dispatch(&SHADER, entry, &[], p, &b, grid, Work::floats(3 * rows * c + c + 2 * rows))?;
    let grid = rec.gpu().grid(groups(c, WG));
    let b = [bind(1, inp), bind(7, dout), bind(9, dweight), bind(10, dbias), bind(11, mean), bind(12, rstd)];
    rec.dispatch(&SHADER, "layernorm_backward_params", &[], p, &b, grid, Work::floats(2 * rows * c + 4 * c + 2 * rows))
}
