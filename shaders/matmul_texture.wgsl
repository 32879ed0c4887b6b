// Matrix multiply with both operands read through textures: the variant for adapters whose
// storage-buffer loads are slow. On lavapipe a storage-buffer load becomes a per-lane loop with
// bounds and mask branches, and on some CPUs (AMD's AVX2 cores) every matmul tile shape is
// bound by the number of values loaded that way; a `textureLoad` of an rgba32float texel is not,
// and the same tiles run several times faster (docs/design.md §2). The textures are read-only
// storage textures rather than sampled ones: an image load has no mip level to look up, which
// on lavapipe cut the same kernels' time by a fifth to a quarter. Each product runs in two kinds of
// dispatch, both here:
//
//   pack_rows,       copy a block of a row-major matrix in a storage buffer (pack_rows), or
//   pack_columns:    of its transpose (pack_columns), into an rgba32float texture: texel
//                    (x, y) holds row y, columns 4x..4x+3 of the block, and zeros past the
//                    block's rows and columns (textures are padded to whole tiles, so the
//                    product reads no bounds). Transposing while packing makes every layout
//                    NN below.
//   matmul_texture:  out[M,N] (+)= At[M,K] · Bt[K,N] (+ bias[N]) with At and Bt packed.
//   unpad_columns:   out[M,N] (+)= src[M,N'] (+ bias[N]) for an N that is not a multiple of 4
//                    (GPT-2's logits, 50257 wide): matmul_texture stores whole vec4s, so such
//                    a product goes to a scratch of N' = N rounded up to 4 columns first. (The
//                    register-tiled path uses it too, N = N' = 1: a head's forward with its bias.)
//
// matmul_texture: each invocation computes a 16×16 block of the output in 64 vec4
// accumulators, named rather than indexed so that they stay in registers. Output row r, vec4
// column c is out[out_offset4 + r·out_stride4 + c] (a block of a larger output, when the
// product is split to fit the adapter's texture size); it stores ceil(N/4) vec4s per row.
// The epilogue (ACCUMULATE, HAS_BIAS, HAS_GELU, GELU_BACKWARD below) adds bias[bias_offset4·4 +
// column], and stores GELU's output at `post`, laid out as out (c_fc's forward), or stores
// gelu'(pre)·(the product) with the pre-activation read at `post` (mlp.c_proj's input gradient
// taken back through c_fc's GELU: cuBLASLt's DGELU epilogue). With SUM_B_COLUMNS a
// product also sums Bt's columns over K into b_column_sums (below).
// Textures: At is ceil(K/4) texels wide and 16·ceil(M/16) rows high; Bt is 4·ceil(N/16)
// texels wide and 4·ceil(K/4) rows high.
//
// Launch: workgroup 64. pack_rows: one invocation per texel; pack_columns: one per 4 texels of
// a column; unpad_columns: one per output element; all three with flat index
// wid.y·nwg.x·64 + wid.x·64 + lid (grid from Gpu::grid). matmul_texture: one invocation per 16×16
// tile of the output; a workgroup covers 8 tile rows of G = params.group_columns ≤ 8 tile
// columns (kernels::matmul::group_columns: a row's tile columns shared evenly among its
// workgroups), invocation lid < 8·G taking tile row lid / G and tile column lid % G, so that
// neighbouring invocations hold neighbouring tiles even in a product of few columns (64 in the
// demo's model: G = 4), whose SIMD vectors or warps a fixed 8 × 8 layout would half leave idle;
// invocations past 8·G return at once. Grid = (ceil(ceil(N/16) / G), ceil(M/128)).
struct PackParams {
    rows: u32,       // rows of the block (texel rows past it are zeros)
    cols: u32,       // columns of the block (texel columns past it are zeros)
    stride: u32,     // elements between rows of the source as stored
    offset: u32,     // element of the source holding block (0, 0)
    transposed: u32, // 1: block (r, c) is source[offset + c·stride + r], else [offset + r·stride + c]
    width: u32,      // the texture's size in texels
    height: u32,
    pad: u32,
}

struct Params {
    m: u32,
    n: u32,           // columns stored: a multiple of 4
    k4: u32,          // texels of At per row: ceil(K/4)
    out_stride4: u32, // vec4s between output rows
    out_offset4: u32, // vec4 of out holding output (0, 0)
    bias_offset4: u32,// vec4 of bias holding output column 0's bias
    group_columns: u32, // tile columns per workgroup (see Launch)
}

// The epilogue is fixed per pipeline by override constants (kernels::matmul::epilogue), not by
// a field of params: on lavapipe an untaken branch's loads and stores still loop over the
// lanes, which cost a K = 128 product a quarter of its time.
override ACCUMULATE: bool = false; // add to what out holds (gradients)
override HAS_BIAS: bool = false;   // add bias[column]
override HAS_GELU: bool = false;   // also store gelu of each output at `post`
override GELU_BACKWARD: bool = false; // store gelu'(post)·(the product) instead of the product
const WG: u32 = 64u;   // invocations per workgroup (kernels::matmul::WG)
const TILE: u32 = 16u; // output rows and columns per invocation (kernels::matmul::TEXTURE_TILE)
const GROUP_ROWS: u32 = 8u; // matmul_texture: tile rows per workgroup (kernels::matmul::TEXTURE_GROUP_ROWS)

@group(0) @binding(0) var<uniform> pack_params: PackParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var dst: texture_storage_2d<rgba32float, write>;
// The same source as vec4s (the host binds the buffer at both), read when SRC_VEC4 says its
// rows start on vec4 boundaries (offset and stride multiples of 4): a quarter of the loads.
@group(0) @binding(7) var<storage, read> src4: array<vec4<f32>>;

override SRC_VEC4: bool = false;

// The index of an invocation of the one-dimensional entry points (grid from Gpu::grid).
fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// Block element (r, c) of the source, or 0 outside the block.
fn block_element(r: u32, c: u32) -> f32 {
    let p = pack_params;
    if (r >= p.rows || c >= p.cols) { return 0.0; }
    if (p.transposed == 1u) { return src[p.offset + c * p.stride + r]; }
    return src[p.offset + r * p.stride + c];
}

// The texel (x, y) of the packed block, read element by element.
fn block_texel(x: u32, y: u32) -> vec4<f32> {
    return vec4<f32>(block_element(y, 4u * x), block_element(y, 4u * x + 1u),
                     block_element(y, 4u * x + 2u), block_element(y, 4u * x + 3u));
}

// A block stored row by row: one invocation per texel, neighbouring invocations along a row.
@compute @workgroup_size(WG)
fn pack_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = pack_params;
    let i = flat_index(wid, nwg, lid);
    if (i >= p.width * p.height) { return; }
    let x = i % p.width;
    let y = i / p.width;
    var v: vec4<f32>;
    if (SRC_VEC4 && y < p.rows && 4u * x + 4u <= p.cols) {
        v = src4[(p.offset + y * p.stride) / 4u + x];
    } else {
        v = block_texel(x, y);
    }
    textureStore(dst, vec2<u32>(x, y), v);
}

// A block stored transposed: one invocation per 4×4 square (texel column x, rows 4q..4q+3),
// which is four vec4s of the source (its rows 4x..4x+3, columns 4q..4q+3) transposed;
// neighbouring invocations down a texel column, so along the source's rows.
@compute @workgroup_size(WG)
fn pack_columns(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = pack_params;
    let i = flat_index(wid, nwg, lid);
    let squares = p.height / 4u; // texture heights are multiples of 4
    if (i >= p.width * squares) { return; }
    let x = i / squares;
    let y = 4u * (i % squares);
    if (SRC_VEC4 && y + 4u <= p.rows && 4u * x + 4u <= p.cols) {
        let at = (p.offset + 4u * x * p.stride + y) / 4u;
        let step = p.stride / 4u;
        let s = mat4x4<f32>(src4[at], src4[at + step], src4[at + 2u * step], src4[at + 3u * step]);
        let t = transpose(s);
        for (var j = 0u; j < 4u; j++) { textureStore(dst, vec2<u32>(x, y + j), t[j]); }
    } else {
        for (var j = 0u; j < 4u; j++) { textureStore(dst, vec2<u32>(x, y + j), block_texel(x, y + j)); }
    }
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(3) var a_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(4) var b_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> post: array<vec4<f32>>; // GELU's output, or pre-activation

// SUM_B_COLUMNS: also add Bt's column sums over K to b_column_sums[bias_offset4·4 + column], a
// dW = inpᵀ·dout product's bias gradient Σ_rows dout, from the texels the product reads anyway
// (cuBLASLt's BGRADB epilogue). The invocations (subgroups) of the first block of output rows
// store them, accumulating with ACCUMULATE.
override SUM_B_COLUMNS: bool = false;
@group(0) @binding(12) var<storage, read_write> b_column_sums: array<vec4<f32>>;

// Adds the sums of Bt's vec4 column `col` (stores them, without ACCUMULATE), unless past N/4.
fn store_column_sums(col: u32, sums: vec4<f32>) {
    if (col >= params.n / 4u) { return; }
    let at = params.bias_offset4 + col;
    var v = sums;
    if (ACCUMULATE) { v += b_column_sums[at]; }
    b_column_sums[at] = v;
}

// The bias of vec4 column `col` (zeros without HAS_BIAS; a column past N reads the last, and is
// never stored). The kernels read it once per column, not per stored row: each read is four
// scalar loads, which on lavapipe cost as much as a store.
fn bias_vec4(col: u32) -> vec4<f32> {
    if (!HAS_BIAS) { return vec4<f32>(0.0); }
    let at = 4u * (params.bias_offset4 + min(col, params.n / 4u - 1u));
    return vec4<f32>(bias[at], bias[at + 1u], bias[at + 2u], bias[at + 3u]);
}

// Stores output row `row`, vec4 column `col`: `value` (its bias already added) with the
// accumulation and GELU of the epilogue, unless it lies outside [M, N/4).
fn store_vec4(row: u32, col: u32, value: vec4<f32>) {
    if (row >= params.m || col >= params.n / 4u) { return; }
    var v = value;
    let at = params.out_offset4 + row * params.out_stride4 + col;
    if (ACCUMULATE) { v += out[at]; }
    if (GELU_BACKWARD) { v = gelu_grad4(post[at], v); }
    out[at] = v;
    if (HAS_GELU) { post[at] = gelu4(v); }
}

// Stores one output row's 16 columns (four vec4s from vec4 column c0) with their biases.
fn store_row(row: u32, c0: u32, v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>, biases: mat4x4<f32>) {
    store_vec4(row, c0, v0 + biases[0]);
    store_vec4(row, c0 + 1u, v1 + biases[1]);
    store_vec4(row, c0 + 2u, v2 + biases[2]);
    store_vec4(row, c0 + 3u, v3 + biases[3]);
}

@compute @workgroup_size(WG)
fn matmul_texture(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let columns = params.group_columns;
    if (lid >= GROUP_ROWS * columns) { return; } // past this workgroup's tiles
    let m0 = (wid.y * GROUP_ROWS + lid / columns) * TILE;
    let c0 = (wid.x * columns + lid % columns) * (TILE / 4u); // first vec4 column
    if (m0 >= params.m || 4u * c0 >= params.n) { return; }

    // accR_C holds row m0 + R, columns 4(c0 + C) .. 4(c0 + C) + 3.
    let zero = vec4<f32>(0.0);
    var acc0_0 = zero; var acc0_1 = zero; var acc0_2 = zero; var acc0_3 = zero;
    var acc1_0 = zero; var acc1_1 = zero; var acc1_2 = zero; var acc1_3 = zero;
    var acc2_0 = zero; var acc2_1 = zero; var acc2_2 = zero; var acc2_3 = zero;
    var acc3_0 = zero; var acc3_1 = zero; var acc3_2 = zero; var acc3_3 = zero;
    var acc4_0 = zero; var acc4_1 = zero; var acc4_2 = zero; var acc4_3 = zero;
    var acc5_0 = zero; var acc5_1 = zero; var acc5_2 = zero; var acc5_3 = zero;
    var acc6_0 = zero; var acc6_1 = zero; var acc6_2 = zero; var acc6_3 = zero;
    var acc7_0 = zero; var acc7_1 = zero; var acc7_2 = zero; var acc7_3 = zero;
    var acc8_0 = zero; var acc8_1 = zero; var acc8_2 = zero; var acc8_3 = zero;
    var acc9_0 = zero; var acc9_1 = zero; var acc9_2 = zero; var acc9_3 = zero;
    var acc10_0 = zero; var acc10_1 = zero; var acc10_2 = zero; var acc10_3 = zero;
    var acc11_0 = zero; var acc11_1 = zero; var acc11_2 = zero; var acc11_3 = zero;
    var acc12_0 = zero; var acc12_1 = zero; var acc12_2 = zero; var acc12_3 = zero;
    var acc13_0 = zero; var acc13_1 = zero; var acc13_2 = zero; var acc13_3 = zero;
    var acc14_0 = zero; var acc14_1 = zero; var acc14_2 = zero; var acc14_3 = zero;
    var acc15_0 = zero; var acc15_1 = zero; var acc15_2 = zero; var acc15_3 = zero;
    var sum0 = zero; var sum1 = zero; var sum2 = zero; var sum3 = zero; // SUM_B_COLUMNS
    for (var k4 = 0u; k4 < params.k4; k4++) {
        // Rows 4k4..4k4+3 of Bt as four 4×4 blocks: column j of block C is
        // Bt[4k4 + j, 4(c0 + C)..+3], so block · At[row, 4k4..4k4+3] is that row's
        // contribution to 4 outputs.
        let k = 4u * k4;
        let b0 = mat4x4<f32>(textureLoad(b_tex, vec2<u32>(c0, k)), textureLoad(b_tex, vec2<u32>(c0, k + 1u)),
                             textureLoad(b_tex, vec2<u32>(c0, k + 2u)), textureLoad(b_tex, vec2<u32>(c0, k + 3u)));
        let b1 = mat4x4<f32>(textureLoad(b_tex, vec2<u32>(c0 + 1u, k)), textureLoad(b_tex, vec2<u32>(c0 + 1u, k + 1u)),
                             textureLoad(b_tex, vec2<u32>(c0 + 1u, k + 2u)), textureLoad(b_tex, vec2<u32>(c0 + 1u, k + 3u)));
        let b2 = mat4x4<f32>(textureLoad(b_tex, vec2<u32>(c0 + 2u, k)), textureLoad(b_tex, vec2<u32>(c0 + 2u, k + 1u)),
                             textureLoad(b_tex, vec2<u32>(c0 + 2u, k + 2u)), textureLoad(b_tex, vec2<u32>(c0 + 2u, k + 3u)));
        let b3 = mat4x4<f32>(textureLoad(b_tex, vec2<u32>(c0 + 3u, k)), textureLoad(b_tex, vec2<u32>(c0 + 3u, k + 1u)),
                             textureLoad(b_tex, vec2<u32>(c0 + 3u, k + 2u)), textureLoad(b_tex, vec2<u32>(c0 + 3u, k + 3u)));
        if (SUM_B_COLUMNS) {
            sum0 += b0[0] + b0[1] + b0[2] + b0[3]; sum1 += b1[0] + b1[1] + b1[2] + b1[3];
            sum2 += b2[0] + b2[1] + b2[2] + b2[3]; sum3 += b3[0] + b3[1] + b3[2] + b3[3];
        }
        var a: vec4<f32>;
        a = textureLoad(a_tex, vec2<u32>(k4, m0 + 0u));
        acc0_0 += b0 * a; acc0_1 += b1 * a; acc0_2 += b2 * a; acc0_3 += b3 * a;
        a = textureLoad(a_tex, vec2<u32>(k4, m0 + 1u));
        acc1_0 += b0 * a; acc1_1 += b1 * a; acc1_2 += b2 * a; acc1_3 += b3 * a;
        a = textureLoad(a_tex, vec2<u32>(k4, m0 + 2u));
        acc2_0 += b0 * a; acc2_1 += b1 * a; acc2_2 += b2 * a; acc2_3 += b3 * a;
        a = textureLoad(a_tex, vec2<u32>(k4, m0 + 3u));
        acc3_0 += b0 * a; acc3_1 += b1 * a; acc3_2 += b2 * a; acc3_3 += b3 * a;
        a = textureLoad(a_tex, vec2<u32>(k4, m0 + 4u));
        acc4_0 += b0 * a; acc4_1 += b1 * a; acc4_2 += b2 * a; acc4_3 += b3 * a;
        a = textureLoad(a_tex, vec2<u32>(k4, m0 + 5u));
        acc5_0 += b0 * a; acc5_1 += b1 * a; acc5_2 += b2 * a; acc5_3 += b3 * a;
        a = textureLoad(a_tex, vec2<u32>(k4, m0 + 6u));
        acc6_0 += b0 * a; acc6_1 += b1 * a; acc6_2 += b2 * a; acc6_3 += b3 * a;
        a = textureLoad(a_tex, vec2<u32>(k4, m0 + 7u));
        acc7_0 += b0 * a; acc7_1 += b1 * a; acc7_2 += b2 * a; acc7_3 += b3 * a;
        a = textureLoad(a_tex, vec2<u32>(k4, m0 + 8u));
        acc8_0 += b0 * a; acc8_1 += b1 * a; acc8_2 += b2 * a; acc8_3 += b3 * a;
        a = textureLoad(a_tex, vec2<u32>(k4, m0 + 9u));
        acc9_0 += b0 * a; acc9_1 += b1 * a; acc9_2 += b2 * a; acc9_3 += b3 * a;
        a = textureLoad(a_tex, vec2<u32>(k4, m0 + 10u));
        acc10_0 += b0 * a; acc10_1 += b1 * a; acc10_2 += b2 * a; acc10_3 += b3 * a;
        a = textureLoad(a_tex, vec2<u32>(k4, m0 + 11u));
        acc11_0 += b0 * a; acc11_1 += b1 * a; acc11_2 += b2 * a; acc11_3 += b3 * a;
        a = textureLoad(a_tex, vec2<u32>(k4, m0 + 12u));
        acc12_0 += b0 * a; acc12_1 += b1 * a; acc12_2 += b2 * a; acc12_3 += b3 * a;
        a = textureLoad(a_tex, vec2<u32>(k4, m0 + 13u));
        acc13_0 += b0 * a; acc13_1 += b1 * a; acc13_2 += b2 * a; acc13_3 += b3 * a;
        a = textureLoad(a_tex, vec2<u32>(k4, m0 + 14u));
        acc14_0 += b0 * a; acc14_1 += b1 * a; acc14_2 += b2 * a; acc14_3 += b3 * a;
        a = textureLoad(a_tex, vec2<u32>(k4, m0 + 15u));
        acc15_0 += b0 * a; acc15_1 += b1 * a; acc15_2 += b2 * a; acc15_3 += b3 * a;
    }
    let biases = mat4x4<f32>(bias_vec4(c0), bias_vec4(c0 + 1u), bias_vec4(c0 + 2u), bias_vec4(c0 + 3u));
    store_row(m0 + 0u, c0, acc0_0, acc0_1, acc0_2, acc0_3, biases);
    store_row(m0 + 1u, c0, acc1_0, acc1_1, acc1_2, acc1_3, biases);
    store_row(m0 + 2u, c0, acc2_0, acc2_1, acc2_2, acc2_3, biases);
    store_row(m0 + 3u, c0, acc3_0, acc3_1, acc3_2, acc3_3, biases);
    store_row(m0 + 4u, c0, acc4_0, acc4_1, acc4_2, acc4_3, biases);
    store_row(m0 + 5u, c0, acc5_0, acc5_1, acc5_2, acc5_3, biases);
    store_row(m0 + 6u, c0, acc6_0, acc6_1, acc6_2, acc6_3, biases);
    store_row(m0 + 7u, c0, acc7_0, acc7_1, acc7_2, acc7_3, biases);
    store_row(m0 + 8u, c0, acc8_0, acc8_1, acc8_2, acc8_3, biases);
    store_row(m0 + 9u, c0, acc9_0, acc9_1, acc9_2, acc9_3, biases);
    store_row(m0 + 10u, c0, acc10_0, acc10_1, acc10_2, acc10_3, biases);
    store_row(m0 + 11u, c0, acc11_0, acc11_1, acc11_2, acc11_3, biases);
    store_row(m0 + 12u, c0, acc12_0, acc12_1, acc12_2, acc12_3, biases);
    store_row(m0 + 13u, c0, acc13_0, acc13_1, acc13_2, acc13_3, biases);
    store_row(m0 + 14u, c0, acc14_0, acc14_1, acc14_2, acc14_3, biases);
    store_row(m0 + 15u, c0, acc15_0, acc15_1, acc15_2, acc15_3, biases);
    if (SUM_B_COLUMNS && m0 == 0u) {
        store_column_sums(c0, sum0); store_column_sums(c0 + 1u, sum1);
        store_column_sums(c0 + 2u, sum2); store_column_sums(c0 + 3u, sum3);
    }
}

struct UnpadParams {
    m: u32,
    n: u32,
    src_stride: u32, // N' (elements between rows of src)
    out_stride: u32, // elements between output rows
    out_col: u32,    // first output column written (the epilogue's ACCUMULATE and HAS_BIAS apply)
}

@group(0) @binding(0) var<uniform> unpad_params: UnpadParams;
@group(0) @binding(8) var<storage, read> unpad_src: array<f32>;
@group(0) @binding(9) var<storage, read_write> unpad_out: array<f32>;

@compute @workgroup_size(WG)
fn unpad_columns(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let p = unpad_params;
    let i = flat_index(wid, nwg, lid);
    if (i >= p.m * p.n) { return; }
    let r = i / p.n;
    let c = i % p.n;
    var v = unpad_src[r * p.src_stride + c];
    if (HAS_BIAS) { v += bias[c]; }
    let at = r * p.out_stride + p.out_col + c;
    if (ACCUMULATE) { v += unpad_out[at]; }
    unpad_out[at] = v;
}
