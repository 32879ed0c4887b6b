//! The KV cache of generation: writing a step's keys and values, and attention of each row's
//! newest query against the cache. Shader: `kv_cache.wgsl`.

use super::{bind, bind_u32, expect_len, groups};
use crate::error::{Result, ensure_shape};
use crate::gpu::{Recorder, Shader, Tensor, Work};

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

/// cache [B, T_max, 2C] at positions start .. start + n = the keys and values of qkv [B, n, 3C].
pub fn kv_cache_write(rec: &mut Recorder, cache: &Tensor, qkv: &Tensor, shape: CacheShape, start: usize) -> Result<()> {
    let CacheShape { b, t_max, c, .. } = shape;
    expect_len(cache, b * t_max * 2 * c, "KV cache")?;
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
    let grid = rec.gpu().grid(groups(b * n * 2 * c, WG_WRITE));
    let work = Work::floats(2 * b * n * 2 * c); // the keys and values read from qkv, written to the cache
    rec.dispatch(&SHADER, "kv_cache_write", &[], bytemuck::bytes_of(&p), &[bind(1, qkv), bind(2, cache)], grid, work)
}

/// out [B, C] = attention of each row's query (qkv [B, 3C], the token at cache position
/// len − 1) over cache positions 0 .. len − 1 whose mask [B, T_max] is 1.
pub fn decode_attention(
    rec: &mut Recorder,
    out: &Tensor,
    qkv: &Tensor,
    cache: &Tensor,
    mask: &Tensor,
    shape: CacheShape,
    len: usize,
) -> Result<()> {
    let CacheShape { b, t_max, c, n_head } = shape;
    ensure_shape(n_head > 0 && c % n_head == 0, || format!("{c} channels do not split into {n_head} heads"))?;
    ensure_shape(len >= 1 && len <= t_max && len <= MAX_KEYS, || {
        format!("decode attention over {len} keys: the cache holds {t_max}, the kernel at most {MAX_KEYS}")
    })?;
    expect_len(qkv, b * 3 * c, "decode qkv")?;
    expect_len(cache, b * t_max * 2 * c, "KV cache")?;
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
    let bindings = [bind(1, qkv), bind(3, cache), bind_u32(4, mask), bind(5, out)];
    let grid = rec.gpu().grid(b * n_head);
    // One query per row and head against `len` cached keys and values: q·k and p·v, 2 flops
    // per multiply-add; the cached keys and values read once.
    let work = Work::flops(2 * 2 * b * len * c, b * len * 2 * c + b * (3 * c + c + len));
    rec.dispatch(&SHADER, "decode_attention", &[], bytemuck::bytes_of(&p), &bindings, grid, work)
}
