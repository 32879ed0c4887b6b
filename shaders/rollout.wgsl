// The glue between a rollout and the PPO update: per-token values, the packed loss inputs,
// gathering minibatch rows, and reading a sequence score at its last real token.
//
//   values_per_token:  out[b, j] = values[b, j − 1] (0 at j = 0): the value of the state that
//                      predicts token j, the batch file's `old_values` convention
//   pack_loss_inputs:  inputs[i] = (mask, old_logprob, old_value, advantage, return,
//                      ref_logprob, 1/n_b, 0), the [rows, 8] block the PPO loss kernels read,
//                      with n_b = Σ_{j ≥ 1} mask[b, j] the trained tokens of row b (1/n_b = 0
//                      for a row with none)
//   gather_rows:       dst[r, ·] = src[rows[r], ·] for rows of `width` values
//   last_token_scores: scores[b] = x[b, j*] with j* the last position where mask[b, j] ≠ 0
//                      (0 for a row with none): a reward head's output per sequence
//
// Layout: values, out, mask_f, logprobs, old_values, advantages, returns, ref_logprobs, x [B, T]
// f32 (row-major); inputs [B·T, 8]; mask_u [B, T] u32; src [N, width], dst [R, width], rows u32
// [R]; scores [B].
// Launch: last_token_scores: workgroup 64 per 64 rows, grid ceil(B/64); pack_loss_inputs: one
// workgroup of 256 per row, grid (B, 1, 1); the others one invocation per output value,
// workgroup 256, grid laid out 2D (x ≤ 65535).

struct Params {
    b: u32,
    t: u32,
    width: u32, // gather_rows: values per row
    n: u32,     // values written
}

@group(0) @binding(0) var<uniform> params: Params;
const INPUT_COLUMNS: u32 = 8u; // the PPO loss inputs per token (kernels::ppo::INPUT_COLUMNS)
const WG: u32 = 256u; // one invocation per value (kernels::rollout::WG)
const WG_SEQUENCES: u32 = 64u; // last_token_scores: sequences per workgroup (kernels::rollout::WG_SEQUENCES)
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> rows: array<u32>;
@group(0) @binding(4) var<storage, read> mask_u: array<u32>;
@group(0) @binding(5) var<storage, read> mask_f: array<f32>;
@group(0) @binding(6) var<storage, read> logprobs: array<f32>;
@group(0) @binding(7) var<storage, read> old_values: array<f32>;
@group(0) @binding(8) var<storage, read> advantages: array<f32>;
@group(0) @binding(9) var<storage, read> returns: array<f32>;
@group(0) @binding(10) var<storage, read> ref_logprobs: array<f32>;

fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn values_per_token(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= params.b * params.t) { return; }
    dst[i] = select(0.0, src[max(i, 1u) - 1u], i % params.t != 0u);
}

@compute @workgroup_size(WG)
fn pack_loss_inputs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = wid.x;
    let row = b * params.t;
    var trained = 0.0;
    for (var j = lid; j < params.t; j += WG) { trained += select(0.0, mask_f[row + j], j > 0u); }
    trained = workgroup_sum(lid, WG, trained);
    let inv_trained = select(0.0, 1.0 / trained, trained > 0.0);
    for (var j = lid; j < params.t; j += WG) {
        let i = row + j;
        let o = i * INPUT_COLUMNS;
        dst[o] = mask_f[i];
        dst[o + 1u] = logprobs[i];
        dst[o + 2u] = old_values[i];
        dst[o + 3u] = advantages[i];
        dst[o + 4u] = returns[i];
        dst[o + 5u] = ref_logprobs[i];
        dst[o + 6u] = inv_trained;
        dst[o + 7u] = 0.0;
    }
}

@compute @workgroup_size(WG)
fn gather_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if (i >= params.n) { return; }
    let r = i / params.width;
    dst[i] = src[rows[r] * params.width + i % params.width];
}

@compute @workgroup_size(WG_SEQUENCES)
fn last_token_scores(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if (b >= params.b) { return; }
    var score = 0.0;
    for (var j = 0u; j < params.t; j++) {
        if (mask_u[b * params.t + j] != 0u) { score = src[b * params.t + j]; }
    }
    dst[b] = score;
}
