// Residual add and gradient accumulation: the two elementwise sums of a transformer block.
//
//   residual_forward:  out[i] = a[i] + b[i]          (x + attn(ln(x)), x + mlp(ln(x)))
//   accumulate:        dst[i] = dst[i] + src[i]      (a residual's gradient flows to both branches)
//
// The model's forward adds its residuals inside the LayerNorm that reads them (layernorm.wgsl's
// RESIDUAL); residual_forward takes the rows that are not whole vec4s.
//
// The `…4` entry points are the same for n a multiple of 4, one invocation per vec4: a quarter
// of the loads and stores (which is what bounds these kernels on a software adapter).
//
// Layout: flat f32 arrays of params.n elements (the same buffers bound as vec4 arrays at
// bindings 4–6 for the vec4 forms).
// Launch: workgroup 256; one invocation per element (per vec4); grid = ceil(n/256)
// (ceil(n/4/256)) workgroups laid out 2D (x ≤ 65535), flat workgroup index = wid.y·nwg.x + wid.x.

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
const WG: u32 = 256u; // invocations per workgroup (kernels::residual::WG)
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> out4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn residual_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.n) { return; }
    out[i] = a[i] + b[i];
}

@compute @workgroup_size(WG)
fn accumulate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.n) { return; }
    // `a` is the source; `out` is both read and written.
    out[i] = out[i] + a[i];
}

@compute @workgroup_size(WG)
fn residual_forward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.n / 4u) { return; }
    out4[i] = a4[i] + b4[i];
}

@compute @workgroup_size(WG)
fn accumulate4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.n / 4u) { return; }
    out4[i] = out4[i] + a4[i];
}
