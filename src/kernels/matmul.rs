//! Matrix multiply for linear layers in the GPT-2 layout (`W [in, out]`), forward and backward.
//! Shaders: `matmul.wgsl` (register-tiled, vec4, no workgroup memory), `matmul_tiled.wgsl`
//! (workgroup-shared tiles, any shape), `matmul_texture.wgsl` (operands packed into textures,
//! 16×16 register tiles) and `matmul_texture_subgroup.wgsl` (the same textures, 32×8 register
//! tiles with A's texels shared across a subgroup). The variant is chosen per adapter by
//! measurement (`variant`); a shape that breaks a variant's vec4 alignment runs on the next that
//! takes it.

use super::gelu::{gelu_backward, gelu_forward};
use super::{BROADCAST_LANES, as_matrix, bind, bind_texture, bind_u32, broadcast_lanes_fit, expect_len, flag, groups};
use crate::error::{Result, ensure_shape};
use crate::gpu::{
    Binding, DType, Gpu, MatmulVariant, Recorder, Shader, Tensor, Texture, Work, choose_by_measurement,
    matches_reference, seconds_per_call,
};
use std::sync::Arc;

pub const SHADER: Shader = Shader { name: "matmul", source: include_str!("../../shaders/matmul.wgsl"), includes: &[] };
pub const TILED_SHADER: Shader =
    Shader { name: "matmul_tiled", source: include_str!("../../shaders/matmul_tiled.wgsl"), includes: &[] };
pub const TEXTURE_SHADER: Shader =
    Shader { name: "matmul_texture", source: include_str!("../../shaders/matmul_texture.wgsl"), includes: &[] };
/// The texture kernel with A's rows shared across a subgroup (needs the SUBGROUP feature).
pub const TEXTURE_SUBGROUP_SHADER: Shader = Shader {
    name: "matmul_texture_subgroup",
    source: include_str!("../../shaders/matmul_texture_subgroup.wgsl"),
    includes: &[include_str!("../../shaders/matmul_texture.wgsl")],
};

/// K split into slices summed by a second pass, for products of few rows on GPUs.
pub const SPLIT_K_SHADER: Shader =
    Shader { name: "matmul_split_k", source: include_str!("../../shaders/matmul_split_k.wgsl"), includes: &[] };

/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 64;
/// Register-tiled matmul: invocations per workgroup along N (`WG_X` in the shader).
pub const WG_X: usize = 8;
/// … and along M (`WG_Y` in the shader).
pub const WG_Y: usize = 8;
/// Workgroup-tiled matmul: output rows and columns per workgroup (`TILE` in matmul_tiled.wgsl),
/// and its large-tile entry's (`LARGE_TILE`).
pub const TILE: usize = 64;
pub const LARGE_TILE: usize = 128;
/// Texture-operand matmul: output rows and columns per invocation.
pub const TEXTURE_TILE: usize = 16;
/// … and the tile rows one of its workgroups of 64 covers (`GROUP_ROWS` in the shader).
pub const TEXTURE_GROUP_ROWS: usize = 8;
/// The texture-subgroup kernel: the output rows and columns one subgroup (of
/// `kernels::BROADCAST_LANES`) computes, …
pub const SUBGROUP_BLOCK: (usize, usize) = (32, 64);
/// … and the subgroups of a workgroup of 64, stacked along M (`SUBGROUP_BLOCKS` in the shader).
pub const SUBGROUP_BLOCKS: usize = WG / BROADCAST_LANES;

/// The variant that runs when `variant` is asked for on this device: texture-subgroup where
/// the subgroups are not all of BROADCAST_LANES invocations runs as texture.
fn available(gpu: &Gpu, variant: MatmulVariant) -> MatmulVariant {
    match variant {
        MatmulVariant::TextureSubgroup if !broadcast_lanes_fit(gpu) => MatmulVariant::Texture,
        v => v,
    }
}

/// Tile columns per workgroup of the register-tiled and texture kernels, for a product of
/// `tile_columns` with at most `max` per workgroup: the columns shared evenly among the fewest
/// workgroups that hold them (12 as two workgroups of 6, not 8 and 4), so that each
/// workgroup's invocations, packed along its tile rows, fill whole SIMD vectors or warps even
/// where a product has few columns (the shaders' Launch notes).
pub fn group_columns(tile_columns: usize, max: usize) -> usize {
    tile_columns.div_ceil(tile_columns.div_ceil(max).max(1)).max(1)
}

/// GELU in a product's epilogue, with a second tensor laid out as the output (`post` in the
/// shaders).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeluStep {
    /// Also store gelu of each output in the tensor (c_fc's forward: the output keeps the
    /// pre-activation the backward needs).
    Forward,
    /// Store gelu'(pre)·(the product) instead of the product, the pre-activation read from the
    /// tensor (mlp.c_proj's input gradient taken back through c_fc's GELU: cuBLASLt's DGELU).
    Backward,
}

/// The override constants of a product's epilogue (ACCUMULATE into out, add HAS_BIAS, GELU
/// forward as HAS_GELU or backward as GELU_BACKWARD), which every matmul shader declares: fixed
/// per pipeline rather than a field of its params, because on lavapipe an untaken branch's
/// loads and stores still loop over the lanes (a quarter of a K = 128 product's time).
pub fn epilogue(accumulate: bool, bias: bool, gelu: Option<GeluStep>) -> [(&'static str, f64); 4] {
    [
        ("ACCUMULATE", flag(accumulate)),
        ("HAS_BIAS", flag(bias)),
        ("HAS_GELU", flag(gelu == Some(GeluStep::Forward))),
        ("GELU_BACKWARD", flag(gelu == Some(GeluStep::Backward))),
    ]
}

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
    out_stride: u32,
    out_col: u32,
    a_stride: u32,
    a_col: u32,
    group_columns: u32,
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
    let (m, n, _) = dims(out, a, b, layout)?;
    let variant = variant_for(rec.gpu(), layout, m, n)?;
    matmul_with_variant(rec, variant, out, a, b, bias, layout, accumulate)
}

/// The variant a `layout` product of `m` × `n` outputs runs on: `large_variant` for a product of
/// at least LARGE_OUTPUTS; `few_rows_variant` for an NN or NT product of fewer than FEW_ROWS
/// rows and `narrow_variant` for fewer than NARROW_ROWS (a decode step's, one row per
/// sequence); else `variant`. A weight gradient (TN) is never narrow: its rows are input
/// channels, however few, and its K a whole batch of tokens.
pub fn variant_for(gpu: &Arc<Gpu>, layout: Layout, m: usize, n: usize) -> Result<MatmulVariant> {
    match m {
        _ if m * n >= LARGE_OUTPUTS => large_variant(gpu),
        _ if layout == Layout::TN => variant(gpu),
        m if m < FEW_ROWS => few_rows_variant(gpu),
        m if m < NARROW_ROWS => narrow_variant(gpu),
        _ => variant(gpu),
    }
}

/// Whether B holds f16 values two to a u32 word (a generation's weights, `kernels::f16_weights`):
/// every kernel reads such a B and widens it to f32.
pub fn is_f16(b: &Tensor) -> bool {
    b.dtype() == DType::U32
}

/// (rows, columns) of B as a matrix of values: an f16 tensor's last axis counts words.
fn b_matrix(b: &Tensor) -> (usize, usize) {
    let (rows, cols) = as_matrix(b);
    if is_f16(b) { (rows, 2 * cols) } else { (rows, cols) }
}

/// Rows r0 .. r0 + rows of B, a matrix of `cols` values per row (f32, or f16 pairs).
fn b_rows(gpu: &Gpu, b: &Tensor, r0: usize, rows: usize, cols: usize) -> Result<Tensor> {
    let words = if is_f16(b) { cols / 2 } else { cols };
    b.view(gpu, r0 * words, &[rows, words])
}

/// (M, N, K) of out = op(a)·op(b), checked against the three tensors' shapes.
fn dims(out: &Tensor, a: &Tensor, b: &Tensor, layout: Layout) -> Result<(usize, usize, usize)> {
    let (ar, ac) = as_matrix(a);
    let (br, bc) = b_matrix(b);
    let (m, k, k2, n) = match layout {
        Layout::NN => (ar, ac, br, bc),
        Layout::NT => (ar, ac, bc, br),
        Layout::TN => (ac, ar, br, bc),
    };
    ensure_shape(k == k2, || {
        format!("matmul {layout:?}: inner dimensions differ, a {:?} b {:?}", a.shape(), b.shape())
    })?;
    expect_len(out, m * n, &format!("matmul {layout:?} output for a {:?} b {:?}", a.shape(), b.shape()))?;
    Ok((m, n, k))
}

/// Whether the register-tiled kernel can take this shape (its vec4 axes must be multiples of 4).
/// (A ragged vec4 axis of A is read as scalars: see `A_SCALAR` in matmul.wgsl.)
pub fn register_tiled_fits(layout: Layout, _m: usize, n: usize, k: usize) -> bool {
    match layout {
        Layout::NN | Layout::TN => n.is_multiple_of(4),
        Layout::NT => k.is_multiple_of(4),
    }
}

/// Whether the texture kernel takes this product: at least a 16-row block, and at least a vec4
/// of columns (a vector-shaped product, a head's, runs register-tiled read the other way round).
pub fn texture_fits(m: usize, n: usize) -> bool {
    m >= TEXTURE_TILE && n >= 4
}

/// Whether the texture kernel takes a product of (m, n) with this B: `texture_fits`, and B in
/// f32. (An f16 B, a generation's weights, would be widened back to f32 by packing at every
/// call, the traffic f16 saves: it runs register-tiled.)
fn texture_takes(m: usize, n: usize, b: &Tensor) -> bool {
    texture_fits(m, n) && !is_f16(b)
}

/// As `matmul`, with the variant named (benches and tests compare them). A texture request on
/// fewer than 16 rows or 4 columns runs register-tiled, and a register-tiled request on an
/// unaligned shape runs the tiled kernel.
///
/// A K longer than MAX_K runs in slices (NN, TN; NT products, whose K is a layer's width, never
/// reach it). When an operand is larger than the adapter's storage-binding limit (GPT-2's tied LM head
/// `wte` is 154 MB; lavapipe and WebGPU bind at most 128 MiB), the product is split into pieces
/// that bind contiguous slices: rows of A and out (NN, NT), rows of B written as column slices of
/// out (NT), or the shared K rows of A and B accumulated one after another (TN).
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
    // Products with a vector operand (the value and reward heads: one output column forward,
    // an inner dimension or an output column of 1 backward) miss the register-tiled kernels'
    // vec4 axes; the same product with the vector read the other way round ([n, 1] and [1, n]
    // are the same memory) fits them:
    //   NN, n = 1:           out[M,1] = a[M,K]·b[K,1]   as  outᵀ[1,M] = bᵀ[1,K]·a[M,K]ᵀ  (NT;
    //                        with a bias, into a scratch row that `unpad_columns` adds it to)
    //   NT, k = 1:           out = a[M,1]·b[N,1]ᵀ       as  a[M,1]·bᵀ[1,N]               (NN)
    //   TN, n = 1:           out[M,1] = a[K,M]ᵀ·b[K,1]   as  outᵀ[1,M] = bᵀ[1,K]·a[K,M]    (NN)
    // The texture kernel computes 16×16 blocks: a product with fewer rows (a decode step's) or
    // fewer than 4 columns runs register-tiled instead, as does one with an f16 B.
    let variant = available(rec.gpu(), variant);
    let variant =
        if variant.reads_textures() && !texture_takes(m, n, b) { MatmulVariant::RegisterTiled } else { variant };
    if variant == MatmulVariant::RegisterTiled && !register_tiled_fits(layout, m, n, k) {
        let rewritten = match layout {
            Layout::NN if n == 1 && bias.is_none() && register_tiled_fits(Layout::NT, 1, m, k) => {
                Some((out.reshape(&[1, m])?, b.reshape(&[1, k])?, a.clone(), Layout::NT))
            }
            Layout::NT if k == 1 && register_tiled_fits(Layout::NN, m, n, 1) => {
                Some((out.clone(), a.clone(), b.reshape(&[1, n])?, Layout::NN))
            }
            Layout::TN if n == 1 && register_tiled_fits(Layout::NN, 1, m, k) => {
                Some((out.reshape(&[1, m])?, b.reshape(&[1, k])?, a.clone(), Layout::NN))
            }
            _ => None,
        };
        if let Some((out, a, b, layout)) = rewritten {
            return matmul_with_variant(rec, variant, &out, &a, &b, None, layout, accumulate);
        }
        if layout == Layout::NN && n == 1 && register_tiled_fits(Layout::NT, 1, m, k) {
            let scratch = rec.gpu().tensor(&[1, m], DType::F32)?;
            matmul_with_variant(rec, variant, &scratch, &b.reshape(&[1, k])?, a, None, Layout::NT, false)?;
            return unpad_columns(rec, out, &scratch, bias, accumulate, (m, 1), 1, (1, 0));
        }
    }
    let gpu = rec.gpu().clone();
    let limit = gpu.limits.max_storage_buffer_binding_size as usize / 4; // in f32 elements
    let fits = |rows: usize, cols: usize| rows * cols <= limit;
    // Piece sizes are multiples of 64 rows, so every slice starts on a 256-byte boundary.
    let rows_fitting = |cols: usize| (limit / cols.max(1) / 64 * 64).max(64);
    // B's rows in words (an f16 B holds two values to a word).
    let b_words = |cols: usize| if is_f16(b) { cols / 2 } else { cols };
    let a_stride = a.shape().last().copied().unwrap_or(1);
    match layout {
        // Rows of A and out (each row of op(A) is a row of A).
        Layout::NN | Layout::NT if !fits(m, k) || !fits(m, n) => {
            let step = rows_fitting(k.max(n));
            cannot_split(step >= m, a, b, out, limit)?;
            for m0 in (0..m).step_by(step) {
                let mc = step.min(m - m0);
                let (a_rows, out_rows) = (a.view(&gpu, m0 * k, &[mc, k])?, out.view(&gpu, m0 * n, &[mc, n])?);
                matmul_with_variant(rec, variant, &out_rows, &a_rows, b, bias, layout, accumulate)?;
            }
            Ok(())
        }
        // Rows of B are columns of out: each piece writes a column slice of out.
        Layout::NT if !fits(n, b_words(k)) => {
            let step = rows_fitting(b_words(k));
            for n0 in (0..n).step_by(step) {
                let nc = step.min(n - n0);
                let piece = b_rows(&gpu, b, n0, nc, k)?;
                record(
                    rec,
                    variant,
                    out,
                    a,
                    &piece,
                    bias,
                    None,
                    layout,
                    accumulate,
                    (m, nc, k),
                    (n, n0),
                    (a_stride, 0),
                )?;
            }
            Ok(())
        }
        // Rows of B are the shared K: each piece reads a column slice of A and accumulates.
        Layout::NN if !fits(k, b_words(n)) || k > MAX_K => {
            let step = rows_fitting(b_words(n)).min(MAX_K);
            for k0 in (0..k).step_by(step) {
                let kc = step.min(k - k0);
                let piece = b_rows(&gpu, b, k0, kc, n)?;
                let bias = if k0 == 0 { bias } else { None };
                let acc = accumulate || k0 > 0;
                record(rec, variant, out, a, &piece, bias, None, layout, acc, (m, n, kc), (n, 0), (a_stride, k0))?;
            }
            Ok(())
        }
        // Rows of A and B are the shared K.
        Layout::TN if !fits(k, m) || !fits(k, b_words(n)) || k > MAX_K => {
            let step = rows_fitting(m.max(b_words(n))).min(MAX_K);
            cannot_split(step >= k, a, b, out, limit)?;
            for k0 in (0..k).step_by(step) {
                let kc = step.min(k - k0);
                let (a_piece, b_piece) = (a.view(&gpu, k0 * m, &[kc, m])?, b_rows(&gpu, b, k0, kc, n)?);
                matmul_with_variant(rec, variant, out, &a_piece, &b_piece, None, layout, accumulate || k0 > 0)?;
            }
            Ok(())
        }
        // Rows of out are columns of A: each piece reads a column slice of A.
        Layout::TN if !fits(m, n) => {
            let step = rows_fitting(n);
            for m0 in (0..m).step_by(step) {
                let mc = step.min(m - m0);
                let out_rows = out.view(&gpu, m0 * n, &[mc, n])?;
                record(
                    rec,
                    variant,
                    &out_rows,
                    a,
                    b,
                    None,
                    None,
                    layout,
                    accumulate,
                    (mc, n, k),
                    (n, 0),
                    (a_stride, m0),
                )?;
            }
            Ok(())
        }
        _ => record(rec, variant, out, a, b, bias, None, layout, accumulate, (m, n, k), (n, 0), (a_stride, 0)),
    }
}

/// The longest K one dispatch walks (see MAX_SERIAL_STEPS: the kernels' loops over K take up
/// to K/4 steps, register-tiled TN K, workgroup-tiled about 2.5 per element of K): a longer K
/// (the weight gradients of a batch of more than 16384 tokens, GPT-2's LM-head gradient over
/// its 50257-word vocabulary) runs as slices accumulated one after another.
pub const MAX_K: usize = super::MAX_SERIAL_STEPS;

/// The error for a product whose operands do not fit the binding limit even 64 rows at a time.
fn cannot_split(stuck: bool, a: &Tensor, b: &Tensor, out: &Tensor, limit: usize) -> Result<()> {
    ensure_shape(!stuck, || {
        format!(
            "matmul of {:?} and {:?} into {:?}: 64 rows of an operand exceed the adapter's storage-binding limit of {} floats",
            a.shape(),
            b.shape(),
            out.shape(),
            limit
        )
    })
}

/// The names of the variants, as `PPO_WGPU_MATMUL_NARROW` and the cache spell them: the
/// `matmul_narrow` and `matmul_few_rows` families'.
pub const VARIANTS: [(MatmulVariant, &str); 6] = [
    (MatmulVariant::RegisterTiled, "register-tiled"),
    (MatmulVariant::WorkgroupTiled, "workgroup-tiled"),
    (MatmulVariant::Texture, "texture"),
    (MatmulVariant::TextureSubgroup, "texture-subgroup"),
    (MatmulVariant::SplitK, "split-k"),
    (MatmulVariant::WorkgroupTiledLarge, "workgroup-tiled-128"),
];

/// The `matmul` and `matmul_large` families' variants (`PPO_WGPU_MATMUL`): all but split-K,
/// which takes products of at most SPLIT_K_MAX_ROWS rows and so none of those families'.
pub const BATCH_VARIANTS: [(MatmulVariant, &str); 5] =
    [VARIANTS[0], VARIANTS[1], VARIANTS[2], VARIANTS[3], VARIANTS[5]];

/// Products with fewer output rows than this (a decode step's, one row per sequence) have a
/// variant of their own: with few rows, what a variant costs besides its arithmetic (the
/// texture kernel packs B, as large as the product's other operand and output together) can
/// outweigh what it saves.
pub const NARROW_ROWS: usize = 128;

/// Products with fewer output rows than this (a decode step of fewer than 16 sequences) have a
/// third family, `matmul_few_rows`: on an H100 split-K ran GPT-2's decode products of 8 rows
/// 1.5–4× faster than the tiled kernel, while at 32 rows the measurement chose the tiled one.
/// The same bound splits `f16_weights::format`'s two families.
pub const FEW_ROWS: usize = TEXTURE_TILE;

/// Products of at least this many outputs (4096 × 4096: GPT-2's LM head and its weight gradient
/// over 1024 tokens and more, a larger model's MLP over a large batch) have a family of their
/// own on GPUs, `matmul_large`: on an H100 128×128 tiles ran 4096³ at 28.3 TFLOP/s against the
/// 64×64 kernel's 23.9, and GPT-2 small's products over 1024 tokens at about half its speed
/// (there their tiles leave most of its 132 SMs idle), so one choice for both leaves one of
/// them slower.
pub const LARGE_OUTPUTS: usize = 1 << 24;

/// The matmul variant this adapter runs for products of at least NARROW_ROWS rows: chosen by
/// measurement on first use and cached (see `gpu::variants`), or forced with
/// PPO_WGPU_MATMUL=NAME (one of BATCH_VARIANTS).
pub fn variant(gpu: &Arc<Gpu>) -> Result<MatmulVariant> {
    // Shapes like a small model's linear layers over a batch of tokens, and on a GPU also GPT-2
    // small's over 1024 tokens (c_attn forward, mlp.c_proj's input gradient, c_fc's weight
    // gradient): a small model's products fill a GPU with few workgroups, so a large tile's
    // gain shows only in the large products (a few hundred microseconds there; on a CPU adapter
    // seconds on the slower variants, and the models it runs are small).
    let mut shapes = vec![(Layout::NN, (256, 512, 128)), (Layout::NT, (256, 128, 512)), (Layout::TN, (128, 512, 256))];
    if gpu.info.device_type != wgpu::DeviceType::Cpu {
        shapes.extend([
            (Layout::NN, (1024, 2304, 768)),
            (Layout::NT, (1024, 768, 3072)),
            (Layout::TN, (768, 3072, 1024)),
        ]);
    }
    choose(gpu, "matmul", &BATCH_VARIANTS, &shapes)
}

/// The variant for products of at least LARGE_OUTPUTS outputs: on a GPU chosen the same way
/// (family `matmul_large`, forced with PPO_WGPU_MATMUL_LARGE=…) at three such products, NN, NT
/// and TN; on a CPU adapter the `matmul` family's choice, unmeasured (there one such product
/// takes a second on the fastest variant and half a minute on the slowest).
pub fn large_variant(gpu: &Arc<Gpu>) -> Result<MatmulVariant> {
    if gpu.info.device_type == wgpu::DeviceType::Cpu {
        return variant(gpu);
    }
    let shapes =
        [(Layout::NN, (4096, 4096, 1024)), (Layout::NT, (1024, 16384, 1024)), (Layout::TN, (16384, 1024, 1024))];
    choose(gpu, "matmul_large", &BATCH_VARIANTS, &shapes)
}

/// The variant for products of FEW_ROWS to NARROW_ROWS rows, chosen the same way (family
/// `matmul_narrow`, forced with PPO_WGPU_MATMUL_NARROW=…), measured at decode steps of 32
/// sequences.
pub fn narrow_variant(gpu: &Arc<Gpu>) -> Result<MatmulVariant> {
    choose(gpu, "matmul_narrow", &VARIANTS, &decode_shapes(gpu, 32))
}

/// The variant for products of fewer than FEW_ROWS rows, chosen the same way (family
/// `matmul_few_rows`, forced with PPO_WGPU_MATMUL_FEW_ROWS=…), measured at decode steps of 8
/// sequences.
pub fn few_rows_variant(gpu: &Arc<Gpu>) -> Result<MatmulVariant> {
    choose(gpu, "matmul_few_rows", &VARIANTS, &decode_shapes(gpu, 8))
}

/// The products of a decode step of `rows` sequences: a small model's block and LM head, and on
/// a GPU also GPT-2 small's c_attn, MLP projection and a slice of its LM head, in about the
/// proportions of its decode step (the blocks' products there hold twice the head's FLOPs; one
/// product's GFLOP/s can part the variants by 4×, NN against NT). A small model's products take
/// a few microseconds on a GPU on any variant, launch included, while GPT-2's decode steps are
/// where the variants part (7.8 ms on an H100 with the tiled kernel, against 0.2 ms to read the
/// weights once); on a CPU adapter one GPT-2 product takes tens of milliseconds on the slower
/// variants, and the models it runs are small.
fn decode_shapes(gpu: &Gpu, rows: usize) -> Vec<(Layout, (usize, usize, usize))> {
    let mut shapes =
        vec![(Layout::NN, (rows, 512, 128)), (Layout::NN, (rows, 128, 512)), (Layout::NT, (rows, 1024, 128))];
    if gpu.info.device_type != wgpu::DeviceType::Cpu {
        shapes.extend([
            (Layout::NN, (rows, 2304, 768)),
            (Layout::NN, (rows, 768, 3072)),
            (Layout::NT, (rows, 2048, 768)),
        ]);
    }
    shapes
}

fn choose(
    gpu: &Arc<Gpu>,
    family: &str,
    variants: &[(MatmulVariant, &str)],
    shapes: &[(Layout, (usize, usize, usize))],
) -> Result<MatmulVariant> {
    choose_by_measurement(gpu, family, variants, "GFLOP/s", |gpu, variant| measure_variant(gpu, variant, shapes))
}

/// One variant's GFLOP/s over `shapes` (about a second in all on a software adapter, far less
/// on a GPU), after a check against the CPU reference on ragged shapes (None if it fails).
fn measure_variant(
    gpu: &Arc<Gpu>,
    variant: MatmulVariant,
    shapes: &[(Layout, (usize, usize, usize))],
) -> Result<Option<f64>> {
    let few_rows = shapes.iter().all(|&(_, (m, _, _))| m <= SPLIT_K_MAX_ROWS);
    if available(gpu, variant) != variant || (variant == MatmulVariant::SplitK && !few_rows) {
        return Ok(None); // it would run as another variant: nothing of its own to measure
    }
    let mut rng = crate::rng::Rng::new(11);
    // Ragged shapes, and a decode step's few rows (the products split-K takes).
    let checks = [
        (Layout::NN, (37, 44, 29)),
        (Layout::NT, (33, 20, 52)),
        (Layout::TN, (24, 40, 17)),
        (Layout::NN, (9, 44, 70)),
        (Layout::NT, (9, 20, 70)),
    ];
    for (layout, (m, n, k)) in checks {
        let (a, b) = (rng.normals(m * k, 1.0), rng.normals(k * n, 1.0));
        let (sa, sb) = operand_shapes(layout, m, n, k);
        let f32s = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let (ta, tb, out) =
            (gpu.upload(&sa, &f32s(&a))?, gpu.upload(&sb, &f32s(&b))?, gpu.tensor(&[m, n], DType::F32)?);
        let mut rec = Recorder::new(gpu);
        matmul_with_variant(&mut rec, variant, &out, &ta, &tb, None, layout, false)?;
        rec.submit();
        let want = crate::reference::matmul(&a, &b, m, n, k, layout);
        let got = gpu.download(&out)?;
        if !matches_reference(&got, &want) {
            return Ok(None);
        }
    }
    let (mut flops, mut seconds) = (0.0, 0.0);
    for &(layout, (m, n, k)) in shapes {
        let (sa, sb) = operand_shapes(layout, m, n, k);
        let (ta, tb) = (gpu.upload(&sa, &vec![0.5; m * k])?, gpu.upload(&sb, &vec![0.25; k * n])?);
        let out = gpu.tensor(&[m, n], DType::F32)?;
        seconds += seconds_per_call(gpu, |rec| matmul_with_variant(rec, variant, &out, &ta, &tb, None, layout, false))?;
        flops += (2 * m * n * k) as f64;
    }
    Ok(Some(flops / seconds / 1e9))
}

/// The shapes of A and B for `layout` and (m, n, k).
fn operand_shapes(layout: Layout, m: usize, n: usize, k: usize) -> ([usize; 2], [usize; 2]) {
    match layout {
        Layout::NN => ([m, k], [k, n]),
        Layout::NT => ([m, k], [n, k]),
        Layout::TN => ([k, m], [k, n]),
    }
}

/// Fewest rows of A for which an NT product on the CPU adapter transposes B and runs NN.
pub const TRANSPOSE_MIN_ROWS: usize = 64;

/// Records one matmul dispatch: op(a)·op(b) of shape (m, n, k) into columns out_col.. of rows
/// of `out_stride` elements, reading A from column a_col of rows of `a_stride` elements; with
/// `gelu`, GELU in the epilogue with its tensor laid out as out (in one piece, N a multiple of
/// 4, no accumulation; forward: NN with a bias, see `linear_forward_gelu`; backward: NT without,
/// see `linear_backward_gelu`).
#[allow(clippy::too_many_arguments)]
fn record(
    rec: &mut Recorder,
    variant: MatmulVariant,
    out: &Tensor,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    gelu: Option<(GeluStep, &Tensor)>,
    layout: Layout,
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    (out_stride, out_col): (usize, usize),
    (a_stride, a_col): (usize, usize),
) -> Result<()> {
    // A variant asked for by name (a test's, a bench's, PPO_WGPU_MATMUL's) may not run here.
    let variant = match available(rec.gpu(), variant) {
        MatmulVariant::SplitK if m <= SPLIT_K_MAX_ROWS => {
            let place = ((out_stride, out_col), (a_stride, a_col));
            return record_split_k(rec, out, a, b, bias, gelu, layout, accumulate, (m, n, k), place);
        }
        MatmulVariant::SplitK => MatmulVariant::WorkgroupTiled,
        v => v,
    };
    if variant.reads_textures() {
        let vec4_out = n.is_multiple_of(4) && out_stride.is_multiple_of(4) && out_col.is_multiple_of(4);
        let method = if texture_takes(m, n, b) { pack_method(rec.gpu())? } else { PackMethod::Shader };
        if texture_takes(m, n, b) && vec4_out {
            let place = ((out_stride, out_col), (a_stride, a_col));
            return record_texture(
                rec,
                variant,
                method,
                out,
                a,
                b,
                bias,
                gelu,
                None,
                layout,
                accumulate,
                (m, n, k),
                place,
            );
        }
        if texture_takes(m, n, b) {
            ensure_shape(gelu.is_none(), || format!("the GELU epilogue needs whole vec4 rows, not {n} columns"))?;
            // The kernel stores whole vec4s: the product goes to rows of N rounded up to 4, and
            // from there into out (adding the bias, or accumulating).
            let padded = n.next_multiple_of(4);
            let scratch = rec.gpu().tensor(&[m, padded], DType::F32)?;
            let place = ((padded, 0), (a_stride, a_col));
            record_texture(rec, variant, method, &scratch, a, b, None, None, None, layout, false, (m, n, k), place)?;
            return unpad_columns(rec, out, &scratch, bias, accumulate, (m, n), padded, (out_stride, out_col));
        }
        let variant = MatmulVariant::RegisterTiled;
        return record(
            rec,
            variant,
            out,
            a,
            b,
            bias,
            gelu,
            layout,
            accumulate,
            (m, n, k),
            (out_stride, out_col),
            (a_stride, a_col),
        );
    }
    let epilogue = epilogue(accumulate, bias.is_some(), gelu.map(|(step, _)| step));
    // 2 flops per multiply-add; A and B read once (an f16 B is half the words), the output
    // written (and read to accumulate, and written again or read through GELU).
    let stores = 1 + accumulate as usize + gelu.is_some() as usize;
    let b_words = if is_f16(b) { k * n / 2 } else { k * n };
    let work = Work::flops(2 * m * n * k, m * k + b_words + m * n * stores + n * bias.is_some() as usize);
    // B at its format's binding, and a stand-in of the other type (never read) at the other's.
    let b_f16 = is_f16(b);
    let (b_f32_binding, b_f16_binding) =
        if b_f16 { (a.clone(), b.clone()) } else { (b.clone(), b.bitcast(DType::U32)) };
    let b_f16_constant = ("B_F16", flag(b_f16));
    // Kernels with a GELU epilogue bind its tensor as `post`, or a `Recorder::stand_in` when
    // there is none (the flags keep it untouched).
    let stand_in = rec.stand_in(0)?;
    let post = gelu.map_or(&stand_in, |(_, t)| t);
    let (out_stride, out_col, a_stride, a_col) = (out_stride as u32, out_col as u32, a_stride as u32, a_col as u32);
    // Each invocation computes 8 rows × 16 columns of the output; a workgroup 8 tile rows of
    // group_columns(…) tile columns.
    let tile_columns = groups(n, 16);
    let columns = group_columns(tile_columns, WG_X);
    let params = Params {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        out_stride,
        out_col,
        a_stride,
        a_col,
        group_columns: columns as u32,
    };
    let p = bytemuck::bytes_of(&params);
    // Kernels that read a bias binding get `a` when there is none (the flag keeps it unread).
    let bias = bias.unwrap_or(a);
    let vec4_out = out_stride.is_multiple_of(4) && out_col.is_multiple_of(4);
    let vec4_a = a_stride.is_multiple_of(4) && a_col.is_multiple_of(4);
    let register_tiled = variant == MatmulVariant::RegisterTiled && register_tiled_fits(layout, m, n, k);
    let grid = [groups(tile_columns, columns) as u32, groups(m, WG_Y * 8) as u32, 1];
    // On the CPU adapter the NN kernel runs at about twice the NT kernel's rate (its B loads are
    // contiguous vec4s across invocations, NT's are 16 strided rows): when the shape allows NN,
    // transpose B once into a scratch tensor and run that instead (dinp = dout·Wᵀ in every
    // linear layer's backward; the transpose costs a few percent of the product). Not for a
    // few rows of A (a decode step's LM head, x·wteᵀ over B rows): there the product is bound by
    // reading B once, and the transpose would move B three times. (A fixed threshold, until
    // the speed issue's measured choice of variants replaces it.)
    if register_tiled
        && layout == Layout::NT
        && !b_f16
        && vec4_a
        && vec4_out
        && n.is_multiple_of(4)
        && (m >= TRANSPOSE_MIN_ROWS || gelu.is_some())
    {
        let gpu = rec.gpu().clone();
        let b_t = gpu.tensor(&[k, n], DType::F32)?;
        let tp = Params { m: n as u32, n: k as u32, ..bytemuck::Zeroable::zeroed() };
        let transposed = [bind(1, b), bind(4, &b_t)];
        rec.dispatch(
            &TILED_SHADER,
            "transpose",
            &[],
            bytemuck::bytes_of(&tp),
            &transposed,
            gpu.grid(groups(n * k, WG)),
            Work::floats(2 * n * k),
        )?;
        let b_t_words = b_t.bitcast(DType::U32); // the f16 binding's stand-in
        let bindings = nn_tn_bindings(a, &b_t, bias, out, post, &b_t_words);
        let constants = [&[("A_SCALAR", 0.0), ("B_F16", 0.0)][..], &epilogue].concat();
        return rec.dispatch(&SHADER, "matmul_nn", &constants, p, &bindings, grid, work);
    }
    if register_tiled && layout == Layout::NT && vec4_a {
        ensure_shape(gelu.is_none(), || {
            format!("the GELU epilogue of an NT product of {n} columns needs B transposed")
        })?;
        let bindings = [bind(1, a), bind(2, &b_f32_binding), bind(5, out), bind_u32(8, &b_f16_binding)];
        let constants = [&[b_f16_constant][..], &epilogue].concat();
        rec.dispatch(&SHADER, "matmul_nt", &constants, p, &bindings, grid, work)
    } else if register_tiled && layout != Layout::NT && vec4_out {
        // A is read as vec4s when its rows start on vec4 boundaries and its vec4 axis (K for
        // NN, M for TN) is whole; else four scalars at a time.
        let axis = if layout == Layout::NN { k } else { m };
        let scalar_a = !(vec4_a && axis.is_multiple_of(4));
        let entry = if layout == Layout::NN { "matmul_nn" } else { "matmul_tn" };
        let bindings = nn_tn_bindings(a, &b_f32_binding, bias, out, post, &b_f16_binding);
        let constants = [&[("A_SCALAR", flag(scalar_a)), b_f16_constant][..], &epilogue].concat();
        rec.dispatch(&SHADER, entry, &constants, p, &bindings, grid, work)
    } else {
        let constants = [
            ("TRANS_A", flag(layout == Layout::TN)),
            ("TRANS_B", flag(layout == Layout::NT)),
            b_f16_constant,
            epilogue[0],
            epilogue[1],
            epilogue[2],
            epilogue[3],
        ];
        let (entry, tile) = match variant {
            MatmulVariant::WorkgroupTiledLarge => ("matmul_tiled_large", LARGE_TILE),
            _ => ("matmul_tiled", TILE),
        };
        let grid = [groups(n, tile) as u32, groups(m, tile) as u32, 1];
        let bindings = [
            bind(1, a),
            bind(2, &b_f32_binding),
            bind(3, bias),
            bind(4, out),
            bind(5, post),
            bind_u32(6, &b_f16_binding),
        ];
        rec.dispatch(&TILED_SHADER, entry, &constants, p, &bindings, grid, work)
    }
}

/// Split-K (`matmul_split_k.wgsl`): output rows per invocation (`ROWS` in the shader), and
/// invocations per workgroup (`WG`).
pub const SPLIT_K_ROWS: usize = 8;
pub const SPLIT_K_WG: usize = 64;
/// The most output rows a split-K product takes (a decode step of up to 32 sequences); a
/// product of more runs workgroup-tiled: its slices' partial outputs grow with the rows, and
/// with many rows the tiled kernels have work enough for a GPU anyway.
pub const SPLIT_K_MAX_ROWS: usize = 32;
/// Elements of K per slice at least, and slices at most.
const SPLIT_K_MIN_LEN: usize = 64;
const SPLIT_K_MAX_SPLITS: usize = 32;
/// Floats of the slices' partial outputs at most (64 MB, within WebGPU's default binding size;
/// an adapter that binds less lowers it to its limit).
pub const SPLIT_K_MAX_PARTIAL: usize = 1 << 24;

/// (slices, elements of K per slice) of a split-K product of (m, n, k): slices of at least
/// SPLIT_K_MIN_LEN, at most SPLIT_K_MAX_SPLITS of them, their partial outputs within
/// `max_partial` floats where more than one slice is needed to, and none empty; each a multiple
/// of 4 long but the last, so that every slice starts on a vec4 of A's and B's rows.
pub fn split_k_slices(m: usize, n: usize, k: usize, max_partial: usize) -> (usize, usize) {
    let splits = k.div_ceil(SPLIT_K_MIN_LEN).clamp(1, SPLIT_K_MAX_SPLITS).min((max_partial / (m * n).max(1)).max(1));
    let len = k.div_ceil(splits).next_multiple_of(4);
    (k.div_ceil(len).max(1), len)
}

/// Bytes of the partial outputs a product of (m, n, k) on `variant` needs: none but on split-K
/// for at most SPLIT_K_MAX_ROWS rows. A recorder's split-K products share one scratch, as
/// large as the largest of them needs.
pub fn split_k_scratch_bytes(variant: MatmulVariant, m: usize, n: usize, k: usize) -> usize {
    if variant != MatmulVariant::SplitK || m > SPLIT_K_MAX_ROWS {
        return 0;
    }
    4 * split_k_slices(m, n, k, SPLIT_K_MAX_PARTIAL).0 * m * n
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SplitKParams {
    m: u32,
    n: u32,
    k: u32,
    out_stride: u32,
    out_col: u32,
    a_stride: u32,
    a_col: u32,
    splits: u32,
    split_len: u32,
}

/// The recorder's scratch slot (`Recorder::scratch`) of split-K's partial sums.
const SCRATCH_SPLIT_K: usize = 0;

/// Records a product on the split-K kernel (arguments as `record`): the slices of K into the
/// recorder's [splits, M, N] scratch, then their sum with the epilogue into out.
#[allow(clippy::too_many_arguments)]
fn record_split_k(
    rec: &mut Recorder,
    out: &Tensor,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    gelu: Option<(GeluStep, &Tensor)>,
    layout: Layout,
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    ((out_stride, out_col), (a_stride, a_col)): ((usize, usize), (usize, usize)),
) -> Result<()> {
    let gpu = rec.gpu().clone();
    let max_partial = SPLIT_K_MAX_PARTIAL.min(gpu.limits.max_storage_buffer_binding_size as usize / 4);
    let (splits, split_len) = split_k_slices(m, n, k, max_partial);
    let partial = rec.scratch(SCRATCH_SPLIT_K, splits * m * n)?;
    let p = SplitKParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        out_stride: out_stride as u32,
        out_col: out_col as u32,
        a_stride: a_stride as u32,
        a_col: a_col as u32,
        splits: splits as u32,
        split_len: split_len as u32,
    };
    let p = bytemuck::bytes_of(&p);
    // B at its format's binding, a stand-in of the other type (never read) at the other's.
    let b_f16 = is_f16(b);
    let (b_f32_binding, b_f16_binding) =
        if b_f16 { (rec.stand_in(0)?, b.clone()) } else { (b.clone(), rec.stand_in(0)?.bitcast(DType::U32)) };
    let transposes = [("TRANS_A", flag(layout == Layout::TN)), ("TRANS_B", flag(layout == Layout::NT))];
    // Four elements of K a step where A's rows and B's hold them as whole vec4s.
    let vec4 = layout != Layout::TN && [k, a_stride, a_col].iter().all(|x| x.is_multiple_of(4));
    let constants = [&transposes[..], &[("B_F16", flag(b_f16)), ("VEC4", flag(vec4))]].concat();
    // A and B again as vec4s, or stand-ins (a binding of vec4s takes at least 16 bytes).
    let (a4, b4) = if vec4 { (a.clone(), b_f32_binding.clone()) } else { (rec.stand_in(1)?, rec.stand_in(2)?) };
    let slices = [
        bind(1, a),
        bind(2, &b_f32_binding),
        bind_u32(6, &b_f16_binding),
        bind(7, &partial),
        bind(9, &a4),
        bind(10, &b4),
    ];
    let grid = [groups(n, SPLIT_K_WG) as u32, splits as u32, groups(m, SPLIT_K_ROWS) as u32];
    let b_words = if b_f16 { k * n / 2 } else { k * n };
    let work = Work::flops(2 * m * n * k, m * k + b_words + splits * m * n);
    rec.dispatch(&SPLIT_K_SHADER, "matmul_split_k", &constants, p, &slices, grid, work)?;

    let epilogue = epilogue(accumulate, bias.is_some(), gelu.map(|(step, _)| step));
    let (bias_stand_in, post_stand_in) = (rec.stand_in(1)?, rec.stand_in(2)?);
    let bias = bias.unwrap_or(&bias_stand_in);
    let post = gelu.map_or(&post_stand_in, |(_, t)| t);
    let sum = [bind(3, bias), bind(4, out), bind(5, post), bind(8, &partial)];
    let stores = 1 + accumulate as usize + gelu.is_some() as usize;
    let work = Work::floats(splits * m * n + m * n * stores);
    rec.dispatch(&SPLIT_K_SHADER, "split_k_reduce", &epilogue, p, &sum, gpu.grid(groups(m * n, SPLIT_K_WG)), work)
}

/// The bindings of matmul.wgsl's matmul_nn and matmul_tn: A (as vec4s and as scalars), B at
/// its f32 and f16 bindings (one of them a stand-in), the bias, the output and GELU's output.
fn nn_tn_bindings<'a>(
    a: &'a Tensor,
    b_f32: &'a Tensor,
    bias: &'a Tensor,
    out: &'a Tensor,
    post: &'a Tensor,
    b_f16: &'a Tensor,
) -> [Binding<'a>; 7] {
    [bind(1, a), bind(2, b_f32), bind(3, bias), bind(4, out), bind(6, a), bind(7, post), bind_u32(8, b_f16)]
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PackParams {
    rows: u32,
    cols: u32,
    stride: u32,
    offset: u32,
    transposed: u32,
    width: u32,
    height: u32,
    pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct TextureParams {
    m: u32,
    n: u32,
    k4: u32,
    out_stride4: u32,
    out_offset4: u32,
    bias_offset4: u32,
    group_columns: u32,
}

/// Scratch-texture slots (`Gpu::scratch_texture`): the two operands of one product. (The
/// attention kernels' textures use slots 2 and 3.)
const SLOT_A: u32 = 0;
const SLOT_B: u32 = 1;

/// (width, height) in texels of the textures op(A) and op(B) of an (M, N, K) product are packed
/// into: At is ceil(K/4) wide and M rounded up to whole 16-row tiles high; Bt is N/4 rounded up
/// to whole 4-texel tiles wide and K rounded up to 4 high. (Padding is zeros, so the kernel
/// reads whole tiles without bounds checks.)
fn texture_sizes(m: usize, n: usize, k: usize) -> [(usize, usize); 2] {
    [(k.div_ceil(4), m.next_multiple_of(TEXTURE_TILE)), (4 * n.div_ceil(TEXTURE_TILE), 4 * k.div_ceil(4))]
}

/// Whether the texture kernel of `variant` reads the A of a `layout` product as stored (the
/// texture-subgroup kernel's TN products: A_STORED in matmul_texture_subgroup.wgsl), rather
/// than packed transposed.
fn a_stored(layout: Layout, variant: MatmulVariant) -> bool {
    layout == Layout::TN && variant == MatmulVariant::TextureSubgroup
}

/// Whether it reads the B of a `layout` product as stored (the texture-subgroup kernel's NT
/// products, B_STORED: a layer's weights in dinp = dout·Wᵀ, the tied embedding in the LM
/// head), rather than packed transposed.
fn b_stored(layout: Layout, variant: MatmulVariant) -> bool {
    layout == Layout::NT && variant == MatmulVariant::TextureSubgroup
}

/// Bytes of the scratch the texture kernels keep after running these products (layout, (M, N,
/// K), the variant it runs on; those on other variants keep none): the textures (one per
/// distinct size and operand, as `Gpu::scratch_texture` keeps them; an operand beyond the
/// adapter's texture size runs in smaller blocks), and a pooled output of whole vec4 rows for
/// each distinct product whose N is not a multiple of 4.
pub fn texture_scratch_bytes(products: &[(Layout, (usize, usize, usize), MatmulVariant)]) -> usize {
    let (mut kept, mut padded) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    let on_textures =
        products.iter().filter(|&&(_, (m, n, _), variant)| variant.reads_textures() && texture_fits(m, n));
    for &(layout, (m, n, k), variant) in on_textures {
        let [a, b] = texture_sizes(m, n, k);
        let a = if a_stored(layout, variant) { texture_sizes(0, m, k)[1] } else { a };
        let b = if b_stored(layout, variant) { texture_sizes(n, 0, k)[0] } else { b };
        kept.extend([(SLOT_A, a), (SLOT_B, b)]);
        if !n.is_multiple_of(4) {
            padded.insert(m * n.next_multiple_of(4));
        }
    }
    kept.iter().map(|(_, (width, height))| 16 * width * height).sum::<usize>()
        + padded.iter().map(|e| 4 * e).sum::<usize>()
}

/// out (+)= op(a)·op(b) (+ bias) on the texture kernel with the pack method named (tests compare
/// them), for a product it takes in one piece: at least 16 rows, N a multiple of 4 and B in f32,
/// operands within the binding and texture limits.
#[allow(clippy::too_many_arguments)]
pub fn texture_matmul_with_pack(
    rec: &mut Recorder,
    method: PackMethod,
    out: &Tensor,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    layout: Layout,
    accumulate: bool,
) -> Result<()> {
    let (m, n, k) = dims(out, a, b, layout)?;
    ensure_shape(texture_takes(m, n, b) && n.is_multiple_of(4), || {
        format!("texture matmul of {m}×{n}: needs at least {TEXTURE_TILE} rows, a multiple of 4 columns and an f32 B")
    })?;
    let a_stride = a.shape().last().copied().unwrap_or(1);
    let place = ((n, 0), (a_stride, 0));
    let variant = MatmulVariant::Texture;
    record_texture(rec, variant, method, out, a, b, bias, None, None, layout, accumulate, (m, n, k), place)
}

/// Records a product on a texture kernel (arguments as `record`; `variant`: Texture or
/// TextureSubgroup): packs op(A) and op(B) into textures (by `method` where a block allows a
/// copy), transposing where the layout asks, then multiplies them. Where an operand would exceed the adapter's texture size the product runs
/// in blocks: rows of out, columns of out, and slices of K accumulated one after another. With
/// `b_column_sums` ([N]) the kernels also add op(B)'s column sums to it (a weight gradient's
/// bias gradient, as the product: stored, or accumulated with `accumulate`).
#[allow(clippy::too_many_arguments)]
fn record_texture(
    rec: &mut Recorder,
    variant: MatmulVariant,
    method: PackMethod,
    out: &Tensor,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    gelu: Option<(GeluStep, &Tensor)>,
    b_column_sums: Option<&Tensor>,
    layout: Layout,
    accumulate: bool,
    (m, n, k): (usize, usize, usize),
    ((out_stride, out_col), (a_stride, a_col)): ((usize, usize), (usize, usize)),
) -> Result<()> {
    let gpu = rec.gpu().clone();
    let max = gpu.limits.max_texture_dimension_2d as usize;
    // The largest blocks whose textures fit (see texture_sizes; B as stored has a texel row per
    // column of the product).
    let b_stored = b_stored(layout, variant);
    let n_step = if b_stored { max / TEXTURE_TILE * TEXTURE_TILE } else { max / 4 * TEXTURE_TILE };
    let (m_step, k_step) = (max / TEXTURE_TILE * TEXTURE_TILE, max / 4 * 4);
    // GELU applies to the finished sum: the epilogue needs the product in one block.
    ensure_shape(gelu.is_none() || (m <= m_step && k <= k_step && n <= n_step), || {
        format!("the GELU epilogue needs a {m}×{n}×{k} product in one block of the adapter's texture size")
    })?;
    for m0 in (0..m).step_by(m_step) {
        let mc = m_step.min(m - m0);
        for k0 in (0..k).step_by(k_step) {
            let kc = k_step.min(k - k0);
            // op(A)[m0.., k0..]: rows of A as stored (NN, NT), or its columns (TN), packed
            // transposed; the texture-subgroup kernel reads a TN product's A as stored instead
            // (A_STORED), a block of K rows sized like a Bt of N = M.
            let a_stored = a_stored(layout, variant);
            let offset = match layout {
                Layout::TN => k0 * a_stride + a_col + m0,
                Layout::NN | Layout::NT => m0 * a_stride + a_col + k0,
            };
            let (a_block, (a_width, a_height)) = if a_stored {
                let block = Block { rows: kc, cols: mc, stride: a_stride, offset, transposed: false };
                (block, texture_sizes(0, mc, kc)[1])
            } else {
                let block = Block { rows: mc, cols: kc, stride: a_stride, offset, transposed: layout == Layout::TN };
                (block, texture_sizes(mc, 0, kc)[0])
            };
            let a_tex = pack(rec, method, SLOT_A, a, a_block, a_width, a_height)?;
            for n0 in (0..n).step_by(n_step) {
                let nc = n_step.min(n - n0);
                // op(B)[k0.., n0..]: B [K, N] as stored (NN, TN), or B [N, K] transposed (NT);
                // with B_STORED, an NT product's B [N, K] as stored, sized like an At of M = N.
                let (b_block, (b_width, b_height)) = match layout {
                    Layout::NT if b_stored => (
                        Block { rows: nc, cols: kc, stride: k, offset: n0 * k + k0, transposed: false },
                        texture_sizes(nc, 0, kc)[0],
                    ),
                    Layout::NT => (
                        Block { rows: kc, cols: nc, stride: k, offset: n0 * k + k0, transposed: true },
                        texture_sizes(0, nc, kc)[1],
                    ),
                    Layout::NN | Layout::TN => (
                        Block { rows: kc, cols: nc, stride: n, offset: k0 * n + n0, transposed: false },
                        texture_sizes(0, nc, kc)[1],
                    ),
                };
                let b_tex = pack(rec, method, SLOT_B, b, b_block, b_width, b_height)?;
                let with_bias = bias.is_some() && k0 == 0;
                let gelu_step = gelu.map(|(step, _)| step);
                // Column sums from the first block of rows only (the kernel's first rows).
                let sums = if m0 == 0 { b_column_sums } else { None };
                let accumulated = accumulate || k0 > 0;
                let (tile_columns, tile_rows) = (groups(nc, TEXTURE_TILE), groups(mc, TEXTURE_TILE));
                let group_columns = group_columns(tile_columns, WG / TEXTURE_GROUP_ROWS);
                let params = TextureParams {
                    m: mc as u32,
                    n: nc.next_multiple_of(4) as u32, // whole vec4s: out's rows have room (see record)
                    k4: kc.div_ceil(4) as u32,
                    out_stride4: (out_stride / 4) as u32,
                    out_offset4: ((m0 * out_stride + out_col + n0) / 4) as u32,
                    bias_offset4: (n0 / 4) as u32,
                    group_columns: group_columns as u32,
                };
                // Kernels that read a bias binding get `a` when there is none, and the GELU and
                // column-sum bindings a `Recorder::stand_in` each (the flags keep them untouched).
                let (post_stand_in, sums_stand_in) = (rec.stand_in(0)?, rec.stand_in(1)?);
                let bindings = [
                    bind_texture(3, &a_tex),
                    bind_texture(4, &b_tex),
                    bind(5, bias.unwrap_or(a)),
                    bind(6, out),
                    bind(11, gelu.map_or(&post_stand_in, |(_, t)| t)),
                    bind(12, sums.unwrap_or(&sums_stand_in)),
                ];
                let (shader, entry, grid) = if variant == MatmulVariant::TextureSubgroup {
                    let (block_rows, block_columns) = SUBGROUP_BLOCK;
                    let grid = [groups(nc, block_columns), groups(mc, block_rows * SUBGROUP_BLOCKS), 1];
                    (&TEXTURE_SUBGROUP_SHADER, "matmul_texture_subgroup", grid.map(|g| g as u32))
                } else {
                    let grid = [groups(tile_columns, group_columns), groups(tile_rows, TEXTURE_GROUP_ROWS), 1];
                    (&TEXTURE_SHADER, "matmul_texture", grid.map(|g| g as u32))
                };
                let stores = 1 + accumulated as usize + gelu.is_some() as usize;
                let sums_words = if sums.is_some() { nc * (1 + accumulated as usize) } else { 0 };
                let work = Work::flops(2 * mc * nc * kc, mc * kc + kc * nc + mc * nc * stores + sums_words);
                let epilogue = epilogue(accumulated, with_bias, gelu_step);
                let stored: &[(&str, f64)] = if variant == MatmulVariant::TextureSubgroup {
                    &[("A_STORED", flag(a_stored)), ("B_STORED", flag(b_stored))]
                } else {
                    &[]
                };
                let sum_columns = [("SUM_B_COLUMNS", flag(sums.is_some()))];
                let constants = [stored, &epilogue, &sum_columns].concat();
                rec.dispatch(shader, entry, &constants, bytemuck::bytes_of(&params), &bindings, grid, work)?;
            }
        }
    }
    Ok(())
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct UnpadParams {
    m: u32,
    n: u32,
    src_stride: u32,
    out_stride: u32,
    out_col: u32,
}

/// out (+)= src (+ bias) for the (m, n) product held in rows of `src_stride` elements of `src`
/// (N rounded up to 4 after the texture kernel, 1 for a head's single column), into columns
/// out_col.. of rows of `out_stride` elements.
#[allow(clippy::too_many_arguments)]
fn unpad_columns(
    rec: &mut Recorder,
    out: &Tensor,
    src: &Tensor,
    bias: Option<&Tensor>,
    accumulate: bool,
    (m, n): (usize, usize),
    src_stride: usize,
    (out_stride, out_col): (usize, usize),
) -> Result<()> {
    let params = UnpadParams {
        m: m as u32,
        n: n as u32,
        src_stride: src_stride as u32,
        out_stride: out_stride as u32,
        out_col: out_col as u32,
    };
    // Kernels that read a bias binding get `src` when there is none (the flag keeps it unread).
    let bindings = [bind(8, src), bind(9, out), bind(5, bias.unwrap_or(src))];
    let work = Work::floats(m * n * (2 + accumulate as usize) + n * bias.is_some() as usize);
    let grid = rec.gpu().grid(groups(m * n, WG));
    let epilogue = epilogue(accumulate, bias.is_some(), None);
    rec.dispatch(&TEXTURE_SHADER, "unpad_columns", &epilogue, bytemuck::bytes_of(&params), &bindings, grid, work)
}

/// A block of a row-major matrix in a storage buffer: `rows` × `cols` starting at element
/// `offset`, rows `stride` elements apart; `transposed`: the block is that of the transpose
/// (element (r, c) at offset + c·stride + r).
#[derive(Clone, Copy)]
pub(crate) struct Block {
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
    pub offset: usize,
    pub transposed: bool,
}

/// How an operand gets into its texture when a plain copy could do it: a block that fills the
/// texture exactly, not transposed, its rows at the copy alignment (64 floats apart, starting
/// on a texel). Chosen by measurement (`pack_method`); any other block runs the pack shader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackMethod {
    /// The pack_rows kernel: shader loads and texture stores.
    Shader,
    /// `copy_buffer_to_texture`: on lavapipe a memcpy, 5–10× the shader's rate; on a GPU a
    /// copy engine that may be slower than a shader.
    Copy,
}

/// The names of the pack methods, as `PPO_WGPU_TEXTURE_PACK` and the cache spell them.
pub const PACK_METHODS: [(PackMethod, &str); 2] = [(PackMethod::Shader, "shader"), (PackMethod::Copy, "copy")];

/// The pack method this adapter uses where a copy could do the job: chosen by measurement on
/// first use of the texture kernels and cached (family `texture_pack`, forced with
/// PPO_WGPU_TEXTURE_PACK=shader|copy).
pub fn pack_method(gpu: &Arc<Gpu>) -> Result<PackMethod> {
    choose_by_measurement(gpu, "texture_pack", &PACK_METHODS, "GB/s", measure_pack_method)
}

/// A pack method's GB/s (bytes read plus written) packing a small model's and GPT-2's
/// activations, after a texture product whose operands it packed matched the CPU reference
/// (None if it did not).
fn measure_pack_method(gpu: &Arc<Gpu>, method: PackMethod) -> Result<Option<f64>> {
    let mut rng = crate::rng::Rng::new(17);
    let (m, n, k) = (48, 64, 128); // every block exact and aligned: both operands take `method`
    let (a, b) = (rng.normals(m * k, 1.0), rng.normals(k * n, 1.0));
    let f32s = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
    let (ta, tb) = (gpu.upload(&[m, k], &f32s(&a))?, gpu.upload(&[k, n], &f32s(&b))?);
    let out = gpu.tensor(&[m, n], DType::F32)?;
    let mut rec = Recorder::new(gpu);
    let place = ((n, 0), (k, 0));
    record_texture(
        &mut rec,
        MatmulVariant::Texture,
        method,
        &out,
        &ta,
        &tb,
        None,
        None,
        None,
        Layout::NN,
        false,
        (m, n, k),
        place,
    )?;
    rec.submit();
    if !matches_reference(&gpu.download(&out)?, &crate::reference::matmul(&a, &b, m, n, k, Layout::NN)) {
        return Ok(None);
    }
    let (mut bytes, mut seconds) = (0.0, 0.0);
    for (rows, cols) in [(2048, 512), (256, 3072)] {
        let src = gpu.upload(&[rows, cols], &vec![0.5; rows * cols])?;
        let block = Block { rows, cols, stride: cols, offset: 0, transposed: false };
        seconds += seconds_per_call(gpu, |rec| pack(rec, method, SLOT_A, &src, block, cols / 4, rows).map(|_| ()))?;
        bytes += (8 * rows * cols) as f64;
    }
    Ok(Some(bytes / seconds / 1e9))
}

/// Packs `block` of `src` into the scratch texture `slot` of `width` × `height` texels (zeros
/// past the block): with a copy where `method` says so and the block allows one (see
/// PackMethod), else with the pack shader.
pub(crate) fn pack(
    rec: &mut Recorder,
    method: PackMethod,
    slot: u32,
    src: &Tensor,
    block: Block,
    width: usize,
    height: usize,
) -> Result<Texture> {
    let gpu = rec.gpu().clone();
    let texture = gpu.scratch_texture(slot, width, height)?;
    let exact = !block.transposed && block.cols == 4 * width && block.rows == height;
    let first = src.byte_offset() as usize / 4 + block.offset;
    if method == PackMethod::Copy && exact && block.stride.is_multiple_of(64) && first.is_multiple_of(4) {
        rec.copy_to_texture(src, block.offset, block.stride, &texture);
        return Ok(texture);
    }
    let params = PackParams {
        rows: block.rows as u32,
        cols: block.cols as u32,
        stride: block.stride as u32,
        offset: block.offset as u32,
        transposed: block.transposed as u32,
        width: width as u32,
        height: height as u32,
        pad: 0,
    };
    // Rows of the source start on vec4 boundaries: read them as vec4s.
    let vec4 = block.stride.is_multiple_of(4) && block.offset.is_multiple_of(4);
    let (entry, invocations) =
        if block.transposed { ("pack_columns", width * height / 4) } else { ("pack_rows", width * height) };
    rec.dispatch(
        &TEXTURE_SHADER,
        entry,
        &[("SRC_VEC4", flag(vec4))],
        bytemuck::bytes_of(&params),
        &[bind(1, src), bind_texture(2, &texture), bind(7, src)],
        gpu.grid(groups(invocations, WG)),
        Work::floats(block.rows * block.cols + 4 * width * height),
    )?;
    Ok(texture)
}

/// Linear layer forward: out [N, OC] = inp [N, C] · w [C, OC] + bias [OC].
pub fn linear_forward(rec: &mut Recorder, out: &Tensor, inp: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<()> {
    matmul(rec, out, inp, w, bias, Layout::NN, false)
}

/// How c_fc's forward applies GELU to its output: chosen per adapter by measurement
/// (`gelu_epilogue`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeluEpilogue {
    /// The product, then the GELU kernel over its output: a second pass over B·T·4C values.
    Separate,
    /// The product's epilogue stores the pre-activation and its GELU together.
    Fused,
}

/// The names of the GELU epilogues, as `PPO_WGPU_BIAS_GELU` and the cache spell them.
pub const GELU_EPILOGUES: [(GeluEpilogue, &str); 2] =
    [(GeluEpilogue::Separate, "separate"), (GeluEpilogue::Fused, "fused")];

/// The GELU epilogue this adapter uses for a c_fc forward of `rows` rows: chosen by measurement
/// on first use and cached, as the matmul variant is, separately for products of fewer than
/// NARROW_ROWS rows (a decode step's): family `bias_gelu` (a batch of tokens, where the pass
/// GELU saves is large and the extra store costs as much) or `bias_gelu_narrow` (a decode step,
/// where the GELU kernel is mostly a dispatch), forced with PPO_WGPU_BIAS_GELU=separate|fused
/// and PPO_WGPU_BIAS_GELU_NARROW=….
pub fn gelu_epilogue(gpu: &Arc<Gpu>, rows: usize) -> Result<GeluEpilogue> {
    // A small model's c_fc over a decode step of 32 sequences (as family matmul_narrow's), or
    // over a batch of tokens.
    let (family, shape) =
        if rows < NARROW_ROWS { ("bias_gelu_narrow", (32, 512, 128)) } else { ("bias_gelu", (1024, 512, 128)) };
    choose_by_measurement(gpu, family, &GELU_EPILOGUES, "GFLOP/s", |gpu, epilogue| {
        measure_gelu_epilogue(gpu, epilogue, shape)
    })
}

/// An epilogue's GFLOP/s (the product's FLOPs over the time of product and GELU) at a c_fc
/// shape (M, N, K) on the matmul variant it runs on, after a check against the CPU reference on
/// a ragged shape.
fn measure_gelu_epilogue(gpu: &Arc<Gpu>, epilogue: GeluEpilogue, shape: (usize, usize, usize)) -> Result<Option<f64>> {
    let mut rng = crate::rng::Rng::new(19);
    let (mut flops, mut seconds) = (0.0, 0.0);
    for (m, n, k) in [(37, 44, 29), shape] {
        let (x, w, bias) = (rng.normals(m * k, 1.0), rng.normals(k * n, 0.3), rng.normals(n, 1.0));
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let (tx, tw, tb) =
            (gpu.upload(&[m, k], &f32s(&x))?, gpu.upload(&[k, n], &f32s(&w))?, gpu.upload(&[n], &f32s(&bias))?);
        let (pre, post) = (gpu.tensor(&[m, n], DType::F32)?, gpu.tensor(&[m, n], DType::F32)?);
        let variant = variant_for(gpu, Layout::NN, m, n)?;
        let call = |rec: &mut Recorder| linear_forward_gelu_with(rec, variant, epilogue, &pre, &post, &tx, &tw, &tb);
        if m == 37 {
            let mut rec = Recorder::new(gpu);
            call(&mut rec)?;
            rec.submit();
            let want = crate::reference::linear_forward(&x, &w, Some(&bias), m, k, n);
            let ok = matches_reference(&gpu.download(&pre)?, &want)
                && matches_reference(&gpu.download(&post)?, &crate::reference::gelu_forward(&want));
            if !ok {
                return Ok(None);
            }
            continue;
        }
        seconds += seconds_per_call(gpu, call)?;
        flops += (2 * m * n * k) as f64;
    }
    Ok(Some(flops / seconds / 1e9))
}

/// c_fc's forward: pre [N, OC] = inp [N, C] · w [C, OC] + bias [OC] (kept for the backward) and
/// post = gelu(pre), with the adapter's matmul variant and GELU epilogue.
pub fn linear_forward_gelu(
    rec: &mut Recorder,
    pre: &Tensor,
    post: &Tensor,
    inp: &Tensor,
    w: &Tensor,
    bias: &Tensor,
) -> Result<()> {
    let (m, n) = (as_matrix(inp).0, b_matrix(w).1);
    let (variant, epilogue) = (variant_for(rec.gpu(), Layout::NN, m, n)?, gelu_epilogue(rec.gpu(), m)?);
    linear_forward_gelu_with(rec, variant, epilogue, pre, post, inp, w, bias)
}

/// As `linear_forward_gelu` with the matmul variant and the epilogue named (tests and benches
/// compare them). A fused request for a product that does not run as one dispatch (see
/// `one_dispatch`) runs separately: GELU applies to the finished sum.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward_gelu_with(
    rec: &mut Recorder,
    variant: MatmulVariant,
    epilogue: GeluEpilogue,
    pre: &Tensor,
    post: &Tensor,
    inp: &Tensor,
    w: &Tensor,
    bias: &Tensor,
) -> Result<()> {
    let (m, n, k) = dims(pre, inp, w, Layout::NN)?;
    expect_len(post, m * n, "GELU epilogue output")?;
    expect_len(bias, n, "matmul bias")?;
    if epilogue == GeluEpilogue::Fused && one_dispatch(rec.gpu(), variant, Layout::NN, m, n, k) {
        let gelu = Some((GeluStep::Forward, post));
        return record(rec, variant, pre, inp, w, Some(bias), gelu, Layout::NN, false, (m, n, k), (n, 0), (k, 0));
    }
    matmul_with_variant(rec, variant, pre, inp, w, Some(bias), Layout::NN, false)?;
    gelu_forward(rec, post, pre)
}

/// Whether `record` computes a `layout` product of (m, n, k) in one dispatch on `variant`'s
/// kernel: N whole vec4s, K within MAX_K, every operand within one binding and, on the texture
/// kernel, within the adapter's texture size (else the product runs in slices).
fn one_dispatch(gpu: &Gpu, variant: MatmulVariant, layout: Layout, m: usize, n: usize, k: usize) -> bool {
    let variant = available(gpu, variant);
    let limit = gpu.limits.max_storage_buffer_binding_size as usize / 4;
    let max = gpu.limits.max_texture_dimension_2d as usize;
    let [a_size, b_size] = texture_sizes(m, n, k);
    let b_size = if b_stored(layout, variant) { texture_sizes(n, 0, k)[0] } else { b_size };
    let textures_fit = [a_size, b_size].iter().all(|&(width, height)| width <= max && height <= max);
    let texture_ok = !variant.reads_textures() || !texture_fits(m, n) || textures_fit;
    m > 0 && n.is_multiple_of(4) && k <= MAX_K && m * k <= limit && m * n <= limit && k * n <= limit && texture_ok
}

/// Linear layer backward, accumulating into the parameter gradients (llm.c's convention: they
/// are zeroed once per step and every layer adds into them):
/// dinp (+)= dout · wᵀ, dw += inpᵀ · dout, dbias += Σ_rows dout.
/// The input gradient is added to what `dinp` holds with `accumulate_dinp` (a tensor several
/// branches contribute to), else written: a scratch needs no zeroing first, and the product no
/// load per output element.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    rec: &mut Recorder,
    dinp: &Tensor,
    accumulate_dinp: bool,
    dw: &Tensor,
    dbias: Option<&Tensor>,
    dout: &Tensor,
    inp: &Tensor,
    w: &Tensor,
) -> Result<()> {
    linear_backward_with_variant(rec, None, dinp, accumulate_dinp, dw, dbias, dout, inp, w)
}

/// As `linear_backward`, on the variant named (tests compare them), or with `None` each product
/// on the adapter's choice for its rows.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_with_variant(
    rec: &mut Recorder,
    variant: Option<MatmulVariant>,
    dinp: &Tensor,
    accumulate_dinp: bool,
    dw: &Tensor,
    dbias: Option<&Tensor>,
    dout: &Tensor,
    inp: &Tensor,
    w: &Tensor,
) -> Result<()> {
    let (rows, cols) = as_matrix(inp);
    let dinp_variant = pick(rec.gpu(), variant, Layout::NT, rows, cols)?;
    matmul_with_variant(rec, dinp_variant, dinp, dout, w, None, Layout::NT, accumulate_dinp)?;
    weight_gradients(rec, variant, dw, dbias, dout, inp)
}

/// mlp.c_proj's backward taken back through c_fc's GELU (inp = gelu(pre)): as `linear_backward`
/// with the input gradient written, except that it is the GELU input's,
/// dpre = gelu'(pre) ⊙ (dout · wᵀ). Where the product runs in one dispatch GELU's gradient is
/// its epilogue (GELU_BACKWARD: cuBLASLt's DGELU, llm.c's fused GELU backward), which saves a
/// pass over B·T·4C values; else the GELU kernel runs after it.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_gelu(
    rec: &mut Recorder,
    dpre: &Tensor,
    dw: &Tensor,
    dbias: Option<&Tensor>,
    dout: &Tensor,
    inp: &Tensor,
    w: &Tensor,
    pre: &Tensor,
) -> Result<()> {
    linear_backward_gelu_with_variant(rec, None, dpre, dw, dbias, dout, inp, w, pre)
}

/// As `linear_backward_gelu`, on the variant named (tests compare them), or with `None` each
/// product on the adapter's choice for its rows.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_gelu_with_variant(
    rec: &mut Recorder,
    variant: Option<MatmulVariant>,
    dpre: &Tensor,
    dw: &Tensor,
    dbias: Option<&Tensor>,
    dout: &Tensor,
    inp: &Tensor,
    w: &Tensor,
    pre: &Tensor,
) -> Result<()> {
    let (m, n, k) = dims(dpre, dout, w, Layout::NT)?;
    expect_len(pre, m * n, "GELU pre-activation")?;
    expect_len(inp, m * n, "GELU output")?;
    let gpu = rec.gpu().clone();
    let dinp_variant = available(&gpu, pick(&gpu, variant, Layout::NT, m, n)?);
    if one_dispatch(&gpu, dinp_variant, Layout::NT, m, n, k) {
        let gelu = Some((GeluStep::Backward, pre));
        record(rec, dinp_variant, dpre, dout, w, None, gelu, Layout::NT, false, (m, n, k), (n, 0), (k, 0))?;
    } else {
        let dinp = gpu.tensor(&[m, n], DType::F32)?;
        matmul_with_variant(rec, dinp_variant, &dinp, dout, w, None, Layout::NT, false)?;
        gelu_backward(rec, dpre, pre, &dinp)?;
    }
    weight_gradients(rec, variant, dw, dbias, dout, inp)
}

/// `variant`, or with `None` the adapter's choice for a `layout` product of `m` × `n` outputs.
fn pick(gpu: &Arc<Gpu>, variant: Option<MatmulVariant>, layout: Layout, m: usize, n: usize) -> Result<MatmulVariant> {
    variant.map_or_else(|| variant_for(gpu, layout, m, n), Ok)
}

/// A linear layer's parameter gradients: dw += inpᵀ · dout and dbias += Σ_rows dout, in one
/// dispatch where the texture kernels take them (`weight_and_bias_gradients_on_textures`).
fn weight_gradients(
    rec: &mut Recorder,
    variant: Option<MatmulVariant>,
    dw: &Tensor,
    dbias: Option<&Tensor>,
    dout: &Tensor,
    inp: &Tensor,
) -> Result<()> {
    let (dw_rows, dw_cols) = as_matrix(dw);
    let dw_variant = pick(rec.gpu(), variant, Layout::TN, dw_rows, dw_cols)?;
    if let Some(dbias) = dbias
        && weight_and_bias_gradients_on_textures(rec, dw_variant, dw, dbias, inp, dout)?
    {
        return Ok(());
    }
    matmul_with_variant(rec, dw_variant, dw, inp, dout, None, Layout::TN, true)?;
    if let Some(dbias) = dbias {
        bias_backward(rec, dbias, dout)?;
    }
    Ok(())
}

/// dw += inpᵀ · dout and dbias += Σ_rows dout in one dispatch, where the weight gradient runs on
/// a texture kernel in one piece: the kernel sums dout's columns (its B) from the texels it
/// reads anyway, as cuBLASLt's BGRADB epilogue does, instead of reading dout again in
/// `bias_backward` (on lavapipe a column sum with workgroup barriers, 15 % of the tiny model's
/// non-matmul time). Records nothing and returns false elsewhere.
fn weight_and_bias_gradients_on_textures(
    rec: &mut Recorder,
    variant: MatmulVariant,
    dw: &Tensor,
    dbias: &Tensor,
    inp: &Tensor,
    dout: &Tensor,
) -> Result<bool> {
    let (m, n, k) = dims(dw, inp, dout, Layout::TN)?;
    expect_len(dbias, n, "bias gradient")?;
    let gpu = rec.gpu().clone();
    let variant = available(&gpu, variant);
    let limit = gpu.limits.max_storage_buffer_binding_size as usize / 4;
    let in_one_piece = k * m.max(n) <= limit && m * n <= limit && k <= MAX_K;
    if !(variant.reads_textures() && texture_takes(m, n, dout) && n.is_multiple_of(4) && in_one_piece) {
        return Ok(false);
    }
    let method = pack_method(&gpu)?;
    let place = ((n, 0), (m, 0));
    record_texture(rec, variant, method, dw, inp, dout, None, None, Some(dbias), Layout::TN, true, (m, n, k), place)?;
    Ok(true)
}

/// Columns per workgroup of `bias_backward` (`COLS` in the shader).
pub const BIAS_COLS: usize = 16;

/// dbias [N] += Σ_m dout [M, N].
/// (Each workgroup sums BIAS_COLS columns over the rows: more than MAX_SERIAL_STEPS rows run as
/// slices.)
pub fn bias_backward(rec: &mut Recorder, dbias: &Tensor, dout: &Tensor) -> Result<()> {
    let (rows, n) = as_matrix(dout);
    expect_len(dbias, n, "bias gradient")?;
    let gpu = rec.gpu().clone();
    for (r0, m) in super::serial_ranges(rows) {
        let dout = dout.view(&gpu, r0 * n, &[m, n])?;
        let params = Params {
            m: m as u32,
            n: n as u32,
            k: 0,
            out_stride: n as u32,
            out_col: 0,
            a_stride: n as u32,
            a_col: 0,
            group_columns: 0,
        };
        rec.dispatch(
            &TILED_SHADER,
            "bias_backward",
            &epilogue(true, false, None),
            bytemuck::bytes_of(&params),
            &[bind(1, &dout), bind(4, dbias)],
            [groups(n, BIAS_COLS) as u32, 1, 1],
            Work::flops(m * n, m * n + 2 * n),
        )?;
    }
    Ok(())
}
