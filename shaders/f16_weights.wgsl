// Weights to f16 for generation: each pair of an f32 matrix's values becomes one u32 word
// holding them as f16 (WGSL's portable pack2x16float, no SHADER_F16 needed), the layout the
// matmul kernels read a B in when B_F16 is set. Values are clamped to f16's finite range
// (±65504) first, since pack2x16float leaves out-of-range values indeterminate; the products
// still accumulate in f32.
//
// Layout: src [n] f32 (n even), out [n/2] u32, out[i] = (src[2i] low half, src[2i+1] high half).
// Launch: workgroup WG, one invocation per word; grid from Gpu::grid (flat index
// wid.y·nwg.x·WG + wid.x·WG + lid).

const WG: u32 = 256u; // kernels::f16_weights::WG
const F16_MAX: f32 = 65504.0;

struct Params {
    words: u32, // u32 words written: half the values
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(WG)
fn to_f16_pairs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.words) { return; }
    out[i] = pack2x16float(clamp(src[i], vec2<f32>(-F16_MAX), vec2<f32>(F16_MAX)));
}
