//! Matrix multiply for linear layers in the GPT-2 layout (`W [in, out]`), forward and backward.
//! Shaders: `matmul.wgsl` (register-tiled, vec4, no workgroup memory) and `matmul_tiled.wgsl`
//! (workgroup-shared tiles, any shape). The variant is chosen per adapter (`Gpu::matmul_variant`)
//! and falls back to the tiled kernel when a shape breaks the vec4 alignment.

use super::{as_matrix, bind, expect_len, groups};
use crate::error::{Result, ensure_shape};
use crate::gpu::{MatmulVariant, Recorder, Shader, Tensor};

pub const SHADER: Shader = Shader { name: "matmul", source: include_str!("../../shaders/matmul.wgsl") };
pub const TILED_SHADER: Shader = Shader { name: "matmul_tiled", source: include_str!("../../shaders/matmul_tiled.wgsl") };

const ACCUMULATE: u32 = 1;
const HAS_BIAS: u32 = 2;

/// Which operands are transposed: out = op(A)·op(B).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// A [M,K] · B [K,N] (forward: inp · W)
    NN,
    /// A [M,K] · B [N,K]ᵀ (dinp = dout · Wᵀ; logits = x · wteᵀ)
    NT,
    /// A [K,M]ᵀ · B [K,N] (dW = inpᵀ · dout)
    TN,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
}

/// out (+)= op(a)·op(b) (+ bias) with the adapter's preferred variant.
pub fn matmul(
    rec: &mut Recorder,
    out: &Tensor,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    layout: Layout,
    accumulate: bool,
) -> Result<()> {
    let variant = rec.gpu().matmul_variant;
    matmul_with_variant(rec, variant, out, a, b, bias, layout, accumulate)
}

/// (M, N, K) of out = op(a)·op(b), checked against the three tensors' shapes.
fn dims(out: &Tensor, a: &Tensor, b: &Tensor, layout: Layout) -> Result<(usize, usize, usize)> {
    let (ar, ac) = as_matrix(a);
    let (br, bc) = as_matrix(b);
    let (m, k, k2, n) = match layout {
        Layout::NN => (ar, ac, br, bc),
        Layout::NT => (ar, ac, bc, br),
        Layout::TN => (ac, ar, br, bc),
    };
    ensure_shape(k == k2, || format!("matmul {layout:?}: inner dimensions differ, a {:?} b {:?}", a.shape(), b.shape()))?;
    expect_len(out, m * n, &format!("matmul {layout:?} output for a {:?} b {:?}", a.shape(), b.shape()))?;
    Ok((m, n, k))
}

/// Whether the register-tiled kernel can take this shape (its vec4 axes must be multiples of 4).
pub fn register_tiled_fits(layout: Layout, m: usize, n: usize, k: usize) -> bool {
    match layout {
        Layout::NN => k % 4 == 0 && n % 4 == 0,
        Layout::NT => k % 4 == 0,
        Layout::TN => m % 4 == 0 && n % 4 == 0,
    }
}

/// As `matmul`, with the variant named (benches and tests compare them). A register-tiled
/// request on an unaligned shape runs the tiled kernel.
#[allow(clippy::too_many_arguments)]
pub fn matmul_with_variant(
    rec: &mut Recorder,
    variant: MatmulVariant,
    out: &Tensor,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    layout: Layout,
    accumulate: bool,
) -> Result<()> {
    let (m, n, k) = dims(out, a, b, layout)?;
    if let Some(bias) = bias {
        ensure_shape(layout == Layout::NN, || "matmul: a bias is only added in the forward (NN) layout".into())?;
        expect_len(bias, n, "matmul bias")?;
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let flags = if accumulate { ACCUMULATE } else { 0 } | if bias.is_some() { HAS_BIAS } else { 0 };
    let params = Params { m: m as u32, n: n as u32, k: k as u32, flags };
    // Kernels that read a bias binding get `a` when there is none (the flag keeps it unread).
    let bias = bias.unwrap_or(a);
    if variant == MatmulVariant::RegisterTiled && register_tiled_fits(layout, m, n, k) {
        let grid = [groups(n, 128) as u32, groups(m, 64) as u32, 1];
        let p = bytemuck::bytes_of(&params);
        match layout {
            Layout::NN => rec.dispatch(&SHADER, "matmul_nn", &[], p, &[bind(1, a), bind(2, b), bind(3, bias), bind(4, out)], grid),
            Layout::TN => rec.dispatch(&SHADER, "matmul_tn", &[], p, &[bind(1, a), bind(2, b), bind(3, bias), bind(4, out)], grid),
            Layout::NT => rec.dispatch(&SHADER, "matmul_nt", &[], p, &[bind(1, a), bind(2, b), bind(5, out)], grid),
        }
    } else {
        let constants = [
            ("TRANS_A", if layout == Layout::TN { 1.0 } else { 0.0 }),
            ("TRANS_B", if layout == Layout::NT { 1.0 } else { 0.0 }),
        ];
        let grid = [groups(n, 64) as u32, groups(m, 64) as u32, 1];
        rec.dispatch(
            &TILED_SHADER,
            "matmul_tiled",
            &constants,
            bytemuck::bytes_of(&params),
            &[bind(1, a), bind(2, b), bind(3, bias), bind(4, out)],
            grid,
        )
    }
}

/// Linear layer forward: out [N, OC] = inp [N, C] · w [C, OC] + bias [OC].
pub fn linear_forward(rec: &mut Recorder, out: &Tensor, inp: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<()> {
    matmul(rec, out, inp, w, bias, Layout::NN, false)
}

/// Linear layer backward, accumulating into existing gradients (llm.c's convention: gradient
/// buffers are zeroed once per step and every layer adds into them):
/// dinp += dout · wᵀ, dw += inpᵀ · dout, dbias += Σ_rows dout.
pub fn linear_backward(
    rec: &mut Recorder,
    dinp: &Tensor,
    dw: &Tensor,
    dbias: Option<&Tensor>,
    dout: &Tensor,
    inp: &Tensor,
    w: &Tensor,
) -> Result<()> {
    matmul(rec, dinp, dout, w, None, Layout::NT, true)?;
    matmul(rec, dw, inp, dout, None, Layout::TN, true)?;
    if let Some(dbias) = dbias {
        bias_backward(rec, dbias, dout)?;
    }
    Ok(())
}

/// dbias [N] += Σ_m dout [M, N].
pub fn bias_backward(rec: &mut Recorder, dbias: &Tensor, dout: &Tensor) -> Result<()> {
    let (m, n) = as_matrix(dout);
    expect_len(dbias, n, "bias gradient")?;
    let params = Params { m: m as u32, n: n as u32, k: 0, flags: ACCUMULATE };
    rec.dispatch(
        &TILED_SHADER,
        "bias_backward",
        &[],
        bytemuck::bytes_of(&params),
        &[bind(1, dout), bind(4, dbias)],
        [groups(n, 64) as u32, 1, 1],
    )
}
