// GELU, tanh approximation (GPT-2's "gelu_new"), forward and backward.
//
//   gelu(x)  = 0.5·x·(1 + tanh(u)),  u = sqrt(2/π)·(x + 0.044715·x³)
//   gelu'(x) = 0.5·(1 + tanh(u)) + 0.5·x·(1 − tanh²(u))·sqrt(2/π)·(1 + 3·0.044715·x²)
//
// The `…4` entry points are the same for n a multiple of 4, one invocation per vec4 (a quarter
// of the loads and stores).
//
// Layout: flat f32 arrays of params.n elements (any shape, e.g. [B·T, 4C]); the same buffers
// bound as vec4 arrays at bindings 5–8 for the vec4 forms.
// Launch: workgroup 256; one invocation per element (per vec4); grid = ceil(n/256)
// (ceil(n/4/256)) workgroups laid out 2D (x ≤ 65535), flat workgroup index = wid.y·nwg.x + wid.x.

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
@group(0) @binding(5) var<storage, read> inp4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> dout4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> dinp4: array<vec4<f32>>;

// gelu, gelu4, gelu_grad (gelu'(x)·d) and gelu_grad4 are the prelude's: the matmul epilogues use
// them too.

@compute @workgroup_size(WG)
fn gelu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.n) { return; }
    out[i] = gelu(inp[i]);
}

@compute @workgroup_size(WG)
fn gelu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.n) { return; }
    dinp[i] = gelu_grad(inp[i], dout[i]);
}

@compute @workgroup_size(WG)
fn gelu_forward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.n / 4u) { return; }
    let x = inp4[i];
    out4[i] = gelu4(x);
}

@compute @workgroup_size(WG)
fn gelu_backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.n / 4u) { return; }
    let x = inp4[i];
    let d = dout4[i];
    dinp4[i] = gelu_grad4(x, d);
}
