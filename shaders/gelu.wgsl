// GELU, tanh approximation (GPT-2's "gelu_new"), forward and backward.
//
//   gelu(x)  = 0.5·x·(1 + tanh(u)),  u = sqrt(2/π)·(x + 0.044715·x³)
//   gelu'(x) = 0.5·(1 + tanh(u)) + 0.5·x·(1 − tanh²(u))·sqrt(2/π)·(1 + 3·0.044715·x²)
//
// Layout: flat f32 arrays of params.n elements (any shape, e.g. [B·T, 4C]).
// Launch: workgroup 256; one invocation per element; grid = ceil(n/256) workgroups laid out
// 2D (x ≤ 65535), flat workgroup index = wid.y·nwg.x + wid.x.

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
const WG: u32 = 256u; // invocations per workgroup (kernels::gelu::WG)
@group(0) @binding(1) var<storage, read> inp: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
// Backward: dout in, dinp out (overwritten).
@group(0) @binding(3) var<storage, read> dout: array<f32>;
@group(0) @binding(4) var<storage, read_write> dinp: array<f32>;

const SQRT_2_OVER_PI: f32 = 0.7978845608028654;

// Written with sigmoids, which stay accurate in f32 where the tanh form cancels (for x ≪ 0,
// 1 + tanh(u) and 1 − tanh²(u) are differences of nearly equal numbers):
//   0.5·(1 + tanh(u)) = σ(2u),   1 − tanh²(u) = 4·σ(2u)·σ(−2u).
// exp overflowing to +inf gives σ = 0 exactly, so no input produces NaN.
fn sigmoid(z: f32) -> f32 {
    return 1.0 / (1.0 + exp(-z));
}

fn inner(x: f32) -> f32 {
    return SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
}

@compute @workgroup_size(WG)
fn gelu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.n) { return; }
    let x = inp[i];
    out[i] = x * sigmoid(2.0 * inner(x));
}

@compute @workgroup_size(WG)
fn gelu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.n) { return; }
    let x = inp[i];
    let u = inner(x);
    let s_pos = sigmoid(2.0 * u);
    let s_neg = sigmoid(-2.0 * u);
    let du_dx = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
    dinp[i] = (s_pos + 2.0 * x * s_pos * s_neg * du_dx) * dout[i];
}
