// Residual add and gradient accumulation: the two elementwise sums of a transformer block.
//
//   residual_forward:  out[i] = a[i] + b[i]          (x + attn(ln(x)), x + mlp(ln(x)))
//   accumulate:        dst[i] = dst[i] + src[i]      (a residual's gradient flows to both branches)
//
// Layout: flat f32 arrays of params.n elements.
// Launch: workgroup 256; one invocation per element; grid = ceil(n/256) workgroups laid out
// 2D (x ≤ 65535), flat workgroup index = wid.y·nwg.x + wid.x.

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
const WG: u32 = 256u; // invocations per workgroup (kernels::residual::WG)
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

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
