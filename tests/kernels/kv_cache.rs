use crate::common::*;
use ppo_wgpu::gpu::Recorder;
use ppo_wgpu::kernels::kv_cache::{
    ATTENTION_VARIANTS, CacheShape, FORMATS, KvFormat, decode_attention, decode_attention_with, kv_cache_write,
    new_cache,
};
use ppo_wgpu::reference;

/// Prefill P positions into the cache, append one more (with kv_cache_write, or in the
/// attention's own dispatch), and attend from it: for each cache format and each decode
/// attention variant the output equals the reference causal attention's row for that position
/// (left padding masked), the reference taking keys and values as the cache holds them, and
/// the cache holds every position's key and value.
fn check_decode(b: usize, p: usize, c: usize, nh: usize, seed: u64) {
    for (format, _) in FORMATS {
        check_decode_format(format, b, p, c, nh, seed);
    }
}

fn check_decode_format(format: KvFormat, b: usize, p: usize, c: usize, nh: usize, seed: u64) {
    let gpu = gpu();
    let mut rng = Rng::new(seed);
    let t = p + 1;
    let t_max = t + 3; // room left over: positions past `len` must be ignored
    let qkv = rng.normals(b * t * 3 * c, 1.0);
    // Row b has b padding positions on the left (at most p − 1, the query is always real).
    let mut mask = vec![1u32; b * t];
    for row in 0..b {
        for j in 0..row.min(p - 1) {
            mask[row * t + j] = 0;
        }
    }
    // Keys and values as the cache holds them (f16: rounded to nearest, ties to even).
    let held = reference::qkv_as_cached(&qkv, c, format == KvFormat::F16);
    let (want, _) = reference::attention_forward(&held, &mask, b, t, c, nh);
    let mut cache_mask = vec![1u32; b * t_max];
    for row in 0..b {
        cache_mask[row * t_max..row * t_max + t].copy_from_slice(&mask[row * t..(row + 1) * t]);
    }
    let prefix: Vec<f64> = (0..b).flat_map(|row| qkv[row * t * 3 * c..(row * t + p) * 3 * c].to_vec()).collect();
    let last: Vec<f64> = (0..b).flat_map(|row| qkv[(row * t + p) * 3 * c..(row * t + t) * 3 * c].to_vec()).collect();
    let shape = CacheShape { b, t_max, c, n_head: nh };
    let mask_t = gpu.upload_u32(&[b, t_max], &cache_mask).unwrap();
    let (prefix_t, last_t) = (upload(&prefix, &[b, p, 3 * c]), upload(&last, &[b, 3 * c]));
    let garbage = upload(&vec![f64::NAN; b * 3 * c], &[b, 3 * c]);
    let want_last: Vec<f64> = (0..b).flat_map(|row| want[(row * t + p) * c..(row * t + t) * c].to_vec()).collect();
    for ((variant, name), append) in ATTENTION_VARIANTS.into_iter().flat_map(|v| [(v, false), (v, true)]) {
        // The prefix written by kv_cache_write; the last position too, or (append) NaNs there
        // that the attention's own write must replace.
        let cache = new_cache(&gpu, shape, format).unwrap();
        let mut rec = Recorder::new(&gpu);
        kv_cache_write(&mut rec, &cache, &prefix_t, shape, 0).unwrap();
        kv_cache_write(&mut rec, &cache, if append { &garbage } else { &last_t }, shape, p).unwrap();
        // The output starts as NaN: every element must be written.
        let out = upload(&vec![f64::NAN; b * c], &[b, c]);
        decode_attention_with(&mut rec, variant, &out, &last_t, &cache, &mask_t, shape, t, append).unwrap();
        rec.submit();
        let what = format!("decode attention {name} {format:?} B={b} P={p} C={c} NH={nh} append={append}");
        assert_close(&what, &download(&out), &want_last, 1e-5, 1e-4);

        // The cache holds k and v of every written position: exactly (f32), or to within f16's
        // rounding, half an ulp of 2⁻¹¹ relative (2⁻²⁵ absolute among the subnormals).
        let got_cache: Vec<f64> = match format {
            KvFormat::F32 => download(&cache),
            KvFormat::F16 => unpack_f16_pairs(&gpu.download_u32(&cache).unwrap()),
        };
        let f16_ulp = if format == KvFormat::F16 { 2f64.powi(-11) } else { 0.0 };
        for row in 0..b {
            for j in 0..t {
                let (src, dst) = ((row * t + j) * 3 * c + c, (row * t_max + j) * 2 * c);
                let want: Vec<f64> = to_f32(&qkv[src..src + 2 * c]).iter().map(|&x| x as f64).collect();
                let atol = if format == KvFormat::F16 { 2f64.powi(-25) } else { 0.0 };
                assert_close(
                    &format!("{what}: cached row {row} position {j}"),
                    &got_cache[dst..dst + 2 * c],
                    &want,
                    atol,
                    f16_ulp,
                );
            }
        }
    }
}

#[test]
fn decode_attention_matches_the_causal_reference() {
    check_decode(3, 5, 48, 3, 310); // head dim 16, ragged padding
    check_decode(2, 1, 32, 2, 311); // a one-token prompt
    check_decode(4, 70, 64, 1, 312); // more keys than the workgroup
    check_decode(2, 3, 12, 2, 313); // head dim 6: invocation-per-head hands it to the workgroup kernel
    check_decode(2, 4, 256, 2, 314); // head dim 128, the most invocation-per-head holds
}

#[test]
fn decode_attention_rejects_a_length_past_the_cache() {
    let gpu = gpu();
    let shape = CacheShape { b: 1, t_max: 4, c: 8, n_head: 2 };
    let (cache, qkv, out) = (zeros(&[1, 4, 16]), zeros(&[1, 24]), zeros(&[1, 8]));
    let mask = gpu.upload_u32(&[1, 4], &[1; 4]).unwrap();
    let mut rec = Recorder::new(&gpu);
    let err = decode_attention(&mut rec, &out, &qkv, &cache, &mask, shape, 5, true).unwrap_err();
    assert!(err.to_string().contains("5 keys"), "{err}");
}
