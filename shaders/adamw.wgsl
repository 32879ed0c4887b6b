// Global gradient norm with clipping, and the AdamW update.
//
//   grad_norm_partial:  partial[g] = Σ grad[i]² over workgroup g's grid-stride slice
//   grad_norm_finalize: norm = sqrt(Σ partial);  scale = min(1, max_norm / (norm + 1e-6))
//                       (scale = 1 when max_norm ≤ 0); writes norm_scale = [norm, scale]
//   adamw_update:       g = grad·scale
//                       m ← β1·m + (1 − β1)·g,   v ← β2·v + (1 − β2)·g²
//                       θ ← θ − lr·( (m / (1 − β1^t)) / (sqrt(v / (1 − β2^t)) + eps) + wd·θ )
//
// Weight decay is decoupled (AdamW, Loshchilov & Hutter) and applied per dispatch, so the caller
// decays matrices and leaves biases and LayerNorm parameters alone, as GPT-2 training does. The
// clip scale is read on the GPU from norm_scale: clipping needs no host round trip.
//
// grad_norm_partial4 and adamw_update4 are the same for n a multiple of 4, reading and writing
// vec4s (a quarter of the loads and stores).
//
// Layout: params, grads, m, v flat f32 [n] (bound as vec4 arrays at bindings 9–12 for the vec4
// forms); partial [G]; norm_scale [2].
// Launch: partial: G workgroups of 256 (grid-stride); finalize: 1 workgroup of 256;
// update: ceil(n/256) workgroups of 256, laid out 2D (x ≤ 65535). A gradient larger than one
// storage binding is reduced in slices, each writing its own range of partial sums, and updated
// in slices.

struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bias_correction1: f32, // 1 − β1^t
    bias_correction2: f32, // 1 − β2^t
    max_norm: f32,
    first_partial: u32, // grad_norm_partial: the slot of this dispatch's first partial sum
}

@group(0) @binding(0) var<uniform> params: Params;
const WG: u32 = 256u; // invocations per workgroup (kernels::adamw::WG)
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> partial: array<f32>;
@group(0) @binding(3) var<storage, read> partial_in: array<f32>;
@group(0) @binding(4) var<storage, read_write> norm_scale: array<f32>;
@group(0) @binding(5) var<storage, read> norm_scale_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> param: array<f32>;
@group(0) @binding(7) var<storage, read_write> m: array<f32>;
@group(0) @binding(8) var<storage, read_write> v: array<f32>;
@group(0) @binding(9) var<storage, read> grad4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> param4: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> m4: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> v4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn grad_norm_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = wid.x * WG + lid; i < params.n; i += nwg.x * WG) {
        let g = grad[i];
        s += g * g;
    }
    let total = workgroup_sum(lid, WG, s);
    if (lid == 0u) { partial[params.first_partial + wid.x] = total; }
}

@compute @workgroup_size(WG)
fn grad_norm_finalize(@builtin(local_invocation_index) lid: u32) {
    // params.n is the number of partial sums here.
    var s = 0.0;
    for (var i = lid; i < params.n; i += WG) { s += partial_in[i]; }
    let total = workgroup_sum(lid, WG, s);
    if (lid == 0u) {
        let norm = sqrt(total);
        norm_scale[0] = norm;
        norm_scale[1] = select(1.0, min(1.0, params.max_norm / (norm + 1e-6)), params.max_norm > 0.0);
    }
}

@compute @workgroup_size(WG)
fn adamw_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.n) { return; }
    // Every load before the first store: the bindings might alias as far as the compiler
    // knows, and a load after a store would wait for it.
    let p = param[i];
    let g = grad[i] * norm_scale_in[1];
    let m_new = params.beta1 * m[i] + (1.0 - params.beta1) * g;
    let v_new = params.beta2 * v[i] + (1.0 - params.beta2) * g * g;
    m[i] = m_new;
    v[i] = v_new;
    let m_hat = m_new / params.bias_correction1;
    let v_hat = v_new / params.bias_correction2;
    param[i] = p - params.lr * (m_hat / (sqrt(v_hat) + params.eps) + params.weight_decay * p);
}

@compute @workgroup_size(WG)
fn grad_norm_partial4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    var s = 0.0;
    for (var i = wid.x * WG + lid; i < params.n / 4u; i += nwg.x * WG) {
        let g = grad4[i];
        s += dot(g, g);
    }
    let total = workgroup_sum(lid, WG, s);
    if (lid == 0u) { partial[params.first_partial + wid.x] = total; }
}

@compute @workgroup_size(WG)
fn adamw_update4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.n / 4u) { return; }
    let p = param4[i]; // (loads first, as above)
    let g = grad4[i] * norm_scale_in[1];
    let m_new = params.beta1 * m4[i] + (1.0 - params.beta1) * g;
    let v_new = params.beta2 * v4[i] + (1.0 - params.beta2) * g * g;
    m4[i] = m_new;
    v4[i] = v_new;
    let m_hat = m_new / params.bias_correction1;
    let v_hat = v_new / params.bias_correction2;
    param4[i] = p - params.lr * (m_hat / (sqrt(v_hat) + params.eps) + params.weight_decay * p);
}
