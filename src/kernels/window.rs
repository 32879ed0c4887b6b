//! A window of columns of a row-major matrix: gathered into a matrix of its own, and scattered
//! back with zeros around it. The model's heads run on a window of each sequence's positions
//! (`model::HeadWindow`). Shader: `window.wgsl`.

use super::{as_matrix, bind, groups};
use crate::error::{Result, ensure_shape};
use crate::gpu::{Recorder, Shader, Tensor, Work};

pub const SHADER: Shader = Shader { name: "window", source: include_str!("../../shaders/window.wgsl"), includes: &[] };

/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    width: u32,
    stride: u32,
    first: u32,
}

/// Checks that `window` [R, W] is a window of `whole` [R, S] starting at column `first`.
fn params(window: &Tensor, whole: &Tensor, first: usize) -> Result<Params> {
    let ((rows, width), (whole_rows, stride)) = (as_matrix(window), as_matrix(whole));
    ensure_shape(rows == whole_rows && first + width <= stride, || {
        format!("column window: {:?} is not columns {first}..{} of {:?}", window.shape(), first + width, whole.shape())
    })?;
    Ok(Params { rows: rows as u32, width: width as u32, stride: stride as u32, first: first as u32 })
}

/// dst [R, W] = columns first .. first + W of src [R, S].
pub fn window_gather(rec: &mut Recorder, dst: &Tensor, src: &Tensor, first: usize) -> Result<()> {
    let p = params(dst, src, first)?;
    let n = dst.len();
    if n == 0 {
        return Ok(());
    }
    let grid = rec.gpu().grid(groups(n, WG));
    rec.dispatch(
        &SHADER,
        "window_gather",
        &[],
        bytemuck::bytes_of(&p),
        &[bind(1, src), bind(2, dst)],
        grid,
        Work::floats(2 * n),
    )
}

/// dst [R, S] = src [R, W] at columns first .. first + W, 0 in the other columns.
pub fn window_scatter(rec: &mut Recorder, dst: &Tensor, src: &Tensor, first: usize) -> Result<()> {
    let p = params(src, dst, first)?;
    if src.is_empty() {
        rec.zero(dst);
        return Ok(());
    }
    let grid = rec.gpu().grid(groups(dst.len(), WG));
    let work = Work::floats(src.len() + dst.len());
    rec.dispatch(&SHADER, "window_scatter", &[], bytemuck::bytes_of(&p), &[bind(1, src), bind(2, dst)], grid, work)
}
