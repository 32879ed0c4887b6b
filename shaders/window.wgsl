// A window of columns of a row-major matrix, gathered into a matrix of its own and scattered
// back. The model's heads run on a window of each sequence's positions (model::HeadWindow: the
// PPO update and the rollout need logits only where a trained token is predicted), so the
// forward gathers those rows of the final LayerNorm's output, [B, T·C] → [B, W·C], and the
// backward scatters the heads' input gradient back, [B, W·C] → [B, T·C]:
//
//   window_gather:  dst[r, x] = src[r, first + x]                            for x < width
//   window_scatter: dst[r, y] = src[r, y − first] if first ≤ y < first + width, else 0
//
// window_scatter is the adjoint of window_gather, and writes every value of dst (nothing need
// be zeroed first). The `…4` entry points are the same where width, stride and first are
// multiples of 4 (the model's: multiples of C), one invocation per vec4.
//
// Layout: the window's matrix [rows, width] and the whole one [rows, stride], row-major, with
// first + width ≤ stride (the same buffers bound as vec4 arrays at bindings 3–4 for the vec4
// forms, whose params count vec4s).
// Launch: workgroup 256, one invocation per value (vec4) written (window_gather: rows·width,
// window_scatter: rows·stride); grid laid out 2D (x ≤ 65535).

struct Params {
    rows: u32,
    width: u32,  // values per row of the window
    stride: u32, // values per row of the whole matrix
    first: u32,  // the window's first column
}

const WG: u32 = 256u; // invocations per workgroup (kernels::window::WG)

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> src4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> dst4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn window_gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.rows * params.width) { return; }
    let r = i / params.width;
    dst[i] = src[r * params.stride + params.first + i % params.width];
}

@compute @workgroup_size(WG)
fn window_scatter(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.rows * params.stride) { return; }
    let r = i / params.stride;
    let x = i % params.stride - params.first; // wraps past the window when y < first
    dst[i] = select(0.0, src[r * params.width + min(x, params.width - 1u)], x < params.width);
}

@compute @workgroup_size(WG)
fn window_gather4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.rows * params.width) { return; }
    let r = i / params.width;
    dst4[i] = src4[r * params.stride + params.first + i % params.width];
}

@compute @workgroup_size(WG)
fn window_scatter4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.rows * params.stride) { return; }
    let r = i / params.stride;
    let x = i % params.stride - params.first; // wraps past the window when y < first
    dst4[i] = select(vec4<f32>(0.0), src4[r * params.width + min(x, params.width - 1u)], x < params.width);
}
