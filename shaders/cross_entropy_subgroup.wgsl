// Cross-entropy and log-softmax with a subgroup per row: the entries of cross_entropy.wgsl
// (included after this file: bindings, Params and the row walks come from there) with the
// invocations of one subgroup walking a row in strided slices and merging their online-softmax
// states with subgroupMax and subgroupAdd: the coalesced reading of a workgroup per row without
// its barriers. Subgroup operations need the adapter's SUBGROUP feature, so these entries live
// in a module of their own (as layernorm_subgroup.wgsl does).
//
// Merging the lanes' states (m_i, l_i) = (max z, Σ e^{z − m_i}) of one row:
//   m = max_i m_i,   l = Σ_i l_i·e^{m_i − m},   lse = m + log l
//
// Layout: as cross_entropy.wgsl.
// Launch: workgroup WG (64); workgroup w owns rows w·R .. w·R + R − 1 (workgroup_rows) with
// R = params.rows_per_group (the host takes 2·64 / the smallest subgroup size), and its
// subgroups share them out, subgroup s taking rows s, s + num_subgroups, …: right whatever size
// the subgroups turn out to have. Grid = ceil(rows / R) laid out 2D.

// log Σ exp over row `row`, its lanes' slices merged; every lane of the subgroup gets it.
fn row_logsumexp_sg(row: u32, lane: u32, lanes: u32) -> f32 {
    let st = fold_row(row, lane, lanes);
    let m = subgroupMax(st.x);
    let l = subgroupAdd(st.y * exp(st.x - m)); // a lane that saw nothing has l_i = 0
    return m + log(l);
}

@compute @workgroup_size(WG)
fn cross_entropy_forward_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) n_sg: u32,
                            @builtin(subgroup_invocation_id) lane: u32) {
    let lanes = WG / n_sg; // invocations per subgroup
    let span = workgroup_rows(wid, nwg, params.rows_per_group, params.rows);
    for (var row = span.x + sg; row < span.y; row += n_sg) { // uniform across the subgroup
        let row_lse = row_logsumexp_sg(row, lane, lanes);
        if (lane == 0u) { write_loss(row, row_lse); }
    }
}

@compute @workgroup_size(WG)
fn log_softmax_forward_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) n_sg: u32,
                          @builtin(subgroup_invocation_id) lane: u32) {
    let lanes = WG / n_sg;
    let span = workgroup_rows(wid, nwg, params.rows_per_group, params.rows);
    for (var row = span.x + sg; row < span.y; row += n_sg) {
        write_log_softmax(row, row_logsumexp_sg(row, lane, lanes), lane, lanes);
    }
}

@compute @workgroup_size(WG)
fn cross_entropy_backward_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) n_sg: u32,
                             @builtin(subgroup_invocation_id) lane: u32) {
    let lanes = WG / n_sg;
    let span = workgroup_rows(wid, nwg, params.rows_per_group, params.rows);
    for (var row = span.x + sg; row < span.y; row += n_sg) {
        write_gradient(row, lane, lanes);
    }
}
