// The fused PPO loss: log-softmax, gather of the taken token, entropy, the clipped surrogate,
// the KL penalty to the reference, the clipped value loss and the entropy bonus, with the
// gradient written in place of the logits, in two passes over each row of logits
// (docs/design.md §4). Two forms: `ppo_loss_fused` with the value loss (PPO), and
// `critic_free_loss_fused` without one (GRPO, RLOO: no value head).
//
// Row r of the logits is the policy's output at position r of a sequence, which predicts the
// token at position r + 1; every per-token input below is indexed by that token's position, so
// row r reads entry r + 1 (and the last position of each sequence predicts nothing). With the
// temperature τ, z = logits/τ, p = softmax(z):
//
//   logp = z[a] − lse,  H = lse − Σ p·z,  ρ = exp(logp − logp_old)
//   ℓ_pg = max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε))
//   k3   = e^d − d − 1 with d = logp_ref − logp (the KL to the reference, inside the loss: GRPO)
//   v_c  = v_old + clip(v − v_old, −ε_v, ε_v),  ℓ_v = ½·max((v − R)², (v_c − R)²)     (PPO only)
//   L    = Σ_tokens w·(ℓ_pg + β·k3 + c1·ℓ_v − c2·H)
//
// The token weight w makes L a mean: w = 1/N over the N trained tokens of the minibatch (PPO,
// RLOO, GRPO's loss type dapo), or w = 1/(S·n_i) for a token of sequence i with n_i trained
// tokens among the minibatch's S sequences (GRPO's loss type grpo: the mean over sequences of
// each sequence's mean).
//
//   ∂L/∂logp = w·(−A·ρ·[the unclipped term is the max; ties count as unclipped] + β·(1 − e^d))
//   ∂L/∂H    = −c2·w
//   ∂L/∂z    = ∂L/∂logp·(onehot(a) − p) − ∂L/∂H·p·(log p + H),    ∂L/∂logits = ∂L/∂z / τ
//   ∂L/∂v    = c1·w·(v − R) if the unclipped value term is the max, else c1·w·(v_c − R)·[|v − v_old| ≤ ε_v]
//
// Pass 1 reads the row once with the online recurrence, carrying the running max m, the sum
// l = Σ e^{z−m} and s = Σ e^{z−m}·z (rescaled together when m grows), so lse = m + log l and
// Σ p·z = s/l come out of a single read and the softmax is never stored. Pass 2 reads the row
// again and overwrites it with ∂L/∂logits, as llm.c's fused classifier does.
//
// Layout: logits [rows, V] (rows = B·T, overwritten by the gradient; rows whose next token is
// not trained become zero); tokens [rows] u32; inputs [rows, 8] f32 per token position:
// (response_mask, old_logprob, old_value, advantage, return, ref_logprob, 1/n_i, 0); values
// [rows] (the value head, row r at position r); dvalues [rows] (∂L/∂values, row r); token_stats
// [rows, 8] (see STAT_* below, already weighted, 0 for untrained rows) for `ppo_stats_reduce`.
// Launch: `ppo_loss_fused`, `critic_free_loss_fused`: one workgroup of 64 per row, grid = rows
// laid out 2D (x ≤ 65535). Row r of the minibatch is row r − row_offset of the bound logits.
// The _serial entry points (here and `logprob_entropy_rows_serial` below) are another layout,
// chosen by measurement (kernels::ppo::row_variant): one invocation per row, workgroup 64,
// grid = ceil(rows/64). The third, a subgroup per row, is in ppo_loss_subgroup.wgsl.

struct Params {
    rows: u32,            // rows of logits bound in this dispatch
    row_offset: u32,      // the first of them in the minibatch (logits larger than one
                          // binding are processed in row slices; the rest is bound whole)
    seq: u32,             // T: positions per sequence
    v: u32,               // vocabulary
    inv_temperature: f32, // 1/τ
    cliprange: f32,       // ε
    cliprange_value: f32, // ε_v
    vf_coef: f32,         // c1
    ent_coef: f32,        // c2
    inv_count: f32,       // 1/N, N = number of trained tokens in the minibatch
    kl_coef: f32,         // β of the KL term inside the loss (0: none, and logp_ref unread)
    inv_sequences: f32,   // 1/S, S = number of sequences in the minibatch
    sequence_mean: u32,   // 1: w = 1/(S·n_i) (GRPO's loss type grpo); 0: w = 1/N
    rows_per_group: u32,  // the subgroup entries (ppo_loss_subgroup.wgsl): rows per workgroup
}

const WG: u32 = 64u;
const INPUT_COLUMNS: u32 = 8u; // per-token inputs (kernels::ppo::INPUT_COLUMNS)
const STATS: u32 = 8u; // per-token statistics (kernels::ppo::STAT_NAMES.len())

// Columns of `inputs`.
const IN_MASK: u32 = 0u;
const IN_OLD_LOGP: u32 = 1u;
const IN_OLD_VALUE: u32 = 2u;
const IN_ADVANTAGE: u32 = 3u;
const IN_RETURN: u32 = 4u;
const IN_REF_LOGP: u32 = 5u;
const IN_INV_SEQUENCE_TOKENS: u32 = 6u; // 1/n_i, n_i = trained tokens of the token's sequence

// Columns of `token_stats`: each token's share of the minibatch's figure. The loss and its
// terms carry the token weight w (so that they sum to L); the diagnostics are means over the
// trained tokens (weight 1/N) whatever the loss type.
const STAT_LOSS: u32 = 0u;        // ℓ_pg + β·k3 + c1·ℓ_v − c2·H, weighted by w
const STAT_PG_LOSS: u32 = 1u;     // ℓ_pg, weighted by w
const STAT_VF_LOSS: u32 = 2u;     // ℓ_v, weighted by w (0 without a value head)
const STAT_ENTROPY: u32 = 3u;
const STAT_APPROX_KL: u32 = 4u;   // ½·(logp − logp_old)²
const STAT_CLIPFRAC: u32 = 5u;    // [|ρ − 1| > ε]
const STAT_VF_CLIPFRAC: u32 = 6u; // [(v_c − R)² > (v − R)²]
const STAT_RATIO: u32 = 7u;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read> inputs: array<f32>;
@group(0) @binding(4) var<storage, read> values: array<f32>;
@group(0) @binding(5) var<storage, read_write> dvalues: array<f32>;
@group(0) @binding(6) var<storage, read_write> token_stats: array<f32>;
// VEC4 (V a multiple of 4, as the model's padded vocabulary always is): the row walks below read
// and write the logits as vec4s at binding 13, a quarter of the loads and stores, folding four
// logits per step of the online recurrence (softmax_state_add4); their (start, step) then count
// vec4s. The host binds the logits at the binding the specialisation reads and a 4-float
// stand-in at the other (one buffer at both, writable, would alias: WebGPU forbids it).
override VEC4: bool = false;
@group(0) @binding(13) var<storage, read_write> logits4: array<vec4<f32>>;


// Row r trains on the token at r + 1 when that position is in the same sequence and masked in.
fn trained(r: u32) -> bool {
    return (r % params.seq) + 1u < params.seq && inputs[(r + 1u) * INPUT_COLUMNS + IN_MASK] != 0.0;
}

// What one row contributes: the coefficients its gradient needs, and its statistics.
struct RowLoss {
    dlogp: f32,    // ∂L/∂logp
    dentropy: f32, // ∂L/∂H
    dvalue: f32,   // ∂L/∂v (0 until `add_value_loss`)
    stats: array<f32, 8>,
}

// The policy's part of the loss after the row's log-softmax (the surrogate, the KL term, the
// entropy bonus): scalar work, shared by the fused and unfused paths and by both forms.
fn row_loss(r: u32, logp: f32, entropy: f32) -> RowLoss {
    let at = (r + 1u) * INPUT_COLUMNS;
    let old_logp = inputs[at + IN_OLD_LOGP];
    let advantage = inputs[at + IN_ADVANTAGE];
    let n = params.inv_count;
    let w = select(n, inputs[at + IN_INV_SEQUENCE_TOKENS] * params.inv_sequences, params.sequence_mean != 0u);
    let eps = params.cliprange;

    let ratio = exp(logp - old_logp);
    let pg_unclipped = -advantage * ratio;
    let pg_clipped = -advantage * clamp(ratio, 1.0 - eps, 1.0 + eps);
    let pg_loss = max(pg_unclipped, pg_clipped);
    // d(−A·ρ)/dlogp = −A·ρ; the clipped branch is flat in logp whenever it is the larger one
    // (and clip's own gradient is zero outside the range that decides it).
    var dlogp = select(0.0, pg_unclipped, pg_unclipped >= pg_clipped);
    var kl = 0.0;
    if (params.kl_coef != 0.0) { // uniform; without it logp_ref is not read (e^d may overflow)
        let d = inputs[at + IN_REF_LOGP] - logp;
        kl = exp(d) - d - 1.0;
        dlogp += params.kl_coef * (1.0 - exp(d));
    }

    var out: RowLoss;
    out.dlogp = dlogp * w;
    out.dentropy = -params.ent_coef * w;
    out.dvalue = 0.0;
    out.stats[STAT_LOSS] = (pg_loss + params.kl_coef * kl - params.ent_coef * entropy) * w;
    out.stats[STAT_PG_LOSS] = pg_loss * w;
    out.stats[STAT_VF_LOSS] = 0.0;
    out.stats[STAT_ENTROPY] = entropy * n;
    out.stats[STAT_APPROX_KL] = 0.5 * (logp - old_logp) * (logp - old_logp) * n;
    out.stats[STAT_CLIPFRAC] = select(0.0, n, abs(ratio - 1.0) > eps);
    out.stats[STAT_VF_CLIPFRAC] = 0.0;
    out.stats[STAT_RATIO] = ratio * n;
    return out;
}

// PPO's clipped value loss for row r with the value head's output v, added to `loss`.
fn add_value_loss(r: u32, loss: ptr<function, RowLoss>, v: f32) {
    let at = (r + 1u) * INPUT_COLUMNS;
    let old_value = inputs[at + IN_OLD_VALUE];
    let ret = inputs[at + IN_RETURN];
    let n = params.inv_count;
    let w = select(n, inputs[at + IN_INV_SEQUENCE_TOKENS] * params.inv_sequences, params.sequence_mean != 0u);
    let dv_raw = v - old_value;
    let v_clipped = old_value + clamp(dv_raw, -params.cliprange_value, params.cliprange_value);
    let vf_unclipped = (v - ret) * (v - ret);
    let vf_clipped = (v_clipped - ret) * (v_clipped - ret);
    let vf_loss = 0.5 * max(vf_unclipped, vf_clipped);
    let inside = abs(dv_raw) <= params.cliprange_value;
    (*loss).dvalue =
        params.vf_coef * w * select(select(0.0, v_clipped - ret, inside), v - ret, vf_unclipped >= vf_clipped);
    (*loss).stats[STAT_LOSS] += params.vf_coef * vf_loss * w;
    (*loss).stats[STAT_VF_LOSS] = vf_loss * w;
    (*loss).stats[STAT_VF_CLIPFRAC] = select(0.0, n, vf_clipped > vf_unclipped);
}

fn write_row_stats(r: u32, loss: RowLoss) {
    for (var k = 0u; k < STATS; k++) { token_stats[r * STATS + k] = loss.stats[k]; }
}

// The row walks below take (start, step): a workgroup's invocation walks start = lid, step = WG
// and the workgroup then merges; an invocation alone (the _serial entry points) walks start = 0,
// step = 1.

// An untrained row: no gradient (its statistics are zeroed by the caller).
fn zero_row(base: u32, start: u32, step: u32) {
    if (VEC4) {
        for (var j = start; j < params.v / 4u; j += step) { logits4[base / 4u + j] = vec4<f32>(0.0); }
    } else {
        for (var i = start; i < params.v; i += step) { logits[base + i] = 0.0; }
    }
}

// The logit at flat index i, in units of z.
fn z_at(i: u32) -> f32 {
    if (VEC4) { return logits4[i / 4u][i % 4u] * params.inv_temperature; }
    return logits[i] * params.inv_temperature;
}

fn zero_row_stats(r: u32) {
    for (var k = 0u; k < STATS; k++) { token_stats[r * STATS + k] = 0.0; }
}

// Pass 1: folds the row at `base` (a strided slice of it) into the online-softmax state
// (m, l, s) (see prelude.wgsl), in units of z = logits/τ.
fn fold_row(base: u32, start: u32, step: u32) -> vec3<f32> {
    var st = vec3<f32>(NEG_BIG, 0.0, 0.0);
    if (VEC4) {
        for (var j = start; j < params.v / 4u; j += step) {
            st = softmax_state_add4(st, logits4[base / 4u + j] * params.inv_temperature);
        }
    } else {
        for (var i = start; i < params.v; i += step) {
            st = softmax_state_add(st, logits[base + i] * params.inv_temperature);
        }
    }
    return st;
}

// (log p[token], entropy H, lse) from the whole row's state and the taken token's z.
fn logprob_entropy_of(st: vec3<f32>, z_token: f32) -> vec3<f32> {
    let lse = st.x + log(st.y);
    return vec3<f32>(z_token - lse, lse - st.z / st.y, lse);
}

// The workgroup's pass 1, shared by every kernel that needs a row's log-softmax: each
// invocation folds a strided slice of the row, then the workgroup merges the WG states. Returns
// (log p[token], H, lse) to every invocation. All reads of the row, the taken token's included,
// happen before the merge's barriers.
fn logprob_entropy(base: u32, token: u32, lid: u32) -> vec3<f32> {
    let st = fold_row(base, lid, WG);
    let z_token = z_at(base + token);
    return logprob_entropy_of(workgroup_softmax_state(lid, WG, st), z_token);
}

// Pass 2: ∂L/∂logits in place of (a strided slice of) the row, each element read then written
// by the same invocation.
fn write_row_gradient(base: u32, token: u32, loss: RowLoss, lp_h: vec3<f32>, start: u32, step: u32) {
    let entropy = lp_h.y;
    let lse = lp_h.z;
    if (VEC4) {
        for (var j = start; j < params.v / 4u; j += step) {
            let log_p = logits4[base / 4u + j] * params.inv_temperature - lse;
            let p = exp(log_p);
            let onehot = select(vec4<f32>(0.0), vec4<f32>(1.0), 4u * j + vec4<u32>(0u, 1u, 2u, 3u) == vec4<u32>(token));
            let dz = loss.dlogp * (onehot - p) - loss.dentropy * p * (log_p + entropy);
            logits4[base / 4u + j] = dz * params.inv_temperature;
        }
    } else {
        for (var i = start; i < params.v; i += step) {
            let log_p = logits[base + i] * params.inv_temperature - lse;
            let p = exp(log_p);
            let onehot = select(0.0, 1.0, i == token);
            let dz = loss.dlogp * (onehot - p) - loss.dentropy * p * (log_p + entropy);
            logits[base + i] = dz * params.inv_temperature;
        }
    }
}

// Both passes over trained row r (bound at `base`) by its workgroup: its log-softmax, its
// policy loss, and ∂L/∂logits in place of the row. Returns the loss for the caller's per-row
// writes. Call from uniform control flow (barriers).
fn fused_policy_row(r: u32, base: u32, lid: u32) -> RowLoss {
    let token = tokens[r + 1u];
    let lp_h = logprob_entropy(base, token, lid);
    // The barriers inside logprob_entropy are also what make the in-place write below safe:
    // every invocation has finished its reads of the row before any invocation overwrites it
    // in pass 2, where each invocation reads and then writes only its own elements.
    let loss = row_loss(r, lp_h.x, lp_h.y);
    write_row_gradient(base, token, loss, lp_h, lid, WG);
    return loss;
}

// The same by one invocation alone.
fn fused_policy_row_serial(r: u32, base: u32) -> RowLoss {
    let token = tokens[r + 1u];
    let lp_h = logprob_entropy_of(fold_row(base, 0u, 1u), z_at(base + token));
    let loss = row_loss(r, lp_h.x, lp_h.y);
    write_row_gradient(base, token, loss, lp_h, 0u, 1u);
    return loss;
}

@compute @workgroup_size(WG)
fn ppo_loss_fused(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let local = wid.y * nwg.x + wid.x;
    if (local >= params.rows) { return; } // uniform across the workgroup
    let r = params.row_offset + local;
    if (!trained(r)) {
        zero_row(local * params.v, lid, WG);
        if (lid == 0u) {
            zero_row_stats(r);
            dvalues[r] = 0.0;
        }
        return;
    }
    var loss = fused_policy_row(r, local * params.v, lid);
    if (lid == 0u) {
        add_value_loss(r, &loss, values[r]);
        dvalues[r] = loss.dvalue;
        write_row_stats(r, loss);
    }
}

@compute @workgroup_size(WG)
fn critic_free_loss_fused(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let local = wid.y * nwg.x + wid.x;
    if (local >= params.rows) { return; }
    let r = params.row_offset + local;
    if (!trained(r)) {
        zero_row(local * params.v, lid, WG);
        if (lid == 0u) { zero_row_stats(r); }
        return;
    }
    let loss = fused_policy_row(r, local * params.v, lid);
    if (lid == 0u) { write_row_stats(r, loss); }
}

// The row of a _serial invocation (one invocation per row, workgroups of WG).
fn serial_local_row(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn ppo_loss_fused_serial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let local = serial_local_row(wid, nwg, lid);
    if (local >= params.rows) { return; }
    let r = params.row_offset + local;
    if (!trained(r)) {
        zero_row(local * params.v, 0u, 1u);
        zero_row_stats(r);
        dvalues[r] = 0.0;
        return;
    }
    var loss = fused_policy_row_serial(r, local * params.v);
    add_value_loss(r, &loss, values[r]);
    dvalues[r] = loss.dvalue;
    write_row_stats(r, loss);
}

@compute @workgroup_size(WG)
fn critic_free_loss_fused_serial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                 @builtin(local_invocation_index) lid: u32) {
    let local = serial_local_row(wid, nwg, lid);
    if (local >= params.rows) { return; }
    let r = params.row_offset + local;
    if (!trained(r)) {
        zero_row(local * params.v, 0u, 1u);
        zero_row_stats(r);
        return;
    }
    write_row_stats(r, fused_policy_row_serial(r, local * params.v));
}

// ---------------------------------------------------------------------------------------------
// The statistics: stats_out[k] = Σ_rows token_stats[row, k] (each row already carries its 1/N),
// so stats_out holds the minibatch means in the STAT_* order.
// Launch: `ppo_stats_reduce`: one workgroup of 256.

@group(0) @binding(7) var<storage, read> stats_in: array<f32>;
@group(0) @binding(8) var<storage, read_write> stats_out: array<f32>;

const WG_STATS: u32 = 256u; // ppo_stats_reduce: invocations (kernels::ppo::WG_STATS)

@compute @workgroup_size(WG_STATS)
fn ppo_stats_reduce(@builtin(local_invocation_index) lid: u32) {
    var acc: array<f32, 8>;
    for (var r = lid; r < params.rows; r += WG_STATS) {
        for (var k = 0u; k < STATS; k++) { acc[k] += stats_in[r * STATS + k]; }
    }
    for (var k = 0u; k < STATS; k++) {
        let total = workgroup_sum(lid, WG_STATS, acc[k]);
        if (lid == 0u) { stats_out[k] = total; }
    }
}

// ---------------------------------------------------------------------------------------------
// The fused log-softmax / gather / entropy alone, for rollouts (the policy's old log-probs, the
// reference model's log-probs): one read of each row, nothing written back to it.
//   token_logprobs[r + 1] = log softmax(z_r)[tokens[r + 1]],  token_entropy[r + 1] = H(z_r)
// for every row r that predicts a token of its sequence; position 0 of each sequence gets 0.
// Launch: `logprob_entropy_rows`: one workgroup of 64 per row, grid = rows laid out 2D.

@group(0) @binding(11) var<storage, read_write> token_logprobs: array<f32>;
@group(0) @binding(12) var<storage, read_write> token_entropy: array<f32>;

@compute @workgroup_size(WG)
fn logprob_entropy_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let local = wid.y * nwg.x + wid.x;
    if (local >= params.rows) { return; }
    let r = params.row_offset + local;
    if (r % params.seq == 0u && lid == 0u) {
        token_logprobs[r] = 0.0;
        token_entropy[r] = 0.0;
    }
    if (r % params.seq + 1u >= params.seq) { return; }
    let lp_h = logprob_entropy(local * params.v, tokens[r + 1u], lid);
    if (lid == 0u) {
        token_logprobs[r + 1u] = lp_h.x;
        token_entropy[r + 1u] = lp_h.y;
    }
}

@compute @workgroup_size(WG)
fn logprob_entropy_rows_serial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                               @builtin(local_invocation_index) lid: u32) {
    let local = serial_local_row(wid, nwg, lid);
    if (local >= params.rows) { return; }
    let r = params.row_offset + local;
    if (r % params.seq == 0u) {
        token_logprobs[r] = 0.0;
        token_entropy[r] = 0.0;
    }
    if (r % params.seq + 1u >= params.seq) { return; }
    let base = local * params.v;
    let token = tokens[r + 1u];
    let lp_h = logprob_entropy_of(fold_row(base, 0u, 1u), z_at(base + token));
    token_logprobs[r + 1u] = lp_h.x;
    token_entropy[r + 1u] = lp_h.y;
}
