// The fused PPO losses and the log-prob/entropy rows with a subgroup per row: the entries of
// ppo_loss.wgsl (included after this file: bindings, Params, the row walks and the row loss come
// from there) with the invocations of one subgroup walking a row in strided slices and merging
// their online-softmax states with subgroupMax and subgroupAdd: the coalesced reading of a
// workgroup per row without its barriers (as cross_entropy_subgroup.wgsl does for the
// cross-entropy). Subgroup operations need the adapter's SUBGROUP feature, so these entries live
// in a module of their own.
//
// Merging the lanes' states (m_i, l_i, s_i) = (max z, Σ e^{z − m_i}, Σ e^{z − m_i}·z) of a row:
//   m = max_i m_i,   l = Σ_i l_i·e^{m_i − m},   s = Σ_i s_i·e^{m_i − m}
//
// Each lane reads then overwrites only its own slice of the row (pass 2 walks the slices pass 1
// walked), and the taken token's logit is read before the merge, so the gradient written in
// place never races a read.
//
// Layout: as ppo_loss.wgsl.
// Launch: workgroup WG (64); workgroup w owns rows w·R .. w·R + R − 1 (workgroup_rows) with
// R = params.rows_per_group (the host takes 2·64 / the smallest subgroup size), and its
// subgroups share them out, subgroup s taking rows s, s + num_subgroups, …: right whatever size
// the subgroups turn out to have. Grid = ceil(rows / R) laid out 2D.

// The whole row's state from the lanes' states of their slices; every lane gets it.
fn subgroup_softmax_state(st: vec3<f32>) -> vec3<f32> {
    let m = subgroupMax(st.x);
    let k = exp(st.x - m); // 0 for a lane that saw nothing
    return vec3<f32>(m, subgroupAdd(st.y * k), subgroupAdd(st.z * k));
}

// Both passes over trained row r (bound at `base`) by its subgroup: as fused_policy_row.
fn fused_policy_row_sg(r: u32, base: u32, lane: u32, lanes: u32) -> RowLoss {
    let token = tokens[r + 1u];
    let z_token = z_at(base + token);
    let lp_h = logprob_entropy_of(subgroup_softmax_state(fold_row(base, lane, lanes)), z_token);
    let loss = row_loss(r, lp_h.x, lp_h.y);
    write_row_gradient(base, token, loss, lp_h, lane, lanes);
    return loss;
}

@compute @workgroup_size(WG)
fn ppo_loss_fused_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) n_sg: u32,
                     @builtin(subgroup_invocation_id) lane: u32) {
    let lanes = WG / n_sg; // invocations per subgroup
    let span = workgroup_rows(wid, nwg, params.rows_per_group, params.rows);
    for (var local = span.x + sg; local < span.y; local += n_sg) { // uniform across the subgroup
        let r = params.row_offset + local;
        if (!trained(r)) {
            zero_row(local * params.v, lane, lanes);
            if (lane == 0u) {
                zero_row_stats(r);
                dvalues[r] = 0.0;
            }
            continue;
        }
        var loss = fused_policy_row_sg(r, local * params.v, lane, lanes);
        if (lane == 0u) {
            add_value_loss(r, &loss, values[r]);
            dvalues[r] = loss.dvalue;
            write_row_stats(r, loss);
        }
    }
}

@compute @workgroup_size(WG)
fn critic_free_loss_fused_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) n_sg: u32,
                             @builtin(subgroup_invocation_id) lane: u32) {
    let lanes = WG / n_sg;
    let span = workgroup_rows(wid, nwg, params.rows_per_group, params.rows);
    for (var local = span.x + sg; local < span.y; local += n_sg) {
        let r = params.row_offset + local;
        if (!trained(r)) {
            zero_row(local * params.v, lane, lanes);
            if (lane == 0u) { zero_row_stats(r); }
            continue;
        }
        let loss = fused_policy_row_sg(r, local * params.v, lane, lanes);
        if (lane == 0u) { write_row_stats(r, loss); }
    }
}

@compute @workgroup_size(WG)
fn logprob_entropy_rows_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) n_sg: u32,
                           @builtin(subgroup_invocation_id) lane: u32) {
    let lanes = WG / n_sg;
    let span = workgroup_rows(wid, nwg, params.rows_per_group, params.rows);
    for (var local = span.x + sg; local < span.y; local += n_sg) {
        let r = params.row_offset + local;
        if (r % params.seq == 0u && lane == 0u) {
            token_logprobs[r] = 0.0;
            token_entropy[r] = 0.0;
        }
        if (r % params.seq + 1u >= params.seq) { continue; }
        let base = local * params.v;
        let z_token = z_at(base + tokens[r + 1u]);
        let lp_h = logprob_entropy_of(subgroup_softmax_state(fold_row(base, lane, lanes)), z_token);
        if (lane == 0u) {
            token_logprobs[r + 1u] = lp_h.x;
            token_entropy[r + 1u] = lp_h.y;
        }
    }
}
