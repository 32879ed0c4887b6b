// Advantages of the critic-free methods (docs/design.md §4). The completions of one prompt are
// G consecutive rows, a group; a completion's advantage compares its return with its group's.
//
//   sequence_returns:  returns[b] = Σ_t rewards[b, t]   (RLOO's return: the score plus the
//                      per-token KL penalty)
//   group_advantages:  for row b of the group g = ⌊b/G⌋ with returns r_1 … r_G,
//                        GRPO:           A_b = (r_b − mean_g) / (std_g + 1e−4)   (std unbiased)
//                        GRPO unscaled:  A_b = r_b − mean_g                      (Dr. GRPO)
//                        RLOO:           A_b = r_b − (Σ_g r − r_b)/(G − 1)       (leave one out)
//                      broadcast to the row's tokens: advantages[b, t] = mask[b, t]·A_b
//
// Layout: rewards, mask, advantages [B, T] f32 (row-major); returns [B] f32; B a multiple of G.
// Launch: sequence_returns: workgroup 64, grid ceil(B/64); group_advantages: one invocation per
// position, workgroup 256, grid ceil(B·T/256) laid out 2D (x ≤ 65535).

struct Params {
    b: u32,
    t: u32,
    group: u32,    // G, completions per prompt (≥ 2)
    baseline: u32, // BASELINE_* below
}

const BASELINE_MEAN_STD: u32 = 0u; // GRPO
const BASELINE_MEAN: u32 = 1u;     // GRPO without scaling
const BASELINE_LEAVE_ONE_OUT: u32 = 2u; // RLOO

const WG_SEQUENCES: u32 = 64u; // sequence_returns: sequences per workgroup (kernels::group_advantages::WG_SEQUENCES)
const WG: u32 = 256u; // group_advantages: positions per workgroup (kernels::group_advantages::WG)

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> rewards: array<f32>;
@group(0) @binding(2) var<storage, read_write> returns: array<f32>;
@group(0) @binding(3) var<storage, read> returns_in: array<f32>;
@group(0) @binding(4) var<storage, read> mask: array<f32>;
@group(0) @binding(5) var<storage, read_write> advantages: array<f32>;

@compute @workgroup_size(WG_SEQUENCES)
fn sequence_returns(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if (b >= params.b) { return; }
    var total = 0.0;
    for (var t = 0u; t < params.t; t++) { total += rewards[b * params.t + t]; }
    returns[b] = total;
}

@compute @workgroup_size(WG)
fn group_advantages(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.b * params.t) { return; }
    let b = i / params.t;
    let first = b - b % params.group;
    let g = f32(params.group);
    var sum = 0.0;
    for (var k = 0u; k < params.group; k++) { sum += returns_in[first + k]; }
    let mean = sum / g;
    let r = returns_in[b];
    var advantage = r - mean;
    if (params.baseline == BASELINE_MEAN_STD) {
        var sq = 0.0;
        for (var k = 0u; k < params.group; k++) {
            let d = returns_in[first + k] - mean;
            sq += d * d;
        }
        advantage /= sqrt(sq / (g - 1.0)) + 1e-4;
    } else if (params.baseline == BASELINE_LEAVE_ONE_OUT) {
        advantage = r - (sum - r) / (g - 1.0);
    }
    advantages[i] = mask[i] * advantage;
}
