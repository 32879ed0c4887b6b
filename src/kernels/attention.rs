//! Causal multi-head attention with a key padding mask, forward and backward.
//! Shaders: `attention.wgsl` and `attention_subgroup.wgsl`. Variants chosen per adapter by
//! measurement (`variant`): an invocation per query (CPU adapters), reading from the buffers or
//! from textures, or sharing each step's rows across a subgroup; or FlashAttention's blocking (a
//! workgroup per block of 64 queries, the keys staged in workgroup memory).

use super::matmul::{Block, PackMethod, pack, pack_method};
use super::{bind, bind_texture, bind_u32, broadcast_lanes_fit, expect_len, flag, groups};
use crate::error::{Result, ensure_shape};
use crate::gpu::{
    Gpu, Recorder, Shader, Tensor, Texture, Work, choose_by_measurement, matches_reference, seconds_per_call,
};
use std::sync::Arc;

pub const SHADER: Shader =
    Shader { name: "attention", source: include_str!("../../shaders/attention.wgsl"), includes: &[] };

/// The per-query entry points with each step's rows shared across a subgroup (needs the
/// SUBGROUP feature).
pub const SUBGROUP_SHADER: Shader = Shader {
    name: "attention_subgroup",
    source: include_str!("../../shaders/attention_subgroup.wgsl"),
    includes: &[include_str!("../../shaders/attention.wgsl")],
};

/// The head dimensions the subgroup entry points take.
pub const SUBGROUP_HEAD_DIMS: [usize; 3] = [16, 32, 64];

/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 64;

/// Largest head dimension the kernels hold in registers.
pub const MAX_HEAD_DIM: usize = 128;

/// The blocked variant: keys (queries) staged in workgroup memory per tile (`TILE_ROWS`).
pub const TILE_ROWS: usize = 8;

/// How the attention rows are spread over invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionVariant {
    /// One invocation per query (per key for dk/dv), reading every key from memory itself: no
    /// barriers (CPU adapters).
    InvocationPerQuery,
    /// A workgroup per block of 64 queries (keys), the keys (queries) staged in workgroup memory
    /// tile by tile, so each is read once per block (GPUs).
    Blocked,
    /// As InvocationPerQuery, with qkv and dout packed into textures first and read with
    /// `textureLoad` (software adapters whose storage-buffer loads are slow).
    Texture,
    /// As Texture, the 8 invocations of a subgroup (8 consecutive queries) fetching each step's
    /// key and value together and handing them round with `subgroupBroadcast` (software
    /// adapters whose texel fetches cost more than the arithmetic; each (b, h) takes T rounded
    /// up to 8 invocations). Where subgroups are not all of 8 invocations, or the head
    /// dimension is not 16, 32 or 64, it runs as Texture.
    TextureSubgroup,
}

/// The names of the variants, as `PPO_WGPU_ATTENTION` and the cache spell them.
pub const VARIANTS: [(AttentionVariant, &str); 4] = [
    (AttentionVariant::InvocationPerQuery, "invocation-per-query"),
    (AttentionVariant::Blocked, "blocked"),
    (AttentionVariant::Texture, "texture"),
    (AttentionVariant::TextureSubgroup, "texture-subgroup"),
];

/// The variant that runs `shape` when `variant` is asked for: texture-subgroup runs as texture
/// where its subgroups or head dimension do not fit (see AttentionVariant::TextureSubgroup).
fn available(gpu: &Gpu, variant: AttentionVariant, shape: AttentionShape) -> AttentionVariant {
    let fits = broadcast_lanes_fit(gpu) && SUBGROUP_HEAD_DIMS.contains(&(shape.c / shape.n_head.max(1)));
    match variant {
        AttentionVariant::TextureSubgroup if !fits => AttentionVariant::Texture,
        v => v,
    }
}

/// The variant this adapter runs: chosen by measurement on first use and cached (see
/// `gpu::variants`), or forced with
/// PPO_WGPU_ATTENTION=invocation-per-query|blocked|texture|texture-subgroup.
pub fn variant(gpu: &Arc<Gpu>) -> Result<AttentionVariant> {
    choose_by_measurement(gpu, "attention", &VARIANTS, "GFLOP/s", measure_variant)
}

/// A variant's GFLOP/s over a forward and a backward at the tiny model's and GPT-2's head
/// shapes, after a check against the CPU reference with padding (None if it fails).
fn measure_variant(gpu: &Arc<Gpu>, variant: AttentionVariant) -> Result<Option<f64>> {
    if variant == AttentionVariant::TextureSubgroup && !broadcast_lanes_fit(gpu) {
        return Ok(None); // it would run as texture: nothing of its own to measure
    }
    let mut rng = crate::rng::Rng::new(14);
    let (mut flops, mut seconds) = (0.0, 0.0);
    let f32s = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
    // Checked (against the CPU reference) at two head dimensions and ragged T; timed on the
    // rest.
    let checked = |shape: AttentionShape| shape.t == 37 || shape.t == 21;
    let shapes = [
        AttentionShape { b: 2, t: 37, c: 32, n_head: 2 },
        AttentionShape { b: 2, t: 21, c: 64, n_head: 2 },
        AttentionShape { b: 8, t: 64, c: 128, n_head: 4 },
        AttentionShape { b: 1, t: 256, c: 768, n_head: 12 },
    ];
    for shape in shapes {
        let AttentionShape { b, t, c, n_head } = shape;
        let (qkv, dout) = (rng.normals(b * t * 3 * c, 1.0), rng.normals(b * t * c, 1.0));
        // Left padding on the first row: its first quarter is masked.
        let mask: Vec<u32> = (0..b * t).map(|i| (i >= t / 4) as u32).collect();
        let (t_qkv, t_mask, t_dout) = (
            gpu.upload(&[b, t, 3 * c], &f32s(&qkv))?,
            gpu.upload_u32(&[b, t], &mask)?,
            gpu.upload(&[b, t, c], &f32s(&dout))?,
        );
        let f32_tensor = |shape: &[usize]| gpu.tensor(shape, crate::gpu::DType::F32);
        let (out, lse, delta, dqkv) = (
            f32_tensor(&[b, t, c])?,
            f32_tensor(&[b, n_head, t])?,
            f32_tensor(&[b, n_head, t])?,
            f32_tensor(&[b, t, 3 * c])?,
        );
        let step = |rec: &mut Recorder| -> Result<()> {
            forward_with_variant(rec, variant, &out, &lse, &t_qkv, &t_mask, shape)?;
            backward_with_variant(rec, variant, &dqkv, &delta, &t_dout, &t_qkv, &out, &lse, &t_mask, shape)
        };
        if checked(shape) {
            let mut rec = Recorder::new(gpu);
            step(&mut rec)?;
            rec.submit();
            let (want_out, _) = crate::reference::attention_forward(&qkv, &mask, b, t, c, n_head);
            let want_dqkv = crate::reference::attention_backward(&dout, &qkv, &mask, b, t, c, n_head);
            if !matches_reference(&gpu.download(&out)?, &want_out)
                || !matches_reference(&gpu.download(&dqkv)?, &want_dqkv)
            {
                return Ok(None);
            }
            continue;
        }
        seconds += seconds_per_call(gpu, step)?;
        flops += 3.5 * shape.forward_work().flops; // the forward, and the backward as 2.5 times it (as `cargo bench` counts)
    }
    Ok(Some(flops / seconds / 1e9))
}

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
    let variant = variant(rec.gpu())?;
    forward_with_variant(rec, variant, out, lse, qkv, mask, shape)
}

/// The shader of the variant's entry points, their suffix and its grid.
fn launch(gpu: &Gpu, variant: AttentionVariant, shape: AttentionShape) -> (&'static Shader, &'static str, [u32; 3]) {
    let per_query = gpu.grid(groups(shape.rows(), WG));
    match variant {
        AttentionVariant::InvocationPerQuery | AttentionVariant::Texture => (&SHADER, "", per_query),
        AttentionVariant::TextureSubgroup => {
            let padded = shape.b * shape.n_head * shape.t.next_multiple_of(8);
            (&SUBGROUP_SHADER, "_sg", gpu.grid(groups(padded, WG)))
        }
        AttentionVariant::Blocked => (&SHADER, "_blocked", gpu.grid(shape.b * shape.n_head * groups(shape.t, WG))),
    }
}

/// Scratch-texture slots of the texture variant (`Gpu::scratch_texture`; the matmul uses 0, 1):
/// qkv, then dout.
const SLOT_QKV: u32 = 2;

/// The textures a per-query entry point binds at 11, 12, …, and whether it reads through them
/// (TEXTURE_LOADS): with the texture variant, `operands` (tensor, row width) packed into
/// textures of width/4 texels and one row per token; otherwise, or when an operand exceeds the
/// adapter's texture size, 1×1 stand-ins that stay unread (the entry points bind them either
/// way). None for the blocked entry points, which bind none.
fn per_query_textures(
    rec: &mut Recorder,
    variant: AttentionVariant,
    operands: &[(&Tensor, usize)],
) -> Result<Option<(bool, Vec<Texture>)>> {
    if variant == AttentionVariant::Blocked {
        return Ok(None);
    }
    let gpu = rec.gpu().clone();
    let max = gpu.limits.max_texture_dimension_2d as usize;
    let fits = operands.iter().all(|&(t, width)| t.len() / width <= max && width / 4 <= max);
    let loads = matches!(variant, AttentionVariant::Texture | AttentionVariant::TextureSubgroup) && fits;
    let method = if loads { pack_method(&gpu)? } else { PackMethod::Shader };
    let mut textures = Vec::new();
    for (slot, &(t, width)) in (SLOT_QKV..).zip(operands) {
        textures.push(if loads {
            let rows = t.len() / width;
            let block = Block { rows, cols: width, stride: width, offset: 0, transposed: false };
            pack(rec, method, slot, t, block, width / 4, rows)?
        } else {
            gpu.scratch_texture(SLOT_QKV, 1, 1)?
        });
    }
    Ok(Some((loads, textures)))
}

/// As `attention_forward`, with the variant named (benches and tests compare them).
pub fn forward_with_variant(
    rec: &mut Recorder,
    variant: AttentionVariant,
    out: &Tensor,
    lse: &Tensor,
    qkv: &Tensor,
    mask: &Tensor,
    shape: AttentionShape,
) -> Result<()> {
    let (params, hd) = shape.check(qkv, mask, out, lse)?;
    let variant = available(rec.gpu(), variant, shape);
    let (shader, suffix, grid) = launch(rec.gpu(), variant, shape);
    let mut constants = vec![("HEAD_DIM", hd)];
    let mut bindings = vec![bind(1, qkv), bind_u32(2, mask), bind(3, out), bind(4, lse)];
    let textures = per_query_textures(rec, variant, &[(qkv, 3 * shape.c)])?;
    if let Some((loads, textures)) = &textures {
        constants.push(("TEXTURE_LOADS", flag(*loads)));
        bindings.extend((11..).zip(textures).map(|(index, t)| bind_texture(index, t)));
    }
    let p = bytemuck::bytes_of(&params);
    let entry = format!("attention_forward{suffix}");
    rec.dispatch(shader, &entry, &constants, p, &bindings, grid, shape.forward_work())
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
    let variant = variant(rec.gpu())?;
    backward_with_variant(rec, variant, dqkv, delta, dout, qkv, out, lse, mask, shape)
}

/// As `attention_backward`, with the variant named.
#[allow(clippy::too_many_arguments)]
pub fn backward_with_variant(
    rec: &mut Recorder,
    variant: AttentionVariant,
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
    let variant = available(rec.gpu(), variant, shape);
    expect_len(dqkv, qkv.len(), "attention dqkv")?;
    expect_len(dout, out.len(), "attention dout")?;
    expect_len(delta, lse.len(), "attention delta")?;
    let p = bytemuck::bytes_of(&params);
    // Each of the two backward kernels recomputes the scores and does the forward's work twice
    // over (dP = dO·Vᵀ and dQ = dS·K; dV = Pᵀ·dO and dK = dSᵀ·Q); the query kernel also
    // computes D = dO·O and stores it for the key/value kernel.
    let AttentionShape { b: batch, t, c, .. } = shape;
    let (flops, floats) =
        (3 * shape.forward_work().flops as usize / 2, batch * t * (3 * c + 3 * c + c) + 2 * lse.len());
    let query = Work::flops(flops + 2 * out.len(), floats + out.len() + lse.len());
    let key_value = Work::flops(flops, floats);
    let (shader, suffix, grid) = launch(rec.gpu(), variant, shape);
    let mut constants = vec![("HEAD_DIM", hd)];
    let mut shared = vec![bind(1, qkv), bind_u32(2, mask), bind(6, dout), bind(7, lse), bind(10, dqkv)];
    let textures = per_query_textures(rec, variant, &[(qkv, 3 * c), (dout, c)])?;
    if let Some((loads, textures)) = &textures {
        constants.push(("TEXTURE_LOADS", flag(*loads)));
        shared.extend((11..).zip(textures).map(|(index, t)| bind_texture(index, t)));
    }
    // D is written (binding 8) by the one and read (binding 9) by the other: one buffer may not
    // be bound both ways in a dispatch.
    let query_bindings = [shared.as_slice(), &[bind(5, out), bind(8, delta)]].concat();
    rec.dispatch(shader, &format!("attention_backward_query{suffix}"), &constants, p, &query_bindings, grid, query)?;
    let key_value_bindings = [shared.as_slice(), &[bind(9, delta)]].concat();
    rec.dispatch(
        shader,
        &format!("attention_backward_key_value{suffix}"),
        &constants,
        p,
        &key_value_bindings,
        grid,
        key_value,
    )
}
