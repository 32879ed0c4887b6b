// Causal multi-head self-attention with a key padding mask, forward and backward.
//
//   s_ij = q_i·k_j / sqrt(hd)   for keys j ≤ i with mask[j] ≠ 0
//   out_i = Σ_j softmax_j(s_i·)·v_j,     lse_i = log Σ_j exp(s_ij)   (saved for the backward)
//
// The forward is one pass over the keys with the online softmax (running max m and sum l, the
// accumulator rescaled by exp(m_old − m_new) whenever the max grows), so the T×T attention
// matrix is never stored; the backward recomputes p_ij = exp(s_ij − lse_i) instead:
//
//   D_i  = dout_i·out_i                                   (attention_backward_delta)
//   dq_i = Σ_j p_ij (dout_i·v_j − D_i) k_j / sqrt(hd)     (attention_backward_query)
//   dk_j = Σ_i p_ij (dout_i·v_j − D_i) q_i / sqrt(hd),  dv_j = Σ_i p_ij dout_i
//                                                         (attention_backward_key_value)
//
// Each gradient row is written by exactly one invocation, so no atomics are needed. A query with
// no visible key (a left-padding position) outputs zeros and gets zero gradients.
//
// Layout: qkv [B, T, 3C] as produced by c_attn (q, k, v each [C] per token; head h owns
// channels h·hd .. h·hd + hd − 1), read as vec4 (C and hd multiples of 4); mask [B, T] u32
// (1 = real token); out, dout [B, T, C]; lse, delta [B, NH, T]; dqkv [B, T, 3C] (overwritten).
// Launch: one invocation per (b, h, t), flat index (b·NH + h)·T + t, workgroup 64, grid laid
// out 2D (x ≤ 65535). HEAD_DIM is an override constant so that the per-head loops have a
// constant trip count and unroll.

struct Params {
    b: u32,
    t: u32,
    c: u32,
    nh: u32,
}

override HEAD_DIM: u32 = 64u;
const MAX_HEAD_DIM4: u32 = 32u; // head dimension up to 128
const WG: u32 = 64u; // invocations per workgroup (kernels::attention::WG)

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> qkv: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
// Backward
@group(0) @binding(5) var<storage, read> out_saved: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> dout: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> lse_saved: array<f32>;
@group(0) @binding(8) var<storage, read_write> delta: array<f32>;
@group(0) @binding(9) var<storage, read> delta_saved: array<f32>;
@group(0) @binding(10) var<storage, read_write> dqkv: array<vec4<f32>>;

struct Index {
    valid: bool,
    flat: u32, // (b·NH + h)·T + t
    b: u32,
    h: u32,
    t: u32,
}

fn decode(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> Index {
    let flat = (wid.y * nwg.x + wid.x) * WG + lid;
    let t = flat % params.t;
    let bh = flat / params.t;
    return Index(flat < params.b * params.nh * params.t, flat, bh / params.nh, bh % params.nh, t);
}

// vec4 offset of token (b, t)'s q (part 0), k (1) or v (2) for head h in qkv.
fn qkv_at(b: u32, t: u32, part: u32, h: u32) -> u32 {
    let c4 = params.c / 4u;
    return (b * params.t + t) * 3u * c4 + part * c4 + h * (HEAD_DIM / 4u);
}

// vec4 offset of token (b, t), head h in a [B, T, C] tensor.
fn row_at(b: u32, t: u32, h: u32) -> u32 {
    return (b * params.t + t) * (params.c / 4u) + h * (HEAD_DIM / 4u);
}

fn dot_rows(x: u32, y: u32) -> f32 {
    var s = 0.0;
    for (var d = 0u; d < HEAD_DIM / 4u; d++) { s += dot(qkv[x + d], qkv[y + d]); }
    return s;
}

@compute @workgroup_size(WG)
fn attention_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let ix = decode(wid, nwg, lid);
    if (!ix.valid) { return; }
    let scale = inverseSqrt(f32(HEAD_DIM));
    let q = qkv_at(ix.b, ix.t, 0u, ix.h);
    var acc: array<vec4<f32>, MAX_HEAD_DIM4>;
    var m = NEG_BIG;
    var l = 0.0;
    for (var j = 0u; j <= ix.t; j++) {
        if (mask[ix.b * params.t + j] == 0u) { continue; }
        let s = dot_rows(q, qkv_at(ix.b, j, 1u, ix.h)) * scale;
        let m_new = max(m, s);
        let correction = exp(m - m_new);
        let p = exp(s - m_new);
        l = l * correction + p;
        let v = qkv_at(ix.b, j, 2u, ix.h);
        for (var d = 0u; d < HEAD_DIM / 4u; d++) { acc[d] = acc[d] * correction + p * qkv[v + d]; }
        m = m_new;
    }
    let o = row_at(ix.b, ix.t, ix.h);
    let inv_l = select(0.0, 1.0 / l, l > 0.0);
    for (var d = 0u; d < HEAD_DIM / 4u; d++) { out[o + d] = acc[d] * inv_l; }
    lse[ix.flat] = select(0.0, m + log(l), l > 0.0);
}

@compute @workgroup_size(WG)
fn attention_backward_delta(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let ix = decode(wid, nwg, lid);
    if (!ix.valid) { return; }
    let o = row_at(ix.b, ix.t, ix.h);
    var s = 0.0;
    for (var d = 0u; d < HEAD_DIM / 4u; d++) { s += dot(dout[o + d], out_saved[o + d]); }
    delta[ix.flat] = s;
}

@compute @workgroup_size(WG)
fn attention_backward_query(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let ix = decode(wid, nwg, lid);
    if (!ix.valid) { return; }
    let scale = inverseSqrt(f32(HEAD_DIM));
    let q = qkv_at(ix.b, ix.t, 0u, ix.h);
    let o = row_at(ix.b, ix.t, ix.h);
    let lse_i = lse_saved[ix.flat];
    let d_i = delta_saved[ix.flat];
    var dq: array<vec4<f32>, MAX_HEAD_DIM4>;
    for (var j = 0u; j <= ix.t; j++) {
        if (mask[ix.b * params.t + j] == 0u) { continue; }
        let k = qkv_at(ix.b, j, 1u, ix.h);
        let v = qkv_at(ix.b, j, 2u, ix.h);
        let p = exp(dot_rows(q, k) * scale - lse_i);
        var dp = 0.0;
        for (var d = 0u; d < HEAD_DIM / 4u; d++) { dp += dot(dout[o + d], qkv[v + d]); }
        let ds = p * (dp - d_i) * scale;
        for (var d = 0u; d < HEAD_DIM / 4u; d++) { dq[d] += ds * qkv[k + d]; }
    }
    for (var d = 0u; d < HEAD_DIM / 4u; d++) { dqkv[q + d] = dq[d]; }
}

@compute @workgroup_size(WG)
fn attention_backward_key_value(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                @builtin(local_invocation_index) lid: u32) {
    let ix = decode(wid, nwg, lid);
    if (!ix.valid) { return; }
    let scale = inverseSqrt(f32(HEAD_DIM));
    let j = ix.t;
    let k = qkv_at(ix.b, j, 1u, ix.h);
    let v = qkv_at(ix.b, j, 2u, ix.h);
    var dk: array<vec4<f32>, MAX_HEAD_DIM4>;
    var dv: array<vec4<f32>, MAX_HEAD_DIM4>;
    // A masked key is seen by no query; every query i ≥ j sees a real key j, so lse_i is finite.
    if (mask[ix.b * params.t + j] != 0u) {
        for (var i = j; i < params.t; i++) {
            let q = qkv_at(ix.b, i, 0u, ix.h);
            let o = row_at(ix.b, i, ix.h);
            let row = (ix.b * params.nh + ix.h) * params.t + i;
            let p = exp(dot_rows(q, k) * scale - lse_saved[row]);
            var dp = 0.0;
            for (var d = 0u; d < HEAD_DIM / 4u; d++) { dp += dot(dout[o + d], qkv[v + d]); }
            let ds = p * (dp - delta_saved[row]) * scale;
            for (var d = 0u; d < HEAD_DIM / 4u; d++) {
                dk[d] += ds * qkv[q + d];
                dv[d] += p * dout[o + d];
            }
        }
    }
    for (var d = 0u; d < HEAD_DIM / 4u; d++) {
        dqkv[k + d] = dk[d];
        dqkv[v + d] = dv[d];
    }
}
