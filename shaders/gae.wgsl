// Generalised advantage estimation: the reverse scan A_t = δ_t + γλ·A_{t+1}, two ways.
//
// Per position t of a sequence, with the response mask m_t (1 on trained tokens, 0 elsewhere),
// values and rewards zeroed where m_t = 0 (so the value after the last response token is 0):
//   δ_t = m_t·r_t + γ·m_{t+1}·v_{t+1} − m_t·v_t
//   A_t = m_t·(δ_t + γλ·A_{t+1}),   A_T = 0;     R_t = A_t + m_t·v_t   (returns)
// Each step is an affine map A_t = d_t + c_t·A_{t+1} with (c_t, d_t) = (γλ·m_t, m_t·δ_t), and
// maps compose associatively: (c_a, d_a) ⊕ (c_b, d_b) = (c_a·c_b, d_a + c_a·d_b) for a before b.
//
//   gae_per_sequence: one invocation per sequence walks t = T−1 … 0: parallel over the batch,
//                     serial in time; best when B is large and T short.
//   gae_scan:         one workgroup of 256 per sequence, parallel in time too: each invocation
//                     composes the maps of its contiguous chunk of positions, the workgroup
//                     scans the 256 chunk maps from the end (Hillis–Steele, log2 256 steps),
//                     and each invocation replays its chunk from the A its successor starts at.
//                     For long responses (T in the thousands).
//
// Layout: rewards, values, mask, advantages, returns [B, T] f32, row-major.
// Launch: gae_per_sequence: workgroup 64, grid ceil(B/64); gae_scan: workgroup 256, grid B.

struct Params {
    b: u32,
    t: u32,
    gamma: f32,
    lam: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
const WG_SEQUENCES: u32 = 64u; // gae_per_sequence: sequences per workgroup (kernels::gae::WG_SEQUENCES)
const SCAN_CHUNKS: u32 = 256u; // gae_scan: invocations (chunks) per sequence (kernels::gae::SCAN_CHUNKS)
@group(0) @binding(1) var<storage, read> rewards: array<f32>;
@group(0) @binding(2) var<storage, read> values: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read_write> advantages: array<f32>;
@group(0) @binding(5) var<storage, read_write> returns: array<f32>;

// Masked value at position t of the sequence starting at `row` (0 past the end).
fn value_at(row: u32, t: u32) -> f32 {
    if (t >= params.t) { return 0.0; }
    return values[row + t] * mask[row + t];
}

// The affine map (c_t, d_t) of position t.
fn step_map(row: u32, t: u32) -> vec2<f32> {
    let m = mask[row + t];
    let delta = rewards[row + t] * m + params.gamma * value_at(row, t + 1u) - value_at(row, t);
    return vec2<f32>(params.gamma * params.lam * m, m * delta);
}

// (c_a, d_a) ⊕ (c_b, d_b): first a, then b.
fn compose(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a.x * b.x, a.y + a.x * b.y);
}

@compute @workgroup_size(WG_SEQUENCES)
fn gae_per_sequence(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if (b >= params.b) { return; }
    let row = b * params.t;
    var next = 0.0; // A_{t+1}
    for (var i = 0u; i < params.t; i++) {
        let t = params.t - 1u - i;
        let map = step_map(row, t);
        next = map.y + map.x * next;
        advantages[row + t] = next;
        returns[row + t] = next + value_at(row, t);
    }
}

var<workgroup> chunk_maps: array<vec2<f32>, SCAN_CHUNKS>;

@compute @workgroup_size(SCAN_CHUNKS)
fn gae_scan(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x * params.t;
    let chunk = (params.t + SCAN_CHUNKS - 1u) / SCAN_CHUNKS;
    let start = min(lid * chunk, params.t);
    let end = min(start + chunk, params.t);

    // 1. This chunk's composed map, from its last position back to its first.
    var map = vec2<f32>(1.0, 0.0); // identity
    for (var t = end; t > start; t--) {
        map = compose(step_map(row, t - 1u), map);
    }
    chunk_maps[lid] = map;
    workgroupBarrier();

    // 2. Inclusive suffix scan: chunk_maps[k] becomes chunk k ⊕ chunk k+1 ⊕ … ⊕ chunk SCAN_CHUNKS − 1.
    for (var offset = 1u; offset < SCAN_CHUNKS; offset *= 2u) {
        var combined = chunk_maps[lid];
        if (lid + offset < SCAN_CHUNKS) { combined = compose(combined, chunk_maps[lid + offset]); }
        workgroupBarrier();
        chunk_maps[lid] = combined;
        workgroupBarrier();
    }

    // 3. A at the start of the next chunk (0 after the last), then replay this chunk.
    var next = select(0.0, chunk_maps[min(lid + 1u, SCAN_CHUNKS - 1u)].y, lid + 1u < SCAN_CHUNKS);
    for (var t = end; t > start; t--) {
        let m = step_map(row, t - 1u);
        next = m.y + m.x * next;
        advantages[row + t - 1u] = next;
        returns[row + t - 1u] = next + value_at(row, t - 1u);
    }
}
