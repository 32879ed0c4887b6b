// Causal multi-head self-attention with a key padding mask, forward and backward.
//
//   s_ij = q_i·k_j / sqrt(hd)   for keys j ≤ i with mask[j] ≠ 0
//   out_i = Σ_j softmax_j(s_i·)·v_j,     lse_i = log Σ_j exp(s_ij)   (saved for the backward)
//
// The forward is one pass over the keys with the online softmax (running max m and sum l, the
// accumulator rescaled by exp(m_old − m_new) whenever the max grows), so the T×T attention
// matrix is never stored; the backward recomputes p_ij = exp(s_ij − lse_i) instead:
//
//   D_i  = dout_i·out_i
//   dq_i = Σ_j p_ij (dout_i·v_j − D_i) k_j / sqrt(hd)     (attention_backward_query)
//   dk_j = Σ_i p_ij (dout_i·v_j − D_i) q_i / sqrt(hd),  dv_j = Σ_i p_ij dout_i
//                                                         (attention_backward_key_value)
//
// The query kernel computes D_i from the dout row it reads anyway and stores it at `delta` for
// the key/value kernel, dispatched after it (FlashAttention-2 gives D a kernel of its own; here
// that would be one more dispatch and one more read of dout per layer).
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
//
// The _blocked entry points are the other variant (chosen per adapter by measurement:
// kernels::attention::variant), FlashAttention's blocking: a workgroup of 64 invocations owns
// 64 consecutive queries (or keys, for dk/dv) of one (b, h), and walks the keys (queries) in
// tiles of TILE_ROWS rows that it stages in workgroup memory, so each key is read from memory
// once per 64 queries instead of once per query. The same math, in the same order per row.
// Launch: one workgroup per (b, h, block of 64 rows), flat index (b·NH + h)·ceil(T/64) + block,
// grid laid out 2D.

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
@group(0) @binding(8) var<storage, read_write> delta: array<f32>;       // query kernels: D, stored
@group(0) @binding(9) var<storage, read> delta_saved: array<f32>; // key/value kernels: D, read
@group(0) @binding(10) var<storage, read_write> dqkv: array<vec4<f32>>;
// The texture variant (TEXTURE_LOADS): qkv and dout packed into rgba32float textures, texel
// (c4, b·T + t) = vec4 c4 of token (b, t)'s row, read with textureLoad from read-only storage
// textures, which is several times faster than a storage-buffer load on some software adapters
// (see matmul_texture.wgsl). The other variants bind 1×1 stand-ins (the entry points use the
// bindings either way).
@group(0) @binding(11) var qkv_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(12) var dout_tex: texture_storage_2d<rgba32float, read>;

override TEXTURE_LOADS: bool = false;

// The per-query entry points address a head's slice of a token's row as a cell (x, y) =
// (first vec4 column, token row b·T + t): the texture's coordinates, so a texture load needs
// no division (a per-lane scalar on CPU adapters), and y·width + x in the buffer.

// The cell of token (b, t)'s q (part 0), k (1) or v (2) for head h in qkv.
fn qkv_cell(b: u32, t: u32, part: u32, h: u32) -> vec2<u32> {
    return vec2<u32>(part * (params.c / 4u) + h * (HEAD_DIM / 4u), b * params.t + t);
}

// The cell of token (b, t), head h in a [B, T, C] tensor (out, dout).
fn row_cell(b: u32, t: u32, h: u32) -> vec2<u32> {
    return vec2<u32>(h * (HEAD_DIM / 4u), b * params.t + t);
}

// vec4 d of the slice at `cell` of qkv, from the buffer or the texture.
fn qkv4(cell: vec2<u32>, d: u32) -> vec4<f32> {
    if (TEXTURE_LOADS) { return textureLoad(qkv_tex, vec2<u32>(cell.x + d, cell.y)); }
    return qkv[cell.y * (3u * params.c / 4u) + cell.x + d];
}

// vec4 d of the slice at `cell` of dout, from the buffer or the texture.
fn dout4(cell: vec2<u32>, d: u32) -> vec4<f32> {
    if (TEXTURE_LOADS) { return textureLoad(dout_tex, vec2<u32>(cell.x + d, cell.y)); }
    return dout[cell.y * (params.c / 4u) + cell.x + d];
}

// The flat vec4 offset of a cell in rows of `width4` vec4s (for the stores).
fn flat(cell: vec2<u32>, width4: u32) -> u32 {
    return cell.y * width4 + cell.x;
}

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

// vec4 offset of token (b, t)'s q (part 0), k (1) or v (2) for head h in qkv (the blocked
// entry points).
fn qkv_at(b: u32, t: u32, part: u32, h: u32) -> u32 {
    return flat(qkv_cell(b, t, part, h), 3u * params.c / 4u);
}

// vec4 offset of token (b, t), head h in a [B, T, C] tensor.
fn row_at(b: u32, t: u32, h: u32) -> u32 {
    return flat(row_cell(b, t, h), params.c / 4u);
}

// In the per-query entry points each invocation loads its own rows (its query, its dout row)
// once into registers, and each row it walks (a key and value, a query and dout row) once per
// step: every load is a texel or a vec4 read once.

@compute @workgroup_size(WG)
fn attention_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let ix = decode(wid, nwg, lid);
    if (!ix.valid) { return; }
    let scale = inverseSqrt(f32(HEAD_DIM));
    let q = qkv_cell(ix.b, ix.t, 0u, ix.h);
    var qv: array<vec4<f32>, MAX_HEAD_DIM4>;
    for (var d = 0u; d < HEAD_DIM / 4u; d++) { qv[d] = qkv4(q, d); }
    var acc: array<vec4<f32>, MAX_HEAD_DIM4>;
    var m = NEG_BIG;
    var l = 0.0;
    for (var j = 0u; j <= ix.t; j++) {
        if (mask[ix.b * params.t + j] == 0u) { continue; }
        let k = qkv_cell(ix.b, j, 1u, ix.h);
        var s = 0.0;
        for (var d = 0u; d < HEAD_DIM / 4u; d++) { s += dot(qv[d], qkv4(k, d)); }
        s *= scale;
        let m_new = max(m, s);
        let correction = exp(m - m_new);
        let p = exp(s - m_new);
        l = l * correction + p;
        let v = qkv_cell(ix.b, j, 2u, ix.h);
        for (var d = 0u; d < HEAD_DIM / 4u; d++) { acc[d] = acc[d] * correction + p * qkv4(v, d); }
        m = m_new;
    }
    let o = row_at(ix.b, ix.t, ix.h);
    let inv_l = select(0.0, 1.0 / l, l > 0.0);
    for (var d = 0u; d < HEAD_DIM / 4u; d++) { out[o + d] = acc[d] * inv_l; }
    lse[ix.flat] = select(0.0, m + log(l), l > 0.0);
}

@compute @workgroup_size(WG)
fn attention_backward_query(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let ix = decode(wid, nwg, lid);
    if (!ix.valid) { return; }
    let scale = inverseSqrt(f32(HEAD_DIM));
    let q = qkv_cell(ix.b, ix.t, 0u, ix.h);
    let o = row_cell(ix.b, ix.t, ix.h);
    let o_saved = row_at(ix.b, ix.t, ix.h);
    var qv: array<vec4<f32>, MAX_HEAD_DIM4>;
    var dov: array<vec4<f32>, MAX_HEAD_DIM4>;
    var d_i = 0.0;
    for (var d = 0u; d < HEAD_DIM / 4u; d++) {
        qv[d] = qkv4(q, d);
        dov[d] = dout4(o, d);
        d_i += dot(dov[d], out_saved[o_saved + d]);
    }
    delta[ix.flat] = d_i; // for the key/value kernel
    let lse_i = lse_saved[ix.flat];
    var dq: array<vec4<f32>, MAX_HEAD_DIM4>;
    for (var j = 0u; j <= ix.t; j++) {
        if (mask[ix.b * params.t + j] == 0u) { continue; }
        let k = qkv_cell(ix.b, j, 1u, ix.h);
        let v = qkv_cell(ix.b, j, 2u, ix.h);
        var kv: array<vec4<f32>, MAX_HEAD_DIM4>;
        var s = 0.0;
        var dp = 0.0;
        for (var d = 0u; d < HEAD_DIM / 4u; d++) {
            kv[d] = qkv4(k, d);
            s += dot(qv[d], kv[d]);
            dp += dot(dov[d], qkv4(v, d));
        }
        let p = exp(s * scale - lse_i);
        let ds = p * (dp - d_i) * scale;
        for (var d = 0u; d < HEAD_DIM / 4u; d++) { dq[d] += ds * kv[d]; }
    }
    let dq_at = flat(q, 3u * params.c / 4u);
    for (var d = 0u; d < HEAD_DIM / 4u; d++) { dqkv[dq_at + d] = dq[d]; }
}

@compute @workgroup_size(WG)
fn attention_backward_key_value(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                @builtin(local_invocation_index) lid: u32) {
    let ix = decode(wid, nwg, lid);
    if (!ix.valid) { return; }
    let scale = inverseSqrt(f32(HEAD_DIM));
    let j = ix.t;
    let k = qkv_cell(ix.b, j, 1u, ix.h);
    let v = qkv_cell(ix.b, j, 2u, ix.h);
    var kv: array<vec4<f32>, MAX_HEAD_DIM4>;
    var vv: array<vec4<f32>, MAX_HEAD_DIM4>;
    for (var d = 0u; d < HEAD_DIM / 4u; d++) {
        kv[d] = qkv4(k, d);
        vv[d] = qkv4(v, d);
    }
    var dk: array<vec4<f32>, MAX_HEAD_DIM4>;
    var dv: array<vec4<f32>, MAX_HEAD_DIM4>;
    // A masked key is seen by no query; every query i ≥ j sees a real key j, so lse_i is finite.
    if (mask[ix.b * params.t + j] != 0u) {
        for (var i = j; i < params.t; i++) {
            let q = qkv_cell(ix.b, i, 0u, ix.h);
            let o = row_cell(ix.b, i, ix.h);
            let row = (ix.b * params.nh + ix.h) * params.t + i;
            var qv: array<vec4<f32>, MAX_HEAD_DIM4>;
            var dov: array<vec4<f32>, MAX_HEAD_DIM4>;
            var s = 0.0;
            var dp = 0.0;
            for (var d = 0u; d < HEAD_DIM / 4u; d++) {
                qv[d] = qkv4(q, d);
                dov[d] = dout4(o, d);
                s += dot(qv[d], kv[d]);
                dp += dot(dov[d], vv[d]);
            }
            let p = exp(s * scale - lse_saved[row]);
            let ds = p * (dp - delta_saved[row]) * scale;
            for (var d = 0u; d < HEAD_DIM / 4u; d++) {
                dk[d] += ds * qv[d];
                dv[d] += p * dov[d];
            }
        }
    }
    let k_at = flat(k, 3u * params.c / 4u);
    let v_at = flat(v, 3u * params.c / 4u);
    for (var d = 0u; d < HEAD_DIM / 4u; d++) {
        dqkv[k_at + d] = dk[d];
        dqkv[v_at + d] = dv[d];
    }
}

// ---- The blocked variant ----

const TILE_ROWS: u32 = 8u; // keys (queries) staged per tile (kernels::attention::TILE_ROWS)

var<workgroup> tile_a: array<vec4<f32>, 256>; // TILE_ROWS × MAX_HEAD_DIM4: k (forward, dq) or q (dk/dv)
var<workgroup> tile_b: array<vec4<f32>, 256>; // v (forward, dq) or dout (dk/dv)
var<workgroup> tile_real: array<u32, TILE_ROWS>; // forward, dq: the keys' mask; past T: 0
var<workgroup> tile_lse: array<f32, TILE_ROWS>;   // dk/dv: the queries' lse and delta
var<workgroup> tile_delta: array<f32, TILE_ROWS>;

struct Block {
    b: u32,
    h: u32,
    r0: u32, // the workgroup's first row (query or key)
}

fn decode_block(wid: vec3<u32>, nwg: vec3<u32>) -> Block {
    let blocks = (params.t + WG - 1u) / WG;
    let idx = wid.y * nwg.x + wid.x;
    let bh = idx / blocks;
    return Block(bh / params.nh, bh % params.nh, (idx % blocks) * WG);
}

// Stages keys and values j0 .. j0 + TILE_ROWS − 1 of (b, h) in tile_a, tile_b (rows past T
// repeat the last and are flagged unreal).
fn stage_keys(blk: Block, j0: u32, lid: u32) {
    let hd4 = HEAD_DIM / 4u;
    for (var e = lid; e < TILE_ROWS * hd4; e += WG) {
        let r = e / hd4;
        let j = min(j0 + r, params.t - 1u);
        tile_a[e] = qkv[qkv_at(blk.b, j, 1u, blk.h) + e % hd4];
        tile_b[e] = qkv[qkv_at(blk.b, j, 2u, blk.h) + e % hd4];
    }
    if (lid < TILE_ROWS) {
        let j = j0 + lid;
        tile_real[lid] = select(0u, mask[blk.b * params.t + min(j, params.t - 1u)], j < params.t);
    }
}

@compute @workgroup_size(WG)
fn attention_forward_blocked(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let blk = decode_block(wid, nwg);
    if (blk.b >= params.b) { return; } // uniform across the workgroup: barriers stay uniform
    let hd4 = HEAD_DIM / 4u;
    let scale = inverseSqrt(f32(HEAD_DIM));
    let t = blk.r0 + lid; // this invocation's query (past T: computed, never stored)
    let q = qkv_at(blk.b, min(t, params.t - 1u), 0u, blk.h);
    var qv: array<vec4<f32>, MAX_HEAD_DIM4>;
    for (var d = 0u; d < hd4; d++) { qv[d] = qkv[q + d]; }
    var acc: array<vec4<f32>, MAX_HEAD_DIM4>;
    var m = NEG_BIG;
    var l = 0.0;
    let keys = min(blk.r0 + WG, params.t); // the block's last query sees keys 0 .. keys − 1
    for (var j0 = 0u; j0 < keys; j0 += TILE_ROWS) {
        workgroupBarrier(); // everyone is done with the previous tile
        stage_keys(blk, j0, lid);
        workgroupBarrier();
        for (var r = 0u; r < TILE_ROWS; r++) {
            if (j0 + r > t || tile_real[r] == 0u) { continue; }
            var s = 0.0;
            for (var d = 0u; d < hd4; d++) { s += dot(qv[d], tile_a[r * hd4 + d]); }
            s *= scale;
            let m_new = max(m, s);
            let correction = exp(m - m_new);
            let p = exp(s - m_new);
            l = l * correction + p;
            for (var d = 0u; d < hd4; d++) { acc[d] = acc[d] * correction + p * tile_b[r * hd4 + d]; }
            m = m_new;
        }
    }
    if (t < params.t) {
        let o = row_at(blk.b, t, blk.h);
        let inv_l = select(0.0, 1.0 / l, l > 0.0);
        for (var d = 0u; d < hd4; d++) { out[o + d] = acc[d] * inv_l; }
        lse[(blk.b * params.nh + blk.h) * params.t + t] = select(0.0, m + log(l), l > 0.0);
    }
}

@compute @workgroup_size(WG)
fn attention_backward_query_blocked(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                    @builtin(local_invocation_index) lid: u32) {
    let blk = decode_block(wid, nwg);
    if (blk.b >= params.b) { return; } // uniform across the workgroup
    let hd4 = HEAD_DIM / 4u;
    let scale = inverseSqrt(f32(HEAD_DIM));
    let t = blk.r0 + lid;
    let tc = min(t, params.t - 1u);
    let q = qkv_at(blk.b, tc, 0u, blk.h);
    let o = row_at(blk.b, tc, blk.h);
    let row = (blk.b * params.nh + blk.h) * params.t + tc;
    let lse_i = lse_saved[row];
    var qv: array<vec4<f32>, MAX_HEAD_DIM4>;
    var dov: array<vec4<f32>, MAX_HEAD_DIM4>;
    var d_i = 0.0;
    for (var d = 0u; d < hd4; d++) {
        qv[d] = qkv[q + d];
        dov[d] = dout[o + d];
        d_i += dot(dov[d], out_saved[o + d]);
    }
    if (t < params.t) { delta[row] = d_i; } // for the key/value kernel
    var dq: array<vec4<f32>, MAX_HEAD_DIM4>;
    let keys = min(blk.r0 + WG, params.t);
    for (var j0 = 0u; j0 < keys; j0 += TILE_ROWS) {
        workgroupBarrier();
        stage_keys(blk, j0, lid);
        workgroupBarrier();
        for (var r = 0u; r < TILE_ROWS; r++) {
            if (j0 + r > t || tile_real[r] == 0u) { continue; }
            var s = 0.0;
            var dp = 0.0;
            for (var d = 0u; d < hd4; d++) {
                s += dot(qv[d], tile_a[r * hd4 + d]);
                dp += dot(dov[d], tile_b[r * hd4 + d]);
            }
            let p = exp(s * scale - lse_i);
            let ds = p * (dp - d_i) * scale;
            for (var d = 0u; d < hd4; d++) { dq[d] += ds * tile_a[r * hd4 + d]; }
        }
    }
    if (t < params.t) {
        for (var d = 0u; d < hd4; d++) { dqkv[q + d] = dq[d]; }
    }
}

@compute @workgroup_size(WG)
fn attention_backward_key_value_blocked(@builtin(workgroup_id) wid: vec3<u32>,
                                        @builtin(num_workgroups) nwg: vec3<u32>,
                                        @builtin(local_invocation_index) lid: u32) {
    let blk = decode_block(wid, nwg);
    if (blk.b >= params.b) { return; } // uniform across the workgroup
    let hd4 = HEAD_DIM / 4u;
    let scale = inverseSqrt(f32(HEAD_DIM));
    let j = blk.r0 + lid; // this invocation's key (past T: computed, never stored)
    let jc = min(j, params.t - 1u);
    let k = qkv_at(blk.b, jc, 1u, blk.h);
    let v = qkv_at(blk.b, jc, 2u, blk.h);
    // A masked key is seen by no query.
    let real = j < params.t && mask[blk.b * params.t + jc] != 0u;
    var kv: array<vec4<f32>, MAX_HEAD_DIM4>;
    var vv: array<vec4<f32>, MAX_HEAD_DIM4>;
    for (var d = 0u; d < hd4; d++) {
        kv[d] = qkv[k + d];
        vv[d] = qkv[v + d];
    }
    var dk: array<vec4<f32>, MAX_HEAD_DIM4>;
    var dv: array<vec4<f32>, MAX_HEAD_DIM4>;
    // Queries from the block's first key on (a query sees keys up to itself), in tiles.
    for (var i0 = blk.r0 - blk.r0 % TILE_ROWS; i0 < params.t; i0 += TILE_ROWS) {
        workgroupBarrier();
        for (var e = lid; e < TILE_ROWS * hd4; e += WG) {
            let i = min(i0 + e / hd4, params.t - 1u);
            tile_a[e] = qkv[qkv_at(blk.b, i, 0u, blk.h) + e % hd4];
            tile_b[e] = dout[row_at(blk.b, i, blk.h) + e % hd4];
        }
        if (lid < TILE_ROWS) {
            let row = (blk.b * params.nh + blk.h) * params.t + min(i0 + lid, params.t - 1u);
            tile_lse[lid] = lse_saved[row];
            tile_delta[lid] = delta_saved[row];
        }
        workgroupBarrier();
        for (var r = 0u; r < TILE_ROWS; r++) {
            let i = i0 + r;
            if (!real || i < j || i >= params.t) { continue; }
            var s = 0.0;
            var dp = 0.0;
            for (var d = 0u; d < hd4; d++) {
                s += dot(tile_a[r * hd4 + d], kv[d]);
                dp += dot(tile_b[r * hd4 + d], vv[d]);
            }
            let p = exp(s * scale - tile_lse[r]);
            let ds = p * (dp - tile_delta[r]) * scale;
            for (var d = 0u; d < hd4; d++) {
                dk[d] += ds * tile_a[r * hd4 + d];
                dv[d] += p * tile_b[r * hd4 + d];
            }
        }
    }
    if (j < params.t) {
        for (var d = 0u; d < hd4; d++) {
            dqkv[k + d] = dk[d];
            dqkv[v + d] = dv[d];
        }
    }
}
