// Sampling the next token of each row on the GPU: temperature, top-k, top-p (nucleus), greedy,
// with a counter-based random number per (seed, sample, step), so a sample's tokens do not
// depend on how the batch was split or on what the other rows drew.
//
// Per row with logits z (V values), ordering tokens by the order-preserving u32 key of z:
//   greedy (inv_temperature = 0): the largest z, the lowest index on ties.
//   w_i = exp((z_i − max z)·invτ)
//   θ_k = the k-th largest key (top_k = 0: no cut)             kept_k = {i : key_i ≥ θ_k}
//   θ   = the largest key κ ≥ θ_k with Σ_{key_i ≥ κ} w_i ≥ top_p · Σ_{kept_k} w_i
//   token = the first i (index order) with Σ_{j ≤ i, key_j ≥ θ} w_j > u · Σ_{key ≥ θ} w,
//           u = uniform(seed, sample, step) in [0, 1)
// θ_k and θ are found exactly by deciding one bit of the key per pass, high bit first (32
// passes of a counted or summed reduction over the row): a threshold, never a sort. Ties at the
// threshold are all kept (`reference::sample_threshold` defines the same set).
//
// Rows that already ended (done[b] = 1) emit `pad`; a row that samples `eos` ends.
//
// Layout: logits f32, row b at b·row_stride + row_base, V values; tokens u32 [B, steps] (column
// `step` written); next_ids, next_pos, done, prompt_len u32 [B] (next_pos[b] = prompt_len[b] +
// step: the position the token sits at).
// Launch: one workgroup of WG lanes per row, grid B (laid out 2D when B > 65535). WG is 256 (a
// GPU fills its lanes) or 32, chosen per adapter by measurement: on a CPU adapter the lanes of a
// workgroup take turns on one core and every barrier switches between them, so fewer lanes
// doing the same work each pass run faster.

struct Params {
    rows: u32,
    v: u32,
    row_stride: u32,
    row_base: u32,
    inv_temperature: f32, // 0: greedy
    top_k: u32,           // 0: no cut
    top_p: f32,           // ≥ 1: no cut
    step: u32,
    first_sample: u32,    // the global sample index of row 0 (the random stream's id)
    seed_lo: u32,
    seed_hi: u32,
    eos: u32,             // 0xFFFFFFFF: no end-of-sequence token
    pad: u32,
    steps: u32,           // columns of `tokens`
}

override WG: u32 = 256u;  // lanes per row: 256 or 32 (kernels::sampling::Lanes, chosen by measurement)
const MAX_WG: u32 = 256u; // the most lanes (kernels::sampling::MAX_LANES)

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> tokens: array<u32>;
@group(0) @binding(3) var<storage, read_write> next_ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> next_pos: array<u32>;
@group(0) @binding(5) var<storage, read_write> done: array<u32>;
@group(0) @binding(6) var<storage, read> prompt_len: array<u32>;

var<workgroup> chunk_mass: array<f32, MAX_WG>;
var<workgroup> chosen: u32;
var<workgroup> owner_and_rest: vec2<f32>; // the chunk that holds the draw, and what is left of u there
var<workgroup> row_done: u32;

// PCG hash (Jarzynski & Olano, "Hash Functions for GPU Rendering", 2020).
fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// Uniform in [0, 1) from (seed, sample, step); `reference::uniform_at` is the same function.
fn uniform_at(seed_lo: u32, seed_hi: u32, sample: u32, step: u32) -> f32 {
    let h = pcg(seed_lo ^ pcg(seed_hi ^ pcg(sample ^ pcg(step))));
    return f32(h >> 8u) * (1.0 / 16777216.0);
}

// An order-preserving map of f32 to u32: a < b ⇔ key(a) < key(b) (for non-NaN values).
fn key_of(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    return select(bits | 0x80000000u, ~bits, (bits & 0x80000000u) != 0u);
}

@compute @workgroup_size(WG)
fn sample_tokens(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= params.rows) { return; } // uniform across the workgroup
    let lid = lid3.x;
    let v = params.v;
    let base = row * params.row_stride + params.row_base;
    let out = row * params.steps + params.step;

    if (lid == 0u) { row_done = done[row]; }
    if (workgroupUniformLoad(&row_done) != 0u) {
        if (lid == 0u) {
            tokens[out] = params.pad;
            next_ids[row] = params.pad;
            next_pos[row] = prompt_len[row] + params.step;
        }
        return;
    }

    // The largest logit; for greedy also its lowest index.
    var m = NEG_BIG;
    for (var i = lid; i < v; i += WG) { m = max(m, logits[base + i]); }
    m = workgroup_max(lid, WG, m);

    if (params.inv_temperature == 0.0) {
        var first = f32(v); // indices are exact in f32 (V < 2^24)
        for (var i = lid; i < v; i += WG) {
            if (logits[base + i] == m) { first = min(first, f32(i)); }
        }
        first = workgroup_min(lid, WG, first);
        if (lid == 0u) { chosen = min(u32(first), v - 1u); }
    } else {
        let inv_t = params.inv_temperature;
        // θ_k: the largest key with at least k keys at or above it.
        var theta = 0u;
        if (params.top_k > 0u && params.top_k < v) {
            for (var bit = 31i; bit >= 0i; bit--) {
                let cand = theta | (1u << u32(bit));
                var n = 0.0; // counts are exact in f32 (V < 2^24)
                for (var i = lid; i < v; i += WG) { n += f32(key_of(logits[base + i]) >= cand); }
                if (workgroup_sum(lid, WG, n) >= f32(params.top_k)) { theta = cand; }
            }
        }
        // θ: the largest key (≥ θ_k) whose tail holds top_p of the kept mass.
        var total = 0.0;
        for (var i = lid; i < v; i += WG) {
            let z = logits[base + i];
            if (key_of(z) >= theta) { total += exp((z - m) * inv_t); }
        }
        total = workgroup_sum(lid, WG, total);
        if (params.top_p < 1.0) {
            // The largest key κ whose tail (within kept_k) holds the mass: decided bit by bit
            // from 0, the predicate being monotone in κ and true up to θ_k.
            let need = params.top_p * total;
            let theta_k = theta;
            var kappa = 0u;
            for (var bit = 31i; bit >= 0i; bit--) {
                let cand = kappa | (1u << u32(bit));
                let cut = max(cand, theta_k);
                var mass = 0.0;
                for (var i = lid; i < v; i += WG) {
                    let z = logits[base + i];
                    if (key_of(z) >= cut) { mass += exp((z - m) * inv_t); }
                }
                if (workgroup_sum(lid, WG, mass) >= need) { kappa = cand; }
            }
            theta = max(kappa, theta_k);
        }
        // Each invocation owns a contiguous chunk of the row; the chunk holding the u-quantile
        // of the kept mass (found from the chunks' sums in order) is walked by its owner.
        let chunk = (v + WG - 1u) / WG;
        let lo = min(lid * chunk, v);
        let hi = min(lo + chunk, v);
        var mine = 0.0;
        for (var i = lo; i < hi; i++) {
            let z = logits[base + i];
            if (key_of(z) >= theta) { mine += exp((z - m) * inv_t); }
        }
        chunk_mass[lid] = mine;
        workgroupBarrier();
        if (lid == 0u) {
            var kept = 0.0;
            for (var j = 0u; j < WG; j++) { kept += chunk_mass[j]; }
            let goal = uniform_at(params.seed_lo, params.seed_hi, params.first_sample + row, params.step) * kept;
            // The owner: the last chunk with mass whose prefix is ≤ goal (rounding-safe).
            var owner = 0u;
            var prefix = 0.0;
            var owner_prefix = 0.0;
            for (var j = 0u; j < WG; j++) {
                if (chunk_mass[j] > 0.0 && prefix <= goal) {
                    owner = j;
                    owner_prefix = prefix;
                }
                prefix += chunk_mass[j];
            }
            owner_and_rest = vec2<f32>(f32(owner), goal - owner_prefix);
        }
        workgroupBarrier();
        let owner = u32(owner_and_rest.x);
        var r = owner_and_rest.y;
        if (lid == owner) {
            var pick = 0xFFFFFFFFu;
            var last = lo;
            for (var i = lo; i < hi; i++) {
                let z = logits[base + i];
                if (key_of(z) < theta) { continue; }
                let w = exp((z - m) * inv_t);
                last = i;
                if (r < w) {
                    pick = i;
                    break;
                }
                r -= w;
            }
            chosen = select(pick, last, pick == 0xFFFFFFFFu);
        }
    }
    workgroupBarrier();
    if (lid == 0u) {
        let token = chosen;
        tokens[out] = token;
        next_ids[row] = token;
        next_pos[row] = prompt_len[row] + params.step;
        if (token == params.eos) { done[row] = 1u; }
    }
}
