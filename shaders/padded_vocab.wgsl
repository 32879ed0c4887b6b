// The padded vocabulary's mask: the LM head computes logits for Vp = V rounded up to a multiple
// of 64 columns (llm.c's Vp; the padded rows of wte are zero, so those logits come out 0), and
// this kernel overwrites the padded columns with a large negative value, so that every softmax
// downstream gives them probability 0 (exp underflows) and every gradient through them is 0:
//
//   logits[n, v] = params.masked     for V ≤ v < Vp
//
// params.masked stays finite after the softmax kernels scale it by 1/τ (kernels::padded_vocab).
//
// Layout: logits [N, Vp] row-major.
// Launch: workgroup 256; one invocation per padded element (N·(Vp − V) of them); grid =
// ceil(N·(Vp − V)/256) workgroups laid out 2D (x ≤ 65535).

struct Params {
    rows: u32,
    v: u32,       // real columns
    stride: u32,  // Vp
    masked: f32,
}

const WG: u32 = 256u; // invocations per workgroup (kernels::padded_vocab::WG)

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;

@compute @workgroup_size(WG)
fn mask_padded_logits(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    let pad = params.stride - params.v;
    if (i >= params.rows * pad) { return; }
    logits[(i / pad) * params.stride + params.v + i % pad] = params.masked;
}
