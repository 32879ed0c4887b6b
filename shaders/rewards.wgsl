// Per-token rewards with the KL penalty, and masked whitening (docs/design.md §4).
//
//   kl_rewards (one invocation per sequence):
//     k_t = logp_old − logp_ref                       (k1, the default)
//         or (ρ − 1) − log ρ with ρ = p_ref/p_old     (k3: unbiased, never negative)
//     kl_t = m_t·k_t,   r_t = −β·kl_t,   plus the sequence's score at its last trained token
//   masked_moments (one workgroup): mean and unbiased variance of x over m = 1, as TRL's
//     masked_mean / masked_var(unbiased=True); moments = [mean, var, count]
//   masked_whiten (one invocation per element): x ← m·(x − mean)/sqrt(var + 1e−8)
//     (with shift_mean = 0 the mean is added back, as TRL whitens rewards)
//
// Layout: logp_old, logp_ref, mask, kl, rewards, x [B, T] f32; scores [B]; moments [3].
// Launch: kl_rewards: workgroup 64, grid ceil(B/64); masked_moments: one workgroup of 256;
// masked_whiten: workgroup 256, grid ceil(B·T/256) laid out 2D (x ≤ 65535).

struct Params {
    b: u32,
    t: u32,
    beta: f32,
    k3: u32,         // 1: the k3 estimator
    shift_mean: u32, // masked_whiten: 0 adds the mean back
}

@group(0) @binding(0) var<uniform> params: Params;
const WG_SEQUENCES: u32 = 64u; // kl_rewards: sequences per workgroup (kernels::rewards::WG_SEQUENCES)
const WG: u32 = 256u; // masked_moments, masked_whiten: invocations per workgroup (kernels::rewards::WG)
@group(0) @binding(1) var<storage, read> logp_old: array<f32>;
@group(0) @binding(2) var<storage, read> logp_ref: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read> scores: array<f32>;
@group(0) @binding(5) var<storage, read_write> kl: array<f32>;
@group(0) @binding(6) var<storage, read_write> rewards: array<f32>;
@group(0) @binding(7) var<storage, read_write> x: array<f32>;
@group(0) @binding(8) var<storage, read_write> moments: array<f32>;

@compute @workgroup_size(WG_SEQUENCES)
fn kl_rewards(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if (b >= params.b) { return; }
    let row = b * params.t;
    var last = params.t; // none yet
    for (var t = 0u; t < params.t; t++) {
        let i = row + t;
        let m = mask[i];
        let log_ratio = logp_ref[i] - logp_old[i];
        let k = select(-log_ratio, exp(log_ratio) - 1.0 - log_ratio, params.k3 != 0u);
        kl[i] = m * k;
        rewards[i] = -params.beta * m * k;
        if (m != 0.0) { last = t; }
    }
    if (last < params.t) { rewards[row + last] += scores[b]; }
}

@compute @workgroup_size(WG)
fn masked_moments(@builtin(local_invocation_index) lid: u32) {
    let n = params.b * params.t;
    // Pass 1: Σ m·x and Σ m.
    var sx = 0.0;
    var sm = 0.0;
    for (var i = lid; i < n; i += WG) {
        sx += mask[i] * x[i];
        sm += mask[i];
    }
    let count = workgroup_sum(lid, WG, sm);
    let mean = workgroup_sum(lid, WG, sx) / max(count, 1.0);
    // Pass 2: Σ m·(x − mean)², which keeps the variance accurate when |mean| ≫ std.
    var sq = 0.0;
    for (var i = lid; i < n; i += WG) {
        let d = x[i] - mean;
        sq += mask[i] * d * d;
    }
    let sum_sq = workgroup_sum(lid, WG, sq);
    if (lid == 0u) {
        moments[0] = mean;
        moments[1] = sum_sq / max(count - 1.0, 1.0); // Bessel's correction, as TRL
        moments[2] = count;
    }
}

@group(0) @binding(9) var<storage, read> moments_in: array<f32>;

@compute @workgroup_size(WG)
fn masked_whiten(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.b * params.t) { return; }
    let mean = moments_in[0];
    var w = (x[i] - mean) * inverseSqrt(moments_in[1] + 1e-8);
    if (params.shift_mean == 0u) { w += mean; }
    x[i] = mask[i] * w;
}
