// The KV cache of generation: writing keys and values into it, and attention of one new query
// per row against it.
//
//   kv_cache_write:   cache[b, start + i] = (k, v) of qkv[b, i]    for i < n
//   decode_attention: for the newest token of each row (at cache position len − 1), per head h
//       s_j = q·k_j / sqrt(hd)   for keys j < len with mask[b, j] ≠ 0
//       out = Σ_j softmax_j(s)·v_j
//     (the same math as attention_forward's row for that query: tests compare the two)
//
// Layout: qkv [B, n, 3C] as c_attn writes it (q, k, v each [C]; head h owns channels h·hd ..
// h·hd + hd − 1); cache [B, T_max, 2C] (k then v per position); mask [B, T_max] u32 (1 = a real
// token); out [B, C].
// Launch: kv_cache_write: one invocation per (b, i, channel), workgroup 256, grid 2D;
// decode_attention: one workgroup of 64 per (b, h), flat index b·NH + h, grid 2D. Scores of up
// to MAX_KEYS positions live in workgroup memory.

struct Params {
    b: u32,
    n: u32,       // kv_cache_write: positions to write
    start: u32,   // kv_cache_write: first cache position
    t_max: u32,   // cache positions per row
    c: u32,
    nh: u32,
    len: u32,     // decode_attention: keys 0 .. len − 1 (the query is the last)
    scale: f32,
}

const WG: u32 = 64u;
const MAX_KEYS: u32 = 2048u;
const WG_WRITE: u32 = 256u; // kv_cache_write: invocations per workgroup (kernels::kv_cache::WG_WRITE)

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> cache: array<f32>;
@group(0) @binding(3) var<storage, read> cache_in: array<f32>;
@group(0) @binding(4) var<storage, read> mask: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG_WRITE)
fn kv_cache_write(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let flat = (wid.y * nwg.x + wid.x) * WG_WRITE + lid;
    let c2 = 2u * params.c;
    if (flat >= params.b * params.n * c2) { return; }
    let ch = flat % c2;
    let bi = flat / c2; // b·n + i
    let b = bi / params.n;
    let i = bi % params.n;
    // k and v sit after q: channels C .. 3C − 1 of the qkv row.
    cache[(b * params.t_max + params.start + i) * c2 + ch] = qkv[bi * 3u * params.c + params.c + ch];
}

var<workgroup> scores: array<f32, MAX_KEYS>;

@compute @workgroup_size(WG)
fn decode_attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let bh = wid.y * nwg.x + wid.x;
    if (bh >= params.b * params.nh) { return; } // uniform across the workgroup
    let b = bh / params.nh;
    let h = bh % params.nh;
    let c = params.c;
    let hd = c / params.nh;
    let q = b * 3u * c + h * hd; // qkv holds one position per row
    let row = b * params.t_max;

    // Scores, and their max.
    var m = NEG_BIG;
    for (var j = lid; j < params.len; j += WG) {
        var s = NEG_BIG;
        if (mask[row + j] != 0u) {
            let k = (row + j) * 2u * c + h * hd;
            var dot = 0.0;
            for (var d = 0u; d < hd; d++) { dot += qkv[q + d] * cache_in[k + d]; }
            s = dot * params.scale;
            m = max(m, s);
        }
        scores[j] = s;
    }
    m = workgroup_max(lid, WG, m);

    // Softmax weights (0 for masked keys) and their sum.
    var sum = 0.0;
    for (var j = lid; j < params.len; j += WG) {
        let p = select(0.0, exp(scores[j] - m), scores[j] > NEG_BIG);
        scores[j] = p;
        sum += p;
    }
    sum = workgroup_sum(lid, WG, sum);
    let inv_sum = select(0.0, 1.0 / sum, sum > 0.0);

    // out[d] = Σ_j p_j v_j[d] / Σ_j p_j, one channel per invocation.
    for (var d = lid; d < hd; d += WG) {
        var acc = 0.0;
        for (var j = 0u; j < params.len; j++) {
            acc += scores[j] * cache_in[(row + j) * 2u * c + c + h * hd + d];
        }
        out[b * c + h * hd + d] = acc * inv_sum;
    }
}
