//! The KV cache of generation: writing a step's keys and values, and attention of each row's
//! newest query against the cache. Shader: `kv_cache.wgsl`. The cache holds f32 values or f16
//! pairs packed into u32s (`KvFormat`, chosen per adapter by measurement: `format`); the kernels
//! read which from the cache tensor's dtype. Decode attention runs a workgroup or an invocation
//! per (row, head) (`DecodeAttention`, also chosen by measurement: `attention_variant`).

use super::{bind, bind_u32, expect_len, groups};
use crate::error::{Result, ensure_shape};
use crate::gpu::{
    DType, Gpu, Recorder, Shader, Tensor, Work, choose_by_measurement, matches_reference, seconds_per_call,
};
use std::sync::Arc;

pub const SHADER: Shader =
    Shader { name: "kv_cache", source: include_str!("../../shaders/kv_cache.wgsl"), includes: &[] };

/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 64;
/// kv_cache_write: invocations per workgroup (`WG_WRITE` in the shader).
pub const WG_WRITE: usize = 256;

/// Most cache positions `decode_attention` attends over (its scores live in workgroup memory).
pub const MAX_KEYS: usize = 2048;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    b: u32,
    n: u32,
    start: u32,
    t_max: u32,
    c: u32,
    nh: u32,
    len: u32,
    scale: f32,
}

/// The shape of one layer's cache: B rows of `t_max` positions, C channels, NH heads.
#[derive(Clone, Copy, Debug)]
pub struct CacheShape {
    pub b: usize,
    pub t_max: usize,
    pub c: usize,
    pub n_head: usize,
}

/// What a KV cache holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvFormat {
    /// f32 values: [B, T_max, 2C] f32.
    F32,
    /// f16 values two to a u32 (pack2x16float): [B, T_max, C] u32, half the memory and reads.
    F16,
}

/// The names of the formats, as `PPO_WGPU_KV_CACHE` and the cache file spell them.
pub const FORMATS: [(KvFormat, &str); 2] = [(KvFormat::F32, "f32"), (KvFormat::F16, "f16")];

/// The format this adapter's generation caches keys and values in: chosen by measurement on
/// first use and cached (family `kv_cache`, forced with PPO_WGPU_KV_CACHE=f32|f16).
pub fn format(gpu: &Arc<Gpu>) -> Result<KvFormat> {
    choose_by_measurement(gpu, "kv_cache", &FORMATS, "G values/s", measure_format)
}

/// An empty cache of `shape` in `format`.
pub fn new_cache(gpu: &Arc<Gpu>, shape: CacheShape, format: KvFormat) -> Result<Tensor> {
    let CacheShape { b, t_max, c, .. } = shape;
    match format {
        KvFormat::F32 => gpu.tensor(&[b, t_max, 2 * c], DType::F32),
        KvFormat::F16 => gpu.tensor(&[b, t_max, c], DType::U32),
    }
}

/// How decode attention spreads its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeAttention {
    /// A workgroup of WG per (row, head): its lanes share the keys, the scores sit in workgroup
    /// memory, and barriers separate the max, the sum and the weighted values.
    WorkgroupPerHead,
    /// An invocation per (row, head) with an online softmax over the keys, no barriers (head
    /// dimensions a multiple of 4, up to MAX_SERIAL_HEAD_DIM; others run a workgroup per head).
    InvocationPerHead,
}

/// The names of the decode attention variants, as `PPO_WGPU_DECODE_ATTENTION` and the cache
/// file spell them.
pub const ATTENTION_VARIANTS: [(DecodeAttention, &str); 2] = [
    (DecodeAttention::WorkgroupPerHead, "workgroup-per-head"),
    (DecodeAttention::InvocationPerHead, "invocation-per-head"),
];

/// The largest head dimension the invocation-per-head kernel holds in registers
/// (`MAX_HEAD_DIM4` × 4 in the shader).
pub const MAX_SERIAL_HEAD_DIM: usize = 128;

/// The way this adapter runs decode attention: chosen by measurement on first use and cached
/// (family `decode_attention`, forced with PPO_WGPU_DECODE_ATTENTION=workgroup-per-head|
/// invocation-per-head).
pub fn attention_variant(gpu: &Arc<Gpu>) -> Result<DecodeAttention> {
    choose_by_measurement(gpu, "decode_attention", &ATTENTION_VARIANTS, "GFLOP/s", measure_attention_variant)
}

/// A variant's GFLOP/s (q·k and p·v over every cached key) at a small model's rollout and at
/// GPT-2's width (`MEASURED_SHAPES`), over both cache formats (family kv_cache picks each
/// format's faster kernel: neither choice waits on the other), after a check against the CPU
/// reference at a ragged shape with left padding.
fn measure_attention_variant(gpu: &Arc<Gpu>, variant: DecodeAttention) -> Result<Option<f64>> {
    let mut rng = crate::rng::Rng::new(31);
    let (mut flops, mut seconds) = (0.0, 0.0);
    for (format, _) in FORMATS {
        let case = DecodeCase::new(gpu, &mut rng, CHECKED_SHAPE, format)?;
        let mut rec = Recorder::new(gpu);
        case.write(&mut rec)?;
        case.attend(&mut rec, variant)?;
        rec.submit();
        if !matches_reference(&gpu.download(&case.out)?, &case.want) {
            return Ok(None);
        }
        for shape in MEASURED_SHAPES {
            let case = DecodeCase::new(gpu, &mut rng, shape, format)?;
            let mut rec = Recorder::new(gpu);
            case.write(&mut rec)?;
            rec.submit();
            seconds += seconds_per_call(gpu, |rec| case.attend(rec, variant))?;
            flops += (2 * 2 * shape.b * shape.t_max * shape.c) as f64;
        }
    }
    Ok(Some(flops / seconds / 1e9))
}

/// The format of a cache tensor (f16 pairs are u32s).
fn format_of(cache: &Tensor) -> KvFormat {
    if cache.dtype() == DType::U32 { KvFormat::F16 } else { KvFormat::F32 }
}

/// A format's rate in keys' and values' elements written and read per second (the same work
/// for both formats, whatever their bytes) over a prefill write and a decode step (on the
/// format's faster decode attention kernel) at a small model's rollout and at GPT-2's width,
/// after decode attention over it matched the CPU reference (with f16-rounded keys and values
/// for f16).
fn measure_format(gpu: &Arc<Gpu>, format: KvFormat) -> Result<Option<f64>> {
    let mut rng = crate::rng::Rng::new(23);
    let case = DecodeCase::new(gpu, &mut rng, CHECKED_SHAPE, format)?;
    let mut rec = Recorder::new(gpu);
    case.write(&mut rec)?;
    case.attend(&mut rec, DecodeAttention::WorkgroupPerHead)?;
    rec.submit();
    if !matches_reference(&gpu.download(&case.out)?, &case.want) {
        return Ok(None);
    }
    let (mut values, mut seconds) = (0.0, 0.0);
    for shape in MEASURED_SHAPES {
        let case = DecodeCase::new(gpu, &mut rng, shape, format)?;
        let mut fastest = f64::INFINITY;
        for (variant, _) in ATTENTION_VARIANTS {
            let step = |rec: &mut Recorder| -> Result<()> {
                case.write(rec)?;
                case.attend(rec, variant)
            };
            fastest = fastest.min(seconds_per_call(gpu, step)?);
        }
        seconds += fastest;
        values += (2 * shape.b * shape.t_max * 2 * shape.c) as f64;
    }
    Ok(Some(values / seconds / 1e9))
}

/// The shape the measurements check against the CPU reference (head dim 8, rows with padding).
const CHECKED_SHAPE: CacheShape = CacheShape { b: 3, t_max: 9, c: 24, n_head: 3 };
/// The shapes they time: a small model's rollout (32 rows of 64 positions, C = 128, 4 heads)
/// and GPT-2's (4 rows of 256, C = 768, 12 heads).
const MEASURED_SHAPES: [CacheShape; 2] =
    [CacheShape { b: 32, t_max: 64, c: 128, n_head: 4 }, CacheShape { b: 4, t_max: 256, c: 768, n_head: 12 }];

/// A decode step to measure: random qkv for every position of `shape`, row r with r positions
/// of left padding (at most T_max − 1), its cache in one format, and what attention from each
/// row's last position gives on the CPU over the keys and values as the cache holds them.
struct DecodeCase {
    shape: CacheShape,
    qkv: Tensor,  // [B, T_max, 3C]
    last: Tensor, // [B, 3C]: each row's last position
    mask: Tensor, // [B, T_max]
    cache: Tensor,
    out: Tensor, // [B, C]
    want: Vec<f64>,
}

impl DecodeCase {
    fn new(gpu: &Arc<Gpu>, rng: &mut crate::rng::Rng, shape: CacheShape, format: KvFormat) -> Result<DecodeCase> {
        let CacheShape { b, t_max, c, n_head } = shape;
        let qkv = rng.normals(b * t_max * 3 * c, 1.0);
        let mask: Vec<u32> = (0..b * t_max).map(|i| (i % t_max >= (i / t_max).min(t_max - 1)) as u32).collect();
        let last_rows = |x: &[f64], width: usize| -> Vec<f64> {
            (0..b)
                .flat_map(|row| x[(row * t_max + t_max - 1) * width..(row * t_max + t_max) * width].to_vec())
                .collect()
        };
        let f32s = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let held = crate::reference::qkv_as_cached(&qkv, c, format == KvFormat::F16);
        let (attended, _) = crate::reference::attention_forward(&held, &mask, b, t_max, c, n_head);
        Ok(DecodeCase {
            shape,
            qkv: gpu.upload(&[b, t_max, 3 * c], &f32s(&qkv))?,
            last: gpu.upload(&[b, 3 * c], &f32s(&last_rows(&qkv, 3 * c)))?,
            mask: gpu.upload_u32(&[b, t_max], &mask)?,
            cache: new_cache(gpu, shape, format)?,
            out: gpu.tensor(&[b, c], DType::F32)?,
            want: last_rows(&attended, c),
        })
    }

    /// Writes every position's keys and values into the cache.
    fn write(&self, rec: &mut Recorder) -> Result<()> {
        kv_cache_write(rec, &self.cache, &self.qkv, self.shape, 0)
    }

    /// Attention from each row's last position over the whole cache.
    fn attend(&self, rec: &mut Recorder, variant: DecodeAttention) -> Result<()> {
        let (shape, t_max) = (self.shape, self.shape.t_max);
        decode_attention_with(rec, variant, &self.out, &self.last, &self.cache, &self.mask, shape, t_max, false)
    }
}

/// cache at positions start .. start + n = the keys and values of qkv [B, n, 3C] (cache
/// [B, T_max, 2C] f32, or [B, T_max, C] u32 of f16 pairs).
pub fn kv_cache_write(rec: &mut Recorder, cache: &Tensor, qkv: &Tensor, shape: CacheShape, start: usize) -> Result<()> {
    let CacheShape { b, t_max, c, .. } = shape;
    let format = format_of(cache);
    expect_len(cache, b * t_max * if format == KvFormat::F16 { c } else { 2 * c }, "KV cache")?;
    let n = qkv.len() / (b * 3 * c).max(1);
    expect_len(qkv, b * n * 3 * c, "qkv for the KV cache")?;
    ensure_shape(start + n <= t_max, || format!("KV cache write of {n} positions at {start} past its {t_max}"))?;
    let p = Params {
        b: b as u32,
        n: n as u32,
        start: start as u32,
        t_max: t_max as u32,
        c: c as u32,
        ..Default::default()
    };
    // The keys and values read from qkv and written to the cache (f16: two to a word).
    let p = bytemuck::bytes_of(&p);
    match format {
        KvFormat::F32 => {
            let (grid, work) = (rec.gpu().grid(groups(b * n * 2 * c, WG_WRITE)), Work::floats(2 * b * n * 2 * c));
            rec.dispatch(&SHADER, "kv_cache_write", &[], p, &[bind(1, qkv), bind(2, cache)], grid, work)
        }
        KvFormat::F16 => {
            let (grid, work) = (rec.gpu().grid(groups(b * n * c, WG_WRITE)), Work::floats(b * n * 2 * c + b * n * c));
            rec.dispatch(&SHADER, "kv_cache_write_f16", &[], p, &[bind(1, qkv), bind_u32(6, cache)], grid, work)
        }
    }
}

/// out [B, C] = attention of each row's query (qkv [B, 3C], the token at cache position
/// len − 1) over cache positions 0 .. len − 1 whose mask [B, T_max] is 1, on the adapter's
/// variant. With `append` the same dispatch first writes that token's key and value into the
/// cache at position len − 1 (what `kv_cache_write` would: a decode step's write and attention
/// in one dispatch); without, the cache must already hold them.
#[allow(clippy::too_many_arguments)]
pub fn decode_attention(
    rec: &mut Recorder,
    out: &Tensor,
    qkv: &Tensor,
    cache: &Tensor,
    mask: &Tensor,
    shape: CacheShape,
    len: usize,
    append: bool,
) -> Result<()> {
    let variant = attention_variant(rec.gpu())?;
    decode_attention_with(rec, variant, out, qkv, cache, mask, shape, len, append)
}

/// As `decode_attention`, on the variant named (tests and benches compare them).
#[allow(clippy::too_many_arguments)]
pub fn decode_attention_with(
    rec: &mut Recorder,
    variant: DecodeAttention,
    out: &Tensor,
    qkv: &Tensor,
    cache: &Tensor,
    mask: &Tensor,
    shape: CacheShape,
    len: usize,
    append: bool,
) -> Result<()> {
    let CacheShape { b, t_max, c, n_head } = shape;
    ensure_shape(n_head > 0 && c % n_head == 0, || format!("{c} channels do not split into {n_head} heads"))?;
    ensure_shape(len >= 1 && len <= t_max && len <= MAX_KEYS, || {
        format!("decode attention over {len} keys: the cache holds {t_max}, the kernel at most {MAX_KEYS}")
    })?;
    expect_len(qkv, b * 3 * c, "decode qkv")?;
    let format = format_of(cache);
    expect_len(cache, b * t_max * if format == KvFormat::F16 { c } else { 2 * c }, "KV cache")?;
    expect_len(mask, b * t_max, "KV cache mask")?;
    expect_len(out, b * c, "decode attention output")?;
    let p = Params {
        b: b as u32,
        t_max: t_max as u32,
        c: c as u32,
        nh: n_head as u32,
        len: len as u32,
        scale: 1.0 / ((c / n_head) as f32).sqrt(),
        ..Default::default()
    };
    // One query per row and head against `len` cached keys and values: q·k and p·v, 2 flops
    // per multiply-add; the cached keys and values read once (f16: two to a word), and with
    // `append` the newest written.
    let cache_words = if format == KvFormat::F16 { c } else { 2 * c };
    let appended = if append { cache_words } else { 0 };
    let work = Work::flops(2 * 2 * b * len * c, b * (len * cache_words + appended) + b * (3 * c + c + len));
    let p = bytemuck::bytes_of(&p);
    let hd = c / n_head;
    let append = ("APPEND", super::flag(append));
    if variant == DecodeAttention::InvocationPerHead && hd.is_multiple_of(4) && hd <= MAX_SERIAL_HEAD_DIM {
        // Both formats read through cached4: the other format's binding gets a
        // `Recorder::stand_in`, never read (the cache there too would bind a writable buffer
        // twice).
        let stand_in = rec.stand_in(0)?;
        let (f32_cache, f16_cache) = match format {
            KvFormat::F32 => (cache.clone(), stand_in.bitcast(DType::U32)),
            KvFormat::F16 => (stand_in, cache.clone()),
        };
        let entry = if format == KvFormat::F16 { "decode_attention_serial_f16" } else { "decode_attention_serial" };
        let bindings = [bind(8, qkv), bind(9, &f32_cache), bind_u32(10, &f16_cache), bind_u32(4, mask), bind(11, out)];
        let grid = rec.gpu().grid(groups(b * n_head, WG));
        return rec.dispatch(&SHADER, entry, &[("HEAD_DIM", hd as f64), append], p, &bindings, grid, work);
    }
    let grid = rec.gpu().grid(b * n_head);
    // Both entry points read the cache through one function: the other format's binding gets a
    // `Recorder::stand_in`, never touched.
    let stand_in = rec.stand_in(0)?;
    let stand_in_words = stand_in.bitcast(DType::U32);
    let (entry, bindings) = match format {
        KvFormat::F32 => (
            "decode_attention",
            [bind(1, qkv), bind(2, cache), bind_u32(4, mask), bind(5, out), bind_u32(6, &stand_in_words)],
        ),
        KvFormat::F16 => (
            "decode_attention_f16",
            [bind(1, qkv), bind(2, &stand_in), bind_u32(4, mask), bind(5, out), bind_u32(6, cache)],
        ),
    };
    rec.dispatch(&SHADER, entry, &[append], p, &bindings, grid, work)
}
