// The PPO loss unfused, for comparison in the benches and tests: the same loss and gradient as
// `ppo_loss_fused` (ppo_loss.wgsl), computed the way a framework would, one operation per kernel:
//   log_softmax_forward (cross_entropy.wgsl) writes logp [rows, V];
//   ppo_unfused_gather:  row_scalars[r].logp = logp[r, a]              (one invocation per row)
//   ppo_unfused_entropy: row_scalars[r].H = −Σ_v e^{logp}·logp          (a workgroup of WG per row)
//   ppo_unfused_loss:    the per-row loss, coefficients, dvalues, stats  (one invocation per row)
//   ppo_unfused_grad:    logits ← ∂L/∂logits from logp and the coefficients (a workgroup per row)
// row_scalars [rows, 4]: (logp, H, ∂L/∂logp, ∂L/∂H). Each pass rereads what the last wrote.
//
// Loaded together with ppo_loss.wgsl (`Shader::includes`), whose parameters, bindings and
// per-row loss (`row_loss`, `add_value_loss`, `write_row_stats`) it shares: the loss math is
// written once. (PPO's form, with the value loss.)
// Layout: as ppo_loss.wgsl, plus logp_full [rows, V] and row_scalars [rows, 4].
// Launch: gather and loss one invocation per row (workgroup WG, grid ceil(rows/WG)); entropy and
// grad one workgroup of WG per row, grid rows laid out 2D (x ≤ 65535).

@group(0) @binding(9) var<storage, read> logp_full: array<f32>;
@group(0) @binding(10) var<storage, read_write> row_scalars: array<f32>;

@compute @workgroup_size(WG)
fn ppo_unfused_gather(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x; // the unfused path binds whole tensors: row_offset is 0
    if (r >= params.rows) { return; }
    row_scalars[r * 4u] = select(0.0, logp_full[r * params.v + tokens[min(r + 1u, params.rows - 1u)]], trained(r));
}

@compute @workgroup_size(WG)
fn ppo_unfused_entropy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * nwg.x + wid.x;
    if (r >= params.rows) { return; }
    var h = 0.0;
    for (var i = lid; i < params.v; i += WG) {
        let lp = logp_full[r * params.v + i];
        h -= exp(lp) * lp;
    }
    h = workgroup_sum(lid, WG, h);
    if (lid == 0u) { row_scalars[r * 4u + 1u] = h; }
}

@compute @workgroup_size(WG)
fn ppo_unfused_loss(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if (r >= params.rows) { return; }
    if (!trained(r)) {
        row_scalars[r * 4u + 2u] = 0.0;
        row_scalars[r * 4u + 3u] = 0.0;
        dvalues[r] = 0.0;
        for (var k = 0u; k < STATS; k++) { token_stats[r * STATS + k] = 0.0; }
        return;
    }
    var loss = row_loss(r, row_scalars[r * 4u], row_scalars[r * 4u + 1u]);
    add_value_loss(r, &loss, values[r]);
    row_scalars[r * 4u + 2u] = loss.dlogp;
    row_scalars[r * 4u + 3u] = loss.dentropy;
    dvalues[r] = loss.dvalue;
    write_row_stats(r, loss);
}

@compute @workgroup_size(WG)
fn ppo_unfused_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * nwg.x + wid.x;
    if (r >= params.rows) { return; }
    let dlogp = row_scalars[r * 4u + 2u];
    let dentropy = row_scalars[r * 4u + 3u];
    let entropy = row_scalars[r * 4u + 1u];
    let token = tokens[min(r + 1u, params.rows - 1u)];
    for (var i = lid; i < params.v; i += WG) {
        let log_p = logp_full[r * params.v + i];
        let p = exp(log_p);
        let onehot = select(0.0, 1.0, i == token);
        let dz = dlogp * (onehot - p) - dentropy * p * (log_p + entropy);
        logits[r * params.v + i] = dz * params.inv_temperature;
    }
}
