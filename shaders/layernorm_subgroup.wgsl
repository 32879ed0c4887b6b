// LayerNorm with a subgroup per row: the vec4 forward and input gradient of layernorm.wgsl
// (which is included after this file: bindings, Params and the row walks come from there),
// with the invocations of one subgroup reading neighbouring vec4s of a row and adding their
// partial sums with subgroupAdd. That is the coalesced reading of a workgroup per row without
// its barriers — on lavapipe a subgroup is one 8-wide SIMD vector, and a workgroup barrier a
// switch between coroutines. Subgroup operations need the adapter's SUBGROUP feature, so these
// entries live in a module of their own: the other LayerNorm kernels compile without it.
//
// Layout: as layernorm.wgsl (C a multiple of 4).
// Launch: workgroup WG (64); workgroup w owns rows w·R .. w·R + R − 1 (workgroup_rows) with
// R = params.rows_per_group (the host takes 2·64 / the smallest subgroup size), and its
// subgroups share them out, subgroup s taking rows s, s + num_subgroups, …: right whatever size
// the subgroups turn out to have. Grid = ceil(rows / R) laid out 2D.

@compute @workgroup_size(WG)
fn layernorm_forward_sg4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) n_sg: u32,
                         @builtin(subgroup_invocation_id) lane: u32) {
    let lanes = WG / n_sg; // invocations per subgroup (all of them when it is as large as WG)
    let span = workgroup_rows(wid, nwg, params.rows_per_group, params.rows);
    for (var row = span.x + sg; row < span.y; row += n_sg) { // uniform across the subgroup
        let m = subgroupAdd(row_sum4(row, lane, lanes)) / f32(params.c);
        let s = inverseSqrt(subgroupAdd(row_squares4(row, m, lane, lanes)) / f32(params.c) + params.eps);
        write_normalized4(row, m, s, lane, lanes);
        if (lane == 0u) {
            mean[row] = m;
            rstd[row] = s;
        }
    }
}

@compute @workgroup_size(WG)
fn layernorm_backward_input_sg4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) n_sg: u32,
                                @builtin(subgroup_invocation_id) lane: u32) {
    let lanes = WG / n_sg;
    let span = workgroup_rows(wid, nwg, params.rows_per_group, params.rows);
    for (var row = span.x + sg; row < span.y; row += n_sg) {
        let m = saved_mean[row];
        let s = saved_rstd[row];
        let sums = subgroupAdd(row_gradient_sums4(row, m, s, lane, lanes)) / f32(params.c);
        add_input_gradient4(row, m, s, sums.x, sums.y, lane, lanes);
    }
}
