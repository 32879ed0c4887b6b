// The KV cache of generation: writing keys and values into it, and attention of one new query
// per row against it.
//
//   kv_cache_write:   cache[b, start + i] = (k, v) of qkv[b, i]    for i < n
//   decode_attention: for the newest token of each row (at cache position len − 1), per head h
//       s_j = q·k_j / sqrt(hd)   for keys j < len with mask[b, j] ≠ 0
//       out = Σ_j softmax_j(s)·v_j
//     (the same math as attention_forward's row for that query: tests compare the two); with
//     APPEND it first writes that token's key and value at position len − 1, as kv_cache_write
//     would (a decode step's write and attention in one dispatch).
//
// The cache holds f32 values (kv_cache_write, decode_attention) or, the other variant chosen per
// adapter by measurement (kernels::kv_cache::format), f16 ones two to a u32 with WGSL's portable
// pack2x16float (the _f16 entry points): half the memory and half the bytes each decode step
// reads, with the same f32 arithmetic. Only generation reads the cache; the training forward
// recomputes every log-prob in f32, so PPO's ratios do not see the rounding.
//
// decode_attention comes in two shapes, chosen per adapter by measurement
// (kernels::kv_cache::attention_variant): a workgroup per (b, h), its lanes sharing the keys and
// the scores in workgroup memory (what a GPU wants), or decode_attention_serial, an invocation per
// (b, h) walking the keys with an online softmax (running max and sum, the accumulator rescaled
// as the max grows), query and accumulator in registers: no barriers, which on a CPU adapter cost
// more than the work between them. The serial form reads vec4s and needs HEAD_DIM % 4 == 0.
//
// Layout: qkv [B, n, 3C] as c_attn writes it (q, k, v each [C]; head h owns channels h·hd ..
// h·hd + hd − 1); cache [B, T_max, 2C] (k then v per position), f32, or u32 holding the f16 pairs
// (channels 2i, 2i + 1 in word i: [B, T_max, C] words); mask [B, T_max] u32 (1 = a real token);
// out [B, C].
// Launch: kv_cache_write: one invocation per (b, i, channel), workgroup 256, grid 2D (the _f16
// form: per pair of channels); decode_attention: one workgroup of 64 per (b, h), flat index
// b·NH + h, grid 2D. Scores of up to MAX_KEYS positions live in workgroup memory.
// decode_attention_serial: one invocation per (b, h), workgroup 64, flat index b·NH + h.

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
@group(0) @binding(4) var<storage, read> mask: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
// The f16 cache (the _f16 entry points; decode_attention binds a stand-in at 6, and
// decode_attention_f16 one at 2, since both read through cached_pair). The attention entry points
// read the cache through these read-write bindings too: with APPEND they write it, and one
// buffer may not be bound both read-only and writable in a dispatch.
@group(0) @binding(6) var<storage, read_write> cache_h: array<u32>;
// The same buffers as vec4s for decode_attention_serial (the host binds each at both): qkv, the
// f32 cache, the f16 cache (four channels to a vec2 of words; a stand-in for the other format is
// bound as with cached_pair), and out.
@group(0) @binding(8) var<storage, read> qkv4: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> cache4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> cache_h4: array<vec2<u32>>;
@group(0) @binding(11) var<storage, read_write> out4: array<vec4<f32>>;

override APPEND: bool = false; // decode attention: write the newest key and value first

override HEAD_DIM: u32 = 64u;   // decode_attention_serial: C / NH
const MAX_HEAD_DIM4: u32 = 32u; // head dimension up to 128 (kernels::kv_cache::MAX_SERIAL_HEAD_DIM)

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

@compute @workgroup_size(WG_WRITE)
fn kv_cache_write_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let flat = (wid.y * nwg.x + wid.x) * WG_WRITE + lid;
    let c = params.c; // pairs of channels per position (2C channels)
    if (flat >= params.b * params.n * c) { return; }
    let pair = flat % c;
    let bi = flat / c; // b·n + i
    let b = bi / params.n;
    let i = bi % params.n;
    let at = bi * 3u * c + c + 2u * pair;
    cache_h[(b * params.t_max + params.start + i) * c + pair] = pack2x16float(vec2<f32>(qkv[at], qkv[at + 1u]));
}

// Channels `at`, `at` + 1 (an even offset) of the cache, as f32s.
fn cached_pair(at: u32, half: bool) -> vec2<f32> {
    if (half) { return unpack2x16float(cache_h[at / 2u]); }
    return vec2<f32>(cache[at], cache[at + 1u]);
}

var<workgroup> scores: array<f32, MAX_KEYS>;

@compute @workgroup_size(WG)
fn decode_attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    decode_attention_rows(wid, nwg, lid, false);
}

@compute @workgroup_size(WG)
fn decode_attention_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    decode_attention_rows(wid, nwg, lid, true);
}

// One (b, h) per workgroup; `half`: the cache holds f16 pairs.
fn decode_attention_rows(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, half: bool) {
    let bh = wid.y * nwg.x + wid.x;
    if (bh >= params.b * params.nh) { return; } // uniform across the workgroup
    let b = bh / params.nh;
    let h = bh % params.nh;
    let c = params.c;
    let hd = c / params.nh;
    let q = b * 3u * c + h * hd; // qkv holds one position per row
    let row = b * params.t_max;

    // APPEND: the newest key and value (qkv channels C .. 3C − 1 of this head) into the cache at
    // position len − 1, a pair of channels per invocation, visible to the whole workgroup after
    // the barrier.
    if (APPEND) {
        let at = (row + params.len - 1u) * 2u * c + h * hd;
        for (var d = 2u * lid; d < hd; d += 2u * WG) {
            for (var part = 0u; part < 2u; part++) { // key, then value
                let pair = vec2<f32>(qkv[q + (part + 1u) * c + d], qkv[q + (part + 1u) * c + d + 1u]);
                let dst = at + part * c + d;
                if (half) {
                    cache_h[dst / 2u] = pack2x16float(pair);
                } else {
                    cache[dst] = pair.x;
                    cache[dst + 1u] = pair.y;
                }
            }
        }
        storageBarrier();
    }

    // Scores, and their max.
    var m = NEG_BIG;
    for (var j = lid; j < params.len; j += WG) {
        var s = NEG_BIG;
        if (mask[row + j] != 0u) {
            let k = (row + j) * 2u * c + h * hd;
            var dot = 0.0;
            for (var d = 0u; d < hd; d += 2u) {
                let kd = cached_pair(k + d, half);
                dot += qkv[q + d] * kd.x + qkv[q + d + 1u] * kd.y;
            }
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

    // out[d] = Σ_j p_j v_j[d] / Σ_j p_j, a pair of channels per invocation (hd is even).
    for (var d = 2u * lid; d < hd; d += 2u * WG) {
        var acc = vec2<f32>(0.0);
        for (var j = 0u; j < params.len; j++) {
            acc += scores[j] * cached_pair((row + j) * 2u * c + c + h * hd + d, half);
        }
        out[b * c + h * hd + d] = acc.x * inv_sum;
        out[b * c + h * hd + d + 1u] = acc.y * inv_sum;
    }
}

@compute @workgroup_size(WG)
fn decode_attention_serial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    decode_attention_head((wid.y * nwg.x + wid.x) * WG + lid, false);
}

@compute @workgroup_size(WG)
fn decode_attention_serial_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                               @builtin(local_invocation_index) lid: u32) {
    decode_attention_head((wid.y * nwg.x + wid.x) * WG + lid, true);
}

// Channels 4i .. 4i + 3 of the cache (i in vec4s of its [B, T_max, 2C] channels), as f32s.
fn cached4(i: u32, half: bool) -> vec4<f32> {
    if (half) {
        let w = cache_h4[i];
        return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
    }
    return cache4[i];
}

// Attention of row b's newest query against its cache for head h (bh = b·NH + h), alone.
fn decode_attention_head(bh: u32, half: bool) {
    if (bh >= params.b * params.nh) { return; }
    let b = bh / params.nh;
    let h = bh % params.nh;
    let c4 = params.c / 4u;
    let hd4 = HEAD_DIM / 4u;
    let row = b * params.t_max;

    // APPEND: this head's newest key and value (qkv channels C .. 3C − 1) into the cache at
    // position len − 1; only this invocation reads them.
    if (APPEND) {
        let src = b * 3u * c4 + c4 + h * hd4;
        let dst = (row + params.len - 1u) * 2u * c4 + h * hd4;
        for (var part = 0u; part < 2u; part++) { // key, then value
            for (var d = 0u; d < hd4; d++) {
                let v = qkv4[src + part * c4 + d];
                if (half) {
                    cache_h4[dst + part * c4 + d] = vec2<u32>(pack2x16float(v.xy), pack2x16float(v.zw));
                } else {
                    cache4[dst + part * c4 + d] = v;
                }
            }
        }
    }

    // The query, scaled once (qkv holds one position per row).
    var q: array<vec4<f32>, MAX_HEAD_DIM4>;
    for (var d = 0u; d < hd4; d++) { q[d] = qkv4[b * 3u * c4 + h * hd4 + d] * params.scale; }
    var acc: array<vec4<f32>, MAX_HEAD_DIM4>;
    var m = NEG_BIG; // the running max of the scores
    var l = 0.0;     // Σ exp(s_j − m)
    for (var j = 0u; j < params.len; j++) {
        if (mask[row + j] == 0u) { continue; }
        let k = (row + j) * 2u * c4 + h * hd4; // key j's head, in vec4s; its value C later
        var s = 0.0;
        for (var d = 0u; d < hd4; d++) { s += dot(q[d], cached4(k + d, half)); }
        let m_new = max(m, s);
        let rescale = exp(m - m_new);
        let p = exp(s - m_new);
        l = l * rescale + p;
        for (var d = 0u; d < hd4; d++) { acc[d] = acc[d] * rescale + p * cached4(k + c4 + d, half); }
        m = m_new;
    }
    let inv_l = select(0.0, 1.0 / l, l > 0.0);
    for (var d = 0u; d < hd4; d++) { out4[b * c4 + h * hd4 + d] = acc[d] * inv_l; }
}
