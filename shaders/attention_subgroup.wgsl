// Attention with the rows each step reads shared across a subgroup: the per-query entry points
// of attention.wgsl (which is included after this file: the math, bindings, Params, the cells
// and qkv4/dout4 come from there) for adapters whose texel fetches cost more than the
// arithmetic they feed (lavapipe: docs/design.md §2).
//
//   attention_forward_sg, attention_backward_query_sg: as attention_forward and
//       attention_backward_query, an invocation per query.
//   attention_backward_key_value_sg: as attention_backward_key_value, an invocation per key.
//
// The 8 invocations of a subgroup hold 8 consecutive queries (keys) of one (b, h), so at each
// step of the loop over keys (queries) they all need the same two rows: a key and its value
// (a query and its dout row). Each lane fetches a share of their texels and subgroupBroadcast
// hands them round (`hand_round`): 2·HEAD_DIM/32 fetches per lane and step where the
// per-query kernels make 2·HEAD_DIM/4. The loop runs to the subgroup's last query (from its
// first key), each lane skipping the steps its own causal window leaves out after fetching
// its share. Subgroup operations need the adapter's SUBGROUP feature, so these entries live in
// a module of their own.
//
// Layout as attention.wgsl. Launch: one invocation per (b, h, t) for t below T8 = T rounded up to
// a multiple of 8 (`decode_sg`: the lanes past T stand in for T − 1 and store nothing), flat
// index (b·NH + h)·T8 + t, workgroup 64, grid laid out 2D; subgroups of exactly 8 invocations
// of consecutive flat indices, and HEAD_DIM 16, 32 or 64 (the host runs other head dimensions on
// attention.wgsl; the variant is checked against the CPU reference before it can be chosen).

// A lane's share of two rows of one head (HEAD_DIM/4 texels each): SHARE = HEAD_DIM/16 texels,
// which `share_texel` names. Together the 8 lanes' shares are both rows whole.
const MAX_SHARE: u32 = 4u;
alias Share = array<vec4<f32>, MAX_SHARE>;

// Two rows of one head, as every lane of a subgroup receives them (`hand_round`).
struct TwoRows {
    x: array<vec4<f32>, 16>,
    y: array<vec4<f32>, 16>,
}

// Which texel is slot i of lane `lane`'s share: (1 for the second row y, else 0; its texel).
// At HEAD_DIM 16 lanes 0–3 fetch x's 4 texels and lanes 4–7 y's; at 32 lane l fetches texel l
// of each; at 64 texels 2l and 2l + 1 of each.
fn share_texel(i: u32, lane: u32) -> vec2<u32> {
    if (HEAD_DIM == 16u) { return vec2<u32>(u32(lane >= 4u), lane % 4u); }
    if (HEAD_DIM == 32u) { return vec2<u32>(i, lane); }
    return vec2<u32>(i / 2u, 2u * lane + i % 2u);
}

// The lane's share of a key (x, at cell k of qkv) and its value (y, at v).
fn key_value_share(k: vec2<u32>, v: vec2<u32>, lane: u32) -> Share {
    var s: Share;
    for (var i = 0u; i < HEAD_DIM / 16u; i++) {
        let t = share_texel(i, lane);
        s[i] = qkv4(select(k, v, t.x == 1u), t.y);
    }
    return s;
}

// The lane's share of a query (x, at cell q of qkv) and its dout row (y, at o of dout).
fn query_dout_share(q: vec2<u32>, o: vec2<u32>, lane: u32) -> Share {
    var s: Share;
    for (var i = 0u; i < HEAD_DIM / 16u; i++) {
        let t = share_texel(i, lane);
        if (t.x == 1u) { s[i] = dout4(o, t.y); } else { s[i] = qkv4(q, t.y); }
    }
    return s;
}

// Both rows whole, from the 8 lanes' shares (share_texel's assignment read backwards) with
// subgroupBroadcast. Every lane of the subgroup must call it at once.
fn hand_round(s: Share) -> TwoRows {
    var r: TwoRows;
    if (HEAD_DIM == 16u) {
        r.x[0] = subgroupBroadcast(s[0], 0u); r.x[1] = subgroupBroadcast(s[0], 1u);
        r.x[2] = subgroupBroadcast(s[0], 2u); r.x[3] = subgroupBroadcast(s[0], 3u);
        r.y[0] = subgroupBroadcast(s[0], 4u); r.y[1] = subgroupBroadcast(s[0], 5u);
        r.y[2] = subgroupBroadcast(s[0], 6u); r.y[3] = subgroupBroadcast(s[0], 7u);
    } else if (HEAD_DIM == 32u) {
        r.x[0] = subgroupBroadcast(s[0], 0u); r.x[1] = subgroupBroadcast(s[0], 1u);
        r.x[2] = subgroupBroadcast(s[0], 2u); r.x[3] = subgroupBroadcast(s[0], 3u);
        r.x[4] = subgroupBroadcast(s[0], 4u); r.x[5] = subgroupBroadcast(s[0], 5u);
        r.x[6] = subgroupBroadcast(s[0], 6u); r.x[7] = subgroupBroadcast(s[0], 7u);
        r.y[0] = subgroupBroadcast(s[1], 0u); r.y[1] = subgroupBroadcast(s[1], 1u);
        r.y[2] = subgroupBroadcast(s[1], 2u); r.y[3] = subgroupBroadcast(s[1], 3u);
        r.y[4] = subgroupBroadcast(s[1], 4u); r.y[5] = subgroupBroadcast(s[1], 5u);
        r.y[6] = subgroupBroadcast(s[1], 6u); r.y[7] = subgroupBroadcast(s[1], 7u);
    } else {
        r.x[0] = subgroupBroadcast(s[0], 0u); r.x[1] = subgroupBroadcast(s[1], 0u);
        r.x[2] = subgroupBroadcast(s[0], 1u); r.x[3] = subgroupBroadcast(s[1], 1u);
        r.x[4] = subgroupBroadcast(s[0], 2u); r.x[5] = subgroupBroadcast(s[1], 2u);
        r.x[6] = subgroupBroadcast(s[0], 3u); r.x[7] = subgroupBroadcast(s[1], 3u);
        r.x[8] = subgroupBroadcast(s[0], 4u); r.x[9] = subgroupBroadcast(s[1], 4u);
        r.x[10] = subgroupBroadcast(s[0], 5u); r.x[11] = subgroupBroadcast(s[1], 5u);
        r.x[12] = subgroupBroadcast(s[0], 6u); r.x[13] = subgroupBroadcast(s[1], 6u);
        r.x[14] = subgroupBroadcast(s[0], 7u); r.x[15] = subgroupBroadcast(s[1], 7u);
        r.y[0] = subgroupBroadcast(s[2], 0u); r.y[1] = subgroupBroadcast(s[3], 0u);
        r.y[2] = subgroupBroadcast(s[2], 1u); r.y[3] = subgroupBroadcast(s[3], 1u);
        r.y[4] = subgroupBroadcast(s[2], 2u); r.y[5] = subgroupBroadcast(s[3], 2u);
        r.y[6] = subgroupBroadcast(s[2], 3u); r.y[7] = subgroupBroadcast(s[3], 3u);
        r.y[8] = subgroupBroadcast(s[2], 4u); r.y[9] = subgroupBroadcast(s[3], 4u);
        r.y[10] = subgroupBroadcast(s[2], 5u); r.y[11] = subgroupBroadcast(s[3], 5u);
        r.y[12] = subgroupBroadcast(s[2], 6u); r.y[13] = subgroupBroadcast(s[3], 6u);
        r.y[14] = subgroupBroadcast(s[2], 7u); r.y[15] = subgroupBroadcast(s[3], 7u);
    }
    return r;
}

// The invocation's (b, h, t) in these entry points' grid, in which each (b, h) has T rounded up
// to T8, a multiple of 8, positions, so that the 8 lanes of a subgroup share one (b, h) whatever
// T. A lane at a position t ≥ T (`stores` false) stands in for position T − 1: it fetches its
// share and computes like it, and stores nothing. `ix.valid` is false for whole subgroups past
// the last (b, h).
struct LaneIndex {
    ix: Index,
    stores: bool,
}

fn decode_sg(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> LaneIndex {
    let t8 = (params.t + 7u) / 8u * 8u;
    let flat8 = (wid.y * nwg.x + wid.x) * WG + lid;
    let bh = flat8 / t8;
    let t = min(flat8 % t8, params.t - 1u);
    let ix = Index(bh < params.b * params.nh, bh * params.t + t, bh / params.nh, bh % params.nh, t);
    return LaneIndex(ix, flat8 % t8 < params.t);
}

@compute @workgroup_size(WG)
fn attention_forward_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let lane_ix = decode_sg(wid, nwg, lid);
    let ix = lane_ix.ix;
    if (!ix.valid) { return; } // whole subgroups
    let scale = inverseSqrt(f32(HEAD_DIM));
    let q = qkv_cell(ix.b, ix.t, 0u, ix.h);
    var qv: array<vec4<f32>, 16>;
    for (var d = 0u; d < HEAD_DIM / 4u; d++) { qv[d] = qkv4(q, d); }
    var acc: array<vec4<f32>, 16>;
    var m = NEG_BIG;
    var l = 0.0;
    let last = subgroupMax(ix.t);
    for (var j = 0u; j <= last; j++) {
        if (mask[ix.b * params.t + j] == 0u) { continue; } // the same key for every lane
        let kv = hand_round(key_value_share(qkv_cell(ix.b, j, 1u, ix.h), qkv_cell(ix.b, j, 2u, ix.h), lane));
        if (j > ix.t) { continue; } // past this lane's query: fetched for the others
        var s = 0.0;
        for (var d = 0u; d < HEAD_DIM / 4u; d++) { s += dot(qv[d], kv.x[d]); }
        s *= scale;
        let m_new = max(m, s);
        let correction = exp(m - m_new);
        let p = exp(s - m_new);
        l = l * correction + p;
        for (var d = 0u; d < HEAD_DIM / 4u; d++) { acc[d] = acc[d] * correction + p * kv.y[d]; }
        m = m_new;
    }
    if (!lane_ix.stores) { return; }
    let o = row_at(ix.b, ix.t, ix.h);
    let inv_l = select(0.0, 1.0 / l, l > 0.0);
    for (var d = 0u; d < HEAD_DIM / 4u; d++) { out[o + d] = acc[d] * inv_l; }
    lse[ix.flat] = select(0.0, m + log(l), l > 0.0);
}

@compute @workgroup_size(WG)
fn attention_backward_query_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                               @builtin(local_invocation_index) lid: u32,
                               @builtin(subgroup_invocation_id) lane: u32) {
    let lane_ix = decode_sg(wid, nwg, lid);
    let ix = lane_ix.ix;
    if (!ix.valid) { return; }
    let scale = inverseSqrt(f32(HEAD_DIM));
    let q = qkv_cell(ix.b, ix.t, 0u, ix.h);
    let o = row_cell(ix.b, ix.t, ix.h);
    let o_saved = row_at(ix.b, ix.t, ix.h);
    var qv: array<vec4<f32>, 16>;
    var dov: array<vec4<f32>, 16>;
    var d_i = 0.0;
    for (var d = 0u; d < HEAD_DIM / 4u; d++) {
        qv[d] = qkv4(q, d);
        dov[d] = dout4(o, d);
        d_i += dot(dov[d], out_saved[o_saved + d]);
    }
    if (lane_ix.stores) { delta[ix.flat] = d_i; } // for the key/value kernel
    let lse_i = lse_saved[ix.flat];
    var dq: array<vec4<f32>, 16>;
    let last = subgroupMax(ix.t);
    for (var j = 0u; j <= last; j++) {
        if (mask[ix.b * params.t + j] == 0u) { continue; }
        let kv = hand_round(key_value_share(qkv_cell(ix.b, j, 1u, ix.h), qkv_cell(ix.b, j, 2u, ix.h), lane));
        if (j > ix.t) { continue; }
        var s = 0.0;
        var dp = 0.0;
        for (var d = 0u; d < HEAD_DIM / 4u; d++) {
            s += dot(qv[d], kv.x[d]);
            dp += dot(dov[d], kv.y[d]);
        }
        let p = exp(s * scale - lse_i);
        let ds = p * (dp - d_i) * scale;
        for (var d = 0u; d < HEAD_DIM / 4u; d++) { dq[d] += ds * kv.x[d]; }
    }
    if (!lane_ix.stores) { return; }
    let dq_at = flat(q, 3u * params.c / 4u);
    for (var d = 0u; d < HEAD_DIM / 4u; d++) { dqkv[dq_at + d] = dq[d]; }
}

@compute @workgroup_size(WG)
fn attention_backward_key_value_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                   @builtin(local_invocation_index) lid: u32,
                                   @builtin(subgroup_invocation_id) lane: u32) {
    let lane_ix = decode_sg(wid, nwg, lid);
    let ix = lane_ix.ix;
    if (!ix.valid) { return; }
    let scale = inverseSqrt(f32(HEAD_DIM));
    let j = ix.t;
    let k = qkv_cell(ix.b, j, 1u, ix.h);
    let v = qkv_cell(ix.b, j, 2u, ix.h);
    var kv: array<vec4<f32>, 16>;
    var vv: array<vec4<f32>, 16>;
    for (var d = 0u; d < HEAD_DIM / 4u; d++) {
        kv[d] = qkv4(k, d);
        vv[d] = qkv4(v, d);
    }
    var dk: array<vec4<f32>, 16>;
    var dv: array<vec4<f32>, 16>;
    // A masked key is seen by no query; every query i ≥ j sees a real key j, so lse_i is finite.
    let real = mask[ix.b * params.t + j] != 0u;
    for (var i = subgroupMin(j); i < params.t; i++) {
        let rows = hand_round(query_dout_share(qkv_cell(ix.b, i, 0u, ix.h), row_cell(ix.b, i, ix.h), lane));
        if (!real || i < j) { continue; } // before this lane's key: fetched for the others
        let row = (ix.b * params.nh + ix.h) * params.t + i;
        var s = 0.0;
        var dp = 0.0;
        for (var d = 0u; d < HEAD_DIM / 4u; d++) {
            s += dot(rows.x[d], kv[d]);
            dp += dot(rows.y[d], vv[d]);
        }
        let p = exp(s * scale - lse_saved[row]);
        let ds = p * (dp - delta_saved[row]) * scale;
        for (var d = 0u; d < HEAD_DIM / 4u; d++) {
            dk[d] += ds * rows.x[d];
            dv[d] += p * rows.y[d];
        }
    }
    if (!lane_ix.stores) { return; }
    let k_at = flat(k, 3u * params.c / 4u);
    let v_at = flat(v, 3u * params.c / 4u);
    for (var d = 0u; d < HEAD_DIM / 4u; d++) {
        dqkv[k_at + d] = dk[d];
        dqkv[v_at + d] = dv[d];
    }
}
