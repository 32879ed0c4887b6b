//! A window of columns of a row-major matrix: gathered into a matrix of its own, and scattered
//! back with zeros around it. The model's heads run on a window of each sequence's positions
//! (`model::HeadWindow`). Shader: `window.wgsl`.

use super::{as_matrix, bind, groups};
use crate::error::{Result, ensure_shape};
use crate::gpu::{Binding, Recorder, Shader, Tensor, Work};

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

/// The entry point's name suffix, params and bindings for `p`: the vec4 form where the window's
/// columns come in whole vec4s (its params then count vec4s).
fn form<'a>(p: Params, src: &'a Tensor, dst: &'a Tensor) -> (&'static str, Params, [Binding<'a>; 2]) {
    if [p.width, p.stride, p.first].iter().all(|x| x % 4 == 0) {
        let p4 = Params { width: p.width / 4, stride: p.stride / 4, first: p.first / 4, ..p };
        ("4", p4, [bind(3, src), bind(4, dst)])
    } else {
        ("", p, [bind(1, src), bind(2, dst)])
    }
}

/// dst [R, W] = columns first .. first + W of src [R, S].
pub fn window_gather(rec: &mut Recorder, dst: &Tensor, src: &Tensor, first: usize) -> Result<()> {
    let n = dst.len();
    let (suffix, p, bindings) = form(params(dst, src, first)?, src, dst);
    if n == 0 {
        return Ok(());
    }
    let grid = rec.gpu().grid(groups((p.rows * p.width) as usize, WG));
    let entry = format!("window_gather{suffix}");
    rec.dispatch(&SHADER, &entry, &[], bytemuck::bytes_of(&p), &bindings, grid, Work::floats(2 * n))
}

/// dst [R, S] = src [R, W] at columns first .. first + W, 0 in the other columns.
pub fn window_scatter(rec: &mut Recorder, dst: &Tensor, src: &Tensor, first: usize) -> Result<()> {
    let (suffix, p, bindings) = form(params(src, dst, first)?, src, dst);
    if src.is_empty() {
        rec.zero(dst);
        return Ok(());
    }
    let grid = rec.gpu().grid(groups((p.rows * p.stride) as usize, WG));
    let work = Work::floats(src.len() + dst.len());
    rec.dispatch(&SHADER, &format!("window_scatter{suffix}"), &[], bytemuck::bytes_of(&p), &bindings, grid, work)
}
