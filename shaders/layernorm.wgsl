// LayerNorm over the last axis, forward and backward.
//
//   forward:  mean = Σx/C, rstd = 1/sqrt(Σ(x − mean)²/C + eps), out = (x − mean)·rstd·w + b
//   backward: with n = (x − mean)·rstd and g = dout·w,
//             dinp += rstd·(g − mean(g) − n·mean(g·n))          (layernorm_backward_input)
//             dw += Σ_rows dout·n,  db += Σ_rows dout            (layernorm_backward_params)
//
// layernorm_forward4, layernorm_backward_input4 and layernorm_backward_params4 are the same for
// C a multiple of 4, reading and writing vec4s (a quarter of the loads and stores). layernorm_forward_wg4 and
// layernorm_backward_input_wg4 are the same again with a workgroup per row (the other variant,
// chosen per adapter by measurement: kernels::layernorm::variant): its 64 invocations read
// neighbouring vec4s, as a GPU's memory wants, and reduce their partial sums in workgroup memory.
//
// With TEXTURE_LOADS set (the texture variant), the vec4 entry points read their rows, the
// weight and the bias through read-only storage textures the host packs them into (row r of an
// [N, C] tensor is texel row r, C/4 texels wide; weight and bias one texel row each), where they
// read storage buffers otherwise. On a CPU adapter a storage-buffer load is a loop over the SIMD
// lanes and a texel fetch is not (see matmul_texture.wgsl); an invocation per row reads its row
// three times and the weight and bias once per element, so most of its time is loads.
//
// With RESIDUAL set, the vec4 forwards (and layernorm_subgroup.wgsl's) are llm.c's fused
// residual forward: the row is inp + addend, which the first pass over it also stores at
// `residual` (the residual stream the next block and the backward read), and the later passes
// read back from there. One dispatch where a residual add and a LayerNorm would be two, and the
// sum is not read a second time.
//
// Layout: inp, out, dout, dinp [N, C] row-major; w, b, dw, db [C]; mean, rstd [N] (saved by the
// forward for the backward); addend, residual [N, C]. The vec4 forms bind inp, w, b, out, dout,
// dinp as vec4 arrays at bindings 13–18, addend and residual at 19–20, dw and db at 21–22, and
// the textures at 23–26.
// Launch: one invocation per row (forward, backward_input), workgroup 64, grid = ceil(rows/64)
// laid out 2D (x ≤ 65535); the _wg4 forms one workgroup of 64 per row, grid = rows laid out 2D;
// backward_params 16 channels (the vec4 form 16 vec4s of channels) per workgroup of 256 (see
// there). One invocation per row suits
// CPU adapters, where workgroup barriers cost more than a serial sum over a short row; the
// per-channel parameter gradient is a separate pass so that no two invocations ever add into
// the same dw[c].

struct Params {
    rows: u32,
    c: u32,
    eps: f32,
    rows_per_group: u32, // layernorm_subgroup.wgsl: rows per workgroup
}

@group(0) @binding(0) var<uniform> params: Params;
const WG: u32 = 64u; // invocations per workgroup (kernels::layernorm::WG)
@group(0) @binding(1) var<storage, read> inp: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> mean: array<f32>;
@group(0) @binding(6) var<storage, read_write> rstd: array<f32>;
// Backward
@group(0) @binding(7) var<storage, read> dout: array<f32>;
@group(0) @binding(8) var<storage, read_write> dinp: array<f32>;
@group(0) @binding(9) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(10) var<storage, read_write> dbias: array<f32>;
@group(0) @binding(11) var<storage, read> saved_mean: array<f32>;
@group(0) @binding(12) var<storage, read> saved_rstd: array<f32>;
@group(0) @binding(13) var<storage, read> inp4: array<vec4<f32>>;
@group(0) @binding(14) var<storage, read> weight4: array<vec4<f32>>;
@group(0) @binding(15) var<storage, read> bias4: array<vec4<f32>>;
@group(0) @binding(16) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(17) var<storage, read> dout4: array<vec4<f32>>;
@group(0) @binding(18) var<storage, read_write> dinp4: array<vec4<f32>>;
// The fused residual forward's second summand and the sum it stores (RESIDUAL; the host binds
// stand-ins, inp and out, when it is off).
@group(0) @binding(19) var<storage, read> addend4: array<vec4<f32>>;
@group(0) @binding(20) var<storage, read_write> residual4: array<vec4<f32>>;
override RESIDUAL: bool = false;
@group(0) @binding(21) var<storage, read_write> dweight4: array<vec4<f32>>;
@group(0) @binding(22) var<storage, read_write> dbias4: array<vec4<f32>>;
// TEXTURE_LOADS: inp (and addend) or inp and dout, weight and bias as textures. The other
// variants bind 1×1 stand-ins (the vec4 entry points use the bindings either way), and so does
// the texture variant for an operand it does not read.
override TEXTURE_LOADS: bool = false;
@group(0) @binding(23) var inp_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(24) var second_tex: texture_storage_2d<rgba32float, read>; // addend, or dout
@group(0) @binding(25) var weight_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(26) var bias_tex: texture_storage_2d<rgba32float, read>;

fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn layernorm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let row = flat_index(wid, nwg, lid);
    if (row >= params.rows) { return; }
    let c = params.c;
    let base = row * c;
    var sum = 0.0;
    for (var i = 0u; i < c; i++) { sum += inp[base + i]; }
    let m = sum / f32(c);
    // Second pass for the variance: the row is in cache, and it avoids E[x²] − E[x]² cancellation.
    var sq = 0.0;
    for (var i = 0u; i < c; i++) { let d = inp[base + i] - m; sq += d * d; }
    let s = inverseSqrt(sq / f32(c) + params.eps);
    for (var i = 0u; i < c; i++) {
        out[base + i] = (inp[base + i] - m) * s * weight[i] + bias[i];
    }
    mean[row] = m;
    rstd[row] = s;
}

@compute @workgroup_size(WG)
fn layernorm_backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let row = flat_index(wid, nwg, lid);
    if (row >= params.rows) { return; }
    let c = params.c;
    let base = row * c;
    let m = saved_mean[row];
    let s = saved_rstd[row];
    var g_mean = 0.0;
    var gn_mean = 0.0;
    for (var i = 0u; i < c; i++) {
        let n = (inp[base + i] - m) * s;
        let g = dout[base + i] * weight[i];
        g_mean += g;
        gn_mean += g * n;
    }
    g_mean /= f32(c);
    gn_mean /= f32(c);
    for (var i = 0u; i < c; i++) {
        let n = (inp[base + i] - m) * s;
        let g = dout[base + i] * weight[i];
        dinp[base + i] += s * (g - g_mean - n * gn_mean);
    }
}

// The parameter gradients are column sums over the rows. A workgroup of COLS × LANES
// invocations owns COLS channels; lane l of a channel walks rows l, l + LANES, …, and the lanes'
// partial sums are added in workgroup memory (LANES times the parallelism of an invocation per
// channel, which left a GPU nearly idle at a small model's width).
// Launch: workgroup 256; grid = ceil(C/16) laid out 2D.
const COLS: u32 = 16u;  // (kernels::layernorm::PARAMS_COLS)
const LANES: u32 = 16u;
var<workgroup> lane_sums: array<vec2<f32>, COLS * LANES>; // [LANES][COLS]: (dweight, dbias) partials

@compute @workgroup_size(COLS * LANES)
fn layernorm_backward_params(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let col = lid % COLS;
    let lane = lid / COLS;
    let ch = (wid.y * nwg.x + wid.x) * COLS + col;
    var sums = vec2<f32>(0.0);
    if (ch < params.c) {
        for (var row = lane; row < params.rows; row += LANES) {
            let at = row * params.c + ch;
            let n = (inp[at] - saved_mean[row]) * saved_rstd[row];
            sums += dout[at] * vec2<f32>(n, 1.0);
        }
    }
    lane_sums[lid] = sums;
    workgroupBarrier();
    if (lane == 0u && ch < params.c) {
        var total = vec2<f32>(0.0);
        for (var l = 0u; l < LANES; l++) { total += lane_sums[l * COLS + col]; }
        dweight[ch] += total.x;
        dbias[ch] += total.y;
    }
}

// The same with a workgroup owning COLS vec4s of channels: a quarter of the loads, which on a
// CPU adapter are each a loop over the lanes (with TEXTURE_LOADS, the textures the input
// gradient read, packed once for both).
var<workgroup> lane_sums4: array<vec4<f32>, 2u * COLS * LANES>; // [LANES][COLS] (dweight, dbias)

@compute @workgroup_size(COLS * LANES)
fn layernorm_backward_params4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(local_invocation_index) lid: u32) {
    let col = lid % COLS;
    let lane = lid / COLS;
    let c4 = (wid.y * nwg.x + wid.x) * COLS + col;
    let width4 = params.c / 4u;
    var dw = vec4<f32>(0.0);
    var db = vec4<f32>(0.0);
    if (c4 < width4) {
        for (var row = lane; row < params.rows; row += LANES) {
            let g = dout_at(row, c4);
            dw += g * (inp_at(row, c4) - saved_mean[row]) * saved_rstd[row];
            db += g;
        }
    }
    lane_sums4[2u * lid] = dw;
    lane_sums4[2u * lid + 1u] = db;
    workgroupBarrier();
    if (lane == 0u && c4 < width4) {
        var total_w = vec4<f32>(0.0);
        var total_b = vec4<f32>(0.0);
        for (var l = 0u; l < LANES; l++) {
            total_w += lane_sums4[2u * (l * COLS + col)];
            total_b += lane_sums4[2u * (l * COLS + col) + 1u];
        }
        dweight4[c4] += total_w;
        dbias4[c4] += total_b;
    }
}

// The vec4 forms' row walks take (row, start, step): an invocation alone walks start = 0,
// step = 1; a workgroup's invocation start = lid, step = WG, and the workgroup then sums the
// partials.

// vec4 i of row `row` of inp, of the second operand (addend in the forward, dout in the
// backward), and vec4 i of weight and bias: from the textures or the buffers.
fn inp_at(row: u32, i: u32) -> vec4<f32> {
    if (TEXTURE_LOADS) { return textureLoad(inp_tex, vec2<u32>(i, row)); }
    return inp4[row * (params.c / 4u) + i];
}
fn addend_at(row: u32, i: u32) -> vec4<f32> {
    if (TEXTURE_LOADS) { return textureLoad(second_tex, vec2<u32>(i, row)); }
    return addend4[row * (params.c / 4u) + i];
}
fn dout_at(row: u32, i: u32) -> vec4<f32> {
    if (TEXTURE_LOADS) { return textureLoad(second_tex, vec2<u32>(i, row)); }
    return dout4[row * (params.c / 4u) + i];
}
fn weight_at(i: u32) -> vec4<f32> {
    if (TEXTURE_LOADS) { return textureLoad(weight_tex, vec2<u32>(i, 0u)); }
    return weight4[i];
}
fn bias_at(i: u32) -> vec4<f32> {
    if (TEXTURE_LOADS) { return textureLoad(bias_tex, vec2<u32>(i, 0u)); }
    return bias4[i];
}

// Σ x over (a strided slice of) row `row`, x being inp, or with RESIDUAL inp + addend, stored
// at `residual` on the way.
fn row_sum4(row: u32, start: u32, step: u32) -> f32 {
    var sum = vec4<f32>(0.0);
    for (var i = start; i < params.c / 4u; i += step) {
        var x = inp_at(row, i);
        if (RESIDUAL) {
            x += addend_at(row, i);
            residual4[row * (params.c / 4u) + i] = x;
        }
        sum += x;
    }
    return sum.x + sum.y + sum.z + sum.w;
}

// The vec4 `i` of the row being normalised, after row_sum4 has walked it: inp's, or the stored
// sum (the same invocation wrote it, so it reads its own store), or with textures the sum again
// (the same f32 addition: the same value, from loads that are cheaper than the buffer's).
fn row4(row: u32, i: u32) -> vec4<f32> {
    if (RESIDUAL && TEXTURE_LOADS) { return inp_at(row, i) + addend_at(row, i); }
    if (RESIDUAL) { return residual4[row * (params.c / 4u) + i]; }
    return inp_at(row, i);
}

// Σ (x − m)² over the same slice (a second pass: it avoids E[x²] − E[x]² cancellation).
fn row_squares4(row: u32, m: f32, start: u32, step: u32) -> f32 {
    var sq = vec4<f32>(0.0);
    for (var i = start; i < params.c / 4u; i += step) { let d = row4(row, i) - m; sq += d * d; }
    return sq.x + sq.y + sq.z + sq.w;
}

fn write_normalized4(row: u32, m: f32, s: f32, start: u32, step: u32) {
    let base = row * (params.c / 4u);
    for (var i = start; i < params.c / 4u; i += step) {
        out4[base + i] = (row4(row, i) - m) * s * weight_at(i) + bias_at(i);
    }
}

// (Σ g, Σ g·n) with g = dout·w and n = (inp − m)·s, over the slice.
fn row_gradient_sums4(row: u32, m: f32, s: f32, start: u32, step: u32) -> vec2<f32> {
    var g_sum = vec4<f32>(0.0);
    var gn_sum = vec4<f32>(0.0);
    for (var i = start; i < params.c / 4u; i += step) {
        let n = (inp_at(row, i) - m) * s;
        let g = dout_at(row, i) * weight_at(i);
        g_sum += g;
        gn_sum += g * n;
    }
    return vec2<f32>(g_sum.x + g_sum.y + g_sum.z + g_sum.w, gn_sum.x + gn_sum.y + gn_sum.z + gn_sum.w);
}

fn add_input_gradient4(row: u32, m: f32, s: f32, g_mean: f32, gn_mean: f32, start: u32, step: u32) {
    let base = row * (params.c / 4u);
    for (var i = start; i < params.c / 4u; i += step) {
        let n = (inp_at(row, i) - m) * s;
        let g = dout_at(row, i) * weight_at(i);
        dinp4[base + i] += s * (g - g_mean - n * gn_mean);
    }
}

@compute @workgroup_size(WG)
fn layernorm_forward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let row = flat_index(wid, nwg, lid);
    if (row >= params.rows) { return; }
    let m = row_sum4(row, 0u, 1u) / f32(params.c);
    let s = inverseSqrt(row_squares4(row, m, 0u, 1u) / f32(params.c) + params.eps);
    write_normalized4(row, m, s, 0u, 1u);
    mean[row] = m;
    rstd[row] = s;
}

@compute @workgroup_size(WG)
fn layernorm_backward_input4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let row = flat_index(wid, nwg, lid);
    if (row >= params.rows) { return; }
    let m = saved_mean[row];
    let s = saved_rstd[row];
    let sums = row_gradient_sums4(row, m, s, 0u, 1u) / f32(params.c);
    add_input_gradient4(row, m, s, sums.x, sums.y, 0u, 1u);
}

@compute @workgroup_size(WG)
fn layernorm_forward_wg4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= params.rows) { return; } // uniform across the workgroup: barriers stay uniform
    let m = workgroup_sum(lid, WG, row_sum4(row, lid, WG)) / f32(params.c);
    let s = inverseSqrt(workgroup_sum(lid, WG, row_squares4(row, m, lid, WG)) / f32(params.c) + params.eps);
    write_normalized4(row, m, s, lid, WG);
    if (lid == 0u) {
        mean[row] = m;
        rstd[row] = s;
    }
}

@compute @workgroup_size(WG)
fn layernorm_backward_input_wg4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= params.rows) { return; } // uniform across the workgroup: barriers stay uniform
    let m = saved_mean[row];
    let s = saved_rstd[row];
    let sums = row_gradient_sums4(row, m, s, lid, WG);
    let g_mean = workgroup_sum(lid, WG, sums.x) / f32(params.c);
    let gn_mean = workgroup_sum(lid, WG, sums.y) / f32(params.c);
    add_input_gradient4(row, m, s, g_mean, gn_mean, lid, WG);
}
