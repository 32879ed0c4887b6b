// The gradient norm's first pass with a contiguous span per subgroup: the vec4
// grad_norm_partial of adamw.wgsl (which is included after this file: the bindings and Params
// come from there) without its workgroup reduction. The gradient is cut into one span of
// neighbouring vec4s per subgroup of the grid; the lanes of a subgroup walk their span together
// (neighbouring lanes on neighbouring vec4s: coalesced), and subgroupAdd sums the span's
// squares:
//
//   partial[first_partial + s] = Σ grad[i]² over span s,   s = workgroup · num_subgroups + subgroup
//
// No barriers: on lavapipe a workgroup barrier is a switch between coroutines, and the
// workgroup form's grid-stride walk jumps a page between an invocation's loads; this form read
// 64 MB at 10–11 GB/s where the workgroup form read it at 3.6–4.2 (AMD EPYC, 2026-11-27).
// Subgroup operations need the adapter's SUBGROUP feature, so this entry lives in a module of
// its own: the other AdamW kernels compile without it.
//
// Layout: as adamw.wgsl (n a multiple of 4, grad4 at binding 9; partial [NORM_PARTIALS]).
// Launch: workgroup WG (256), grid G ≤ 65535 along x: the host keeps G · WG / (the adapter's
// smallest subgroup size) partial sums within its share of `partial`. Spans are
// ceil((n/4) / (G · num_subgroups)) vec4s; the last ones may be short or empty (a sum of 0).

@compute @workgroup_size(WG)
fn grad_norm_partial_sg4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(subgroup_id) sg: u32, @builtin(num_subgroups) n_sg: u32,
                         @builtin(subgroup_invocation_id) lane: u32) {
    let lanes = WG / n_sg; // invocations per subgroup
    let n4 = params.n / 4u;
    let spans = nwg.x * n_sg;
    let span = (n4 + spans - 1u) / spans;
    let s = wid.x * n_sg + sg;
    let start = s * span;
    let end = min(start + span, n4);
    var sum = 0.0;
    for (var i = start + lane; i < end; i += lanes) {
        let g = grad4[i];
        sum += dot(g, g);
    }
    let total = subgroupAdd(sum);
    if (lane == 0u) { partial[params.first_partial + s] = total; }
}
