// The Bradley–Terry preference loss of reward-model training, with its gradient.
//
// Pair i holds two sequences: row 2i the chosen response, row 2i + 1 the rejected one. A
// sequence's reward r is the score head's output at its last real token (mask ≠ 0). Then
//   d_i = r_chosen − r_rejected,   loss_i = −log σ(d_i) = softplus(−d_i)   (computed stably)
//   L = (1/N) Σ_i loss_i
//   ∂L/∂r_chosen = −σ(−d_i)/N,   ∂L/∂r_rejected = +σ(−d_i)/N
// drewards holds these at the two last-token positions and 0 everywhere else, ready for the
// model's backward through the score head. pair_stats[i] = (loss_i, 1 if d_i > 0 else 0).
//
// Layout: rewards, drewards [2N, T] f32; mask [2N, T] u32; pair_stats [N, 2] f32.
// Launch: one invocation per pair, workgroup 64, grid ceil(N/64).

struct Params {
    pairs: u32,
    t: u32,
    inv_pairs: f32, // 1/N
}

@group(0) @binding(0) var<uniform> params: Params;
const WG: u32 = 64u; // pairs per workgroup (kernels::preference::WG)
@group(0) @binding(1) var<storage, read> rewards: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read_write> drewards: array<f32>;
@group(0) @binding(4) var<storage, read_write> pair_stats: array<f32>;

// The flat index of row's last real token, zeroing the row's gradient on the way (the row
// start when it has none).
fn last_real_token(row: u32) -> u32 {
    var last = row * params.t;
    for (var j = 0u; j < params.t; j++) {
        let i = row * params.t + j;
        drewards[i] = 0.0;
        if (mask[i] != 0u) { last = i; }
    }
    return last;
}

@compute @workgroup_size(WG)
fn bradley_terry(@builtin(global_invocation_id) gid: vec3<u32>) {
    let pair = gid.x;
    if (pair >= params.pairs) { return; }
    let chosen = last_real_token(2u * pair);
    let rejected = last_real_token(2u * pair + 1u);
    let d = rewards[chosen] - rewards[rejected];
    // softplus(−d) = max(−d, 0) + log(1 + exp(−|d|));  σ(−d) = exp(−softplus(d))
    let loss = max(-d, 0.0) + log(1.0 + exp(-abs(d)));
    let sig_neg = exp(-(max(d, 0.0) + log(1.0 + exp(-abs(d)))));
    drewards[chosen] = -sig_neg * params.inv_pairs;
    drewards[rejected] = sig_neg * params.inv_pairs;
    pair_stats[2u * pair] = loss;
    pair_stats[2u * pair + 1u] = select(0.0, 1.0, d > 0.0);
}
