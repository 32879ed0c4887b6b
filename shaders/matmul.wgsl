// Matrix multiply, register-tiled: no workgroup memory, each invocation computes an 8×16 block
// of the output in 32 vec4 accumulators. This is the fast variant on CPU adapters (lavapipe),
// where a workgroup barrier is expensive and vec4 arithmetic maps onto SIMD lanes; see
// matmul_tiled.wgsl for the variant that real GPUs prefer.
//
// Three entry points cover a linear layer's forward and both backward products, with the
// GPT-2 weight layout W [in, out] (row-major everywhere):
//
//   matmul_nn:  out[M,N] (+)= A[M,K] · B[K,N] (+ bias[N])   forward: out = inp · W + b
//               needs N % 4 == 0; A read as vec4 along K (as scalars with A_SCALAR), B as
//               vec4 along N
//   matmul_nt:  out[M,N] (+)= A[M,K] · B[N,K]ᵀ              dinp = dout · Wᵀ, logits = x · wteᵀ
//               needs K % 4 == 0; A and B both read as vec4 along K; scalar stores (any N)
//   matmul_tn:  out[M,N] (+)= A[K,M]ᵀ · B[K,N]              dW = inpᵀ · dout
//               needs N % 4 == 0; A read as vec4 along M (as scalars with A_SCALAR), B as
//               vec4 along N
//
// The epilogue (ACCUMULATE, HAS_BIAS, HAS_GELU, GELU_BACKWARD below): accumulate into out
// (gradients), add the bias (matmul_nn only), also store gelu of each output at `post`
// (matmul_nn only: c_fc's forward, whose `out` keeps the pre-activation the backward needs), or
// store gelu'(pre)·(the product) with the pre-activation read at `post` (matmul_nn only: an NT
// product runs there with B transposed; the input gradient of mlp.c_proj taken back through
// c_fc's GELU).
// Output row r, column c is stored at out[r·out_stride + out_col + c], and A is read from rows
// of a_stride elements starting at column a_col, so that a matmul split over column slices
// (when an operand exceeds the adapter's binding size) reads and writes in place; the vec4
// axes need out_stride, out_col, a_stride and a_col to be multiples of 4.
// Rows/columns past M/N re-read the last valid row/column (clamped) and are never stored, so
// any M and N work; only the vec4 axes need multiples of 4.
// With B_F16, B holds f16 values two to a u32 (pack2x16float, a generation's weights: see
// kernels::f16_weights), read at binding 8 and widened to f32; indices stay in vec4 units.
//
// Launch: workgroup (8, 8), 64 invocations. Tile (x, y) is output rows 8y..8y+7 and columns
// 16x..16x+15. A workgroup covers 8 tile rows of G = params.group_columns tile columns, its
// invocation lid < 8·G taking tile row lid / G and column lid % G (kernels::matmul::
// group_columns: G ≤ 8, the tile columns shared evenly among the workgroups of a row), so that
// neighbouring invocations hold neighbouring tiles and a product of few columns still fills
// each SIMD vector or warp; invocations past 8·G return at once. Grid = (ceil(ceil(N/16) / G),
// ceil(M/64)).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    out_stride: u32, // elements between output rows (N unless writing a column slice)
    out_col: u32,    // first output column written (0 unless writing a column slice)
    a_stride: u32,   // elements between rows of A as stored (K, or M for the transposed A)
    a_col: u32,      // first column of A as stored that the product reads (0 unless a slice)
    group_columns: u32, // tile columns per workgroup (see Launch)
}

// The epilogue is fixed per pipeline by override constants (kernels::matmul::epilogue), not by
// a field of params: on lavapipe an untaken branch's loads and stores still loop over the
// lanes, which cost a K = 128 product a quarter of its time.
override ACCUMULATE: bool = false; // add to what out holds (gradients)
override HAS_BIAS: bool = false;   // add bias[column]
override HAS_GELU: bool = false;   // also store gelu of each output at `post`
override GELU_BACKWARD: bool = false; // store gelu'(post)·(the product) instead of the product
const WG_X: u32 = 8u; // invocations per workgroup along N (kernels::matmul::WG_X)
const WG_Y: u32 = 8u; // along M (kernels::matmul::WG_Y)

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> out_scalar: array<f32>;
// The same A as scalars, for matmul_nn and matmul_tn when A_SCALAR is set: an A whose rows do
// not start on vec4 boundaries (GPT-2's logits gradient, rows of 50257) or whose vec4 axis is
// ragged is read four scalars at a time, past-the-end columns as zeros, so the fast kernels
// still run (the host binds the buffer at both bindings).
@group(0) @binding(6) var<storage, read> a_scalar: array<f32>;
// The GELU epilogue's second tensor, laid out as out: its output (HAS_GELU), or the
// pre-activation it reads (GELU_BACKWARD).
@group(0) @binding(7) var<storage, read_write> post: array<vec4<f32>>;

// B as f16 pairs, read when B_F16 is set: a vec4 of B is two words (the host binds a stand-in
// at the binding of the other format).
@group(0) @binding(8) var<storage, read> b_f16: array<vec2<u32>>;

override A_SCALAR: bool = false;
override B_F16: bool = false;

// The i-th vec4 of B (four consecutive elements of a row), from f32 or f16 storage.
fn b4(i: u32) -> vec4<f32> {
    if (B_F16) {
        let w = b_f16[i];
        return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
    }
    return b[i];
}

// A[base + col .. base + col + 3] as a vec4 (base, col in scalars), columns ≥ `limit` zero.
// Aligned, it is one vec4 load, clamped to the last whole vec4 below `limit`.
fn a_vec4(base: u32, col: u32, limit: u32) -> vec4<f32> {
    if (A_SCALAR) {
        var v = vec4<f32>(0.0);
        for (var j = 0u; j < 4u; j++) {
            if (col + j < limit) { v[j] = a_scalar[base + col + j]; }
        }
        return v;
    }
    return a[(base + min(col, limit - 4u)) / 4u];
}

// The tile (column, row) of invocation lid < 8·G of workgroup wid (see Launch).
fn tile_of(wid: vec3<u32>, lid: u32) -> vec2<u32> {
    let g = params.group_columns;
    return vec2<u32>(wid.x * g + lid % g, wid.y * WG_Y + lid / g);
}

// Stores the 8×16 block held in acc (row r, vec4 column c at acc[r*4+c]) at rows m0.., vec4
// columns c0.., skipping what lies outside [M, N/4).
fn store_block(acc: ptr<function, array<vec4<f32>, 32>>, m0: u32, c0: u32, n4: u32, use_bias: bool) {
    // The bias of each vec4 column, read once rather than per row (a load is a loop over the
    // lanes on lavapipe); columns past N read the last one and are not stored.
    var column_bias: array<vec4<f32>, 4>;
    if (use_bias && HAS_BIAS) {
        for (var c = 0u; c < 4u; c++) { column_bias[c] = bias[min(c0 + c, n4 - 1u)]; }
    }
    for (var r = 0u; r < 8u; r++) {
        let row = m0 + r;
        if (row >= params.m) { break; }
        for (var c = 0u; c < 4u; c++) {
            let col = c0 + c;
            if (col >= n4) { break; }
            var v = (*acc)[r * 4u + c] + column_bias[c];
            let at = row * (params.out_stride / 4u) + params.out_col / 4u + col;
            if (ACCUMULATE) { v += out[at]; }
            if (GELU_BACKWARD) { v = gelu_grad4(post[at], v); }
            out[at] = v;
            if (use_bias && HAS_GELU) { post[at] = gelu4(v); }
        }
    }
}

@compute @workgroup_size(WG_X, WG_Y)
fn matmul_nn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if (lid >= WG_Y * params.group_columns) { return; } // past this workgroup's tiles
    let tile = tile_of(wid, lid);
    let k4 = (params.k + 3u) / 4u; // a ragged last vec4 of K reads zeros from A (A_SCALAR)
    let n4 = params.n / 4u;
    let m0 = tile.y * 8u;
    let c0 = tile.x * 4u;
    if (m0 >= params.m || c0 >= n4) { return; }

    // Column indices (vec4 units) of the four B vec4s this invocation reads per row of B.
    let bc0 = min(c0, n4 - 1u);
    let bc1 = min(c0 + 1u, n4 - 1u);
    let bc2 = min(c0 + 2u, n4 - 1u);
    let bc3 = min(c0 + 3u, n4 - 1u);

    // Offsets (scalars) of this invocation's 8 rows of A; rows past M re-read the last.
    let ar0 = min(m0 + 0u, params.m - 1u) * params.a_stride + params.a_col;
    let ar1 = min(m0 + 1u, params.m - 1u) * params.a_stride + params.a_col;
    let ar2 = min(m0 + 2u, params.m - 1u) * params.a_stride + params.a_col;
    let ar3 = min(m0 + 3u, params.m - 1u) * params.a_stride + params.a_col;
    let ar4 = min(m0 + 4u, params.m - 1u) * params.a_stride + params.a_col;
    let ar5 = min(m0 + 5u, params.m - 1u) * params.a_stride + params.a_col;
    let ar6 = min(m0 + 6u, params.m - 1u) * params.a_stride + params.a_col;
    let ar7 = min(m0 + 7u, params.m - 1u) * params.a_stride + params.a_col;

    // acc[4r + c] holds row m0 + r, columns 4(c0 + c) .. 4(c0 + c) + 3. Fully unrolled with
    // constant indices so that the 32 accumulators stay in registers.
    var acc: array<vec4<f32>, 32>;
    for (var kk = 0u; kk < k4; kk++) {
        // Rows 4kk..4kk+3 of B as four 4×4 blocks: column j of block c is B[4kk + j, 4(c0+c)..+3],
        // so block · A[row, 4kk..4kk+3] is that row's contribution to 4 outputs.
        // (Rows past K re-read the last row; A's matching entries are zero.)
        let r0 = min(kk * 4u, params.k - 1u) * n4;
        let r1 = min(kk * 4u + 1u, params.k - 1u) * n4;
        let r2 = min(kk * 4u + 2u, params.k - 1u) * n4;
        let r3 = min(kk * 4u + 3u, params.k - 1u) * n4;
        let bm0 = mat4x4<f32>(b4(r0 + bc0), b4(r1 + bc0), b4(r2 + bc0), b4(r3 + bc0));
        let bm1 = mat4x4<f32>(b4(r0 + bc1), b4(r1 + bc1), b4(r2 + bc1), b4(r3 + bc1));
        let bm2 = mat4x4<f32>(b4(r0 + bc2), b4(r1 + bc2), b4(r2 + bc2), b4(r3 + bc2));
        let bm3 = mat4x4<f32>(b4(r0 + bc3), b4(r1 + bc3), b4(r2 + bc3), b4(r3 + bc3));
        let a0 = a_vec4(ar0, kk * 4u, params.k);
        acc[0] += bm0 * a0; acc[1] += bm1 * a0; acc[2] += bm2 * a0; acc[3] += bm3 * a0;
        let a1 = a_vec4(ar1, kk * 4u, params.k);
        acc[4] += bm0 * a1; acc[5] += bm1 * a1; acc[6] += bm2 * a1; acc[7] += bm3 * a1;
        let a2 = a_vec4(ar2, kk * 4u, params.k);
        acc[8] += bm0 * a2; acc[9] += bm1 * a2; acc[10] += bm2 * a2; acc[11] += bm3 * a2;
        let a3 = a_vec4(ar3, kk * 4u, params.k);
        acc[12] += bm0 * a3; acc[13] += bm1 * a3; acc[14] += bm2 * a3; acc[15] += bm3 * a3;
        let a4 = a_vec4(ar4, kk * 4u, params.k);
        acc[16] += bm0 * a4; acc[17] += bm1 * a4; acc[18] += bm2 * a4; acc[19] += bm3 * a4;
        let a5 = a_vec4(ar5, kk * 4u, params.k);
        acc[20] += bm0 * a5; acc[21] += bm1 * a5; acc[22] += bm2 * a5; acc[23] += bm3 * a5;
        let a6 = a_vec4(ar6, kk * 4u, params.k);
        acc[24] += bm0 * a6; acc[25] += bm1 * a6; acc[26] += bm2 * a6; acc[27] += bm3 * a6;
        let a7 = a_vec4(ar7, kk * 4u, params.k);
        acc[28] += bm0 * a7; acc[29] += bm1 * a7; acc[30] += bm2 * a7; acc[31] += bm3 * a7;
    }
    store_block(&acc, m0, c0, n4, true);
}

@compute @workgroup_size(WG_X, WG_Y)
fn matmul_tn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if (lid >= WG_Y * params.group_columns) { return; } // past this workgroup's tiles
    let tile = tile_of(wid, lid);
    let n4 = params.n / 4u;
    let m0 = tile.y * 8u;
    let c0 = tile.x * 4u;
    if (m0 >= params.m || c0 >= n4) { return; }

    let bc0 = min(c0, n4 - 1u);
    let bc1 = min(c0 + 1u, n4 - 1u);
    let bc2 = min(c0 + 2u, n4 - 1u);
    let bc3 = min(c0 + 3u, n4 - 1u);

    var acc: array<vec4<f32>, 32>;
    for (var k = 0u; k < params.k; k++) {
        // Row k of A holds A[k, m0..m0+7] (the transposed operand); row k of B its 16 columns.
        let row = k * params.a_stride + params.a_col;
        let lo = a_vec4(row, m0, params.m);
        let hi = a_vec4(row, m0 + 4u, params.m);
        let rb = k * n4;
        let b0 = b4(rb + bc0); let b1 = b4(rb + bc1); let b2 = b4(rb + bc2); let b3 = b4(rb + bc3);
        for (var r = 0u; r < 4u; r++) {
            let x = lo[r];
            acc[r * 4u + 0u] += x * b0; acc[r * 4u + 1u] += x * b1;
            acc[r * 4u + 2u] += x * b2; acc[r * 4u + 3u] += x * b3;
            let y = hi[r];
            acc[(r + 4u) * 4u + 0u] += y * b0; acc[(r + 4u) * 4u + 1u] += y * b1;
            acc[(r + 4u) * 4u + 2u] += y * b2; acc[(r + 4u) * 4u + 3u] += y * b3;
        }
    }
    store_block(&acc, m0, c0, n4, false);
}

@compute @workgroup_size(WG_X, WG_Y)
fn matmul_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if (lid >= WG_Y * params.group_columns) { return; } // past this workgroup's tiles
    let tile = tile_of(wid, lid);
    let k4 = params.k / 4u;
    let a_row4 = params.a_stride / 4u; // vec4s per row of A as stored
    let a_col4 = params.a_col / 4u;
    let m0 = tile.y * 8u;
    if (tile.x >= (params.n + 15u) / 16u || m0 >= params.m) { return; }
    let n0 = tile.x * 16u;

    // Row offsets (vec4 units): 8 rows of A, and the 16 rows of B that are this invocation's
    // output columns; rows past M or N re-read the last one.
    let ar0 = min(m0 + 0u, params.m - 1u) * a_row4 + a_col4;
    let ar1 = min(m0 + 1u, params.m - 1u) * a_row4 + a_col4;
    let ar2 = min(m0 + 2u, params.m - 1u) * a_row4 + a_col4;
    let ar3 = min(m0 + 3u, params.m - 1u) * a_row4 + a_col4;
    let ar4 = min(m0 + 4u, params.m - 1u) * a_row4 + a_col4;
    let ar5 = min(m0 + 5u, params.m - 1u) * a_row4 + a_col4;
    let ar6 = min(m0 + 6u, params.m - 1u) * a_row4 + a_col4;
    let ar7 = min(m0 + 7u, params.m - 1u) * a_row4 + a_col4;
    let br0 = min(n0 + 0u, params.n - 1u) * k4;
    let br1 = min(n0 + 1u, params.n - 1u) * k4;
    let br2 = min(n0 + 2u, params.n - 1u) * k4;
    let br3 = min(n0 + 3u, params.n - 1u) * k4;
    let br4 = min(n0 + 4u, params.n - 1u) * k4;
    let br5 = min(n0 + 5u, params.n - 1u) * k4;
    let br6 = min(n0 + 6u, params.n - 1u) * k4;
    let br7 = min(n0 + 7u, params.n - 1u) * k4;
    let br8 = min(n0 + 8u, params.n - 1u) * k4;
    let br9 = min(n0 + 9u, params.n - 1u) * k4;
    let br10 = min(n0 + 10u, params.n - 1u) * k4;
    let br11 = min(n0 + 11u, params.n - 1u) * k4;
    let br12 = min(n0 + 12u, params.n - 1u) * k4;
    let br13 = min(n0 + 13u, params.n - 1u) * k4;
    let br14 = min(n0 + 14u, params.n - 1u) * k4;
    let br15 = min(n0 + 15u, params.n - 1u) * k4;

    // acc[4r + c] holds row m0 + r, columns n0 + 4c .. n0 + 4c + 3; unrolled as in matmul_nn.
    var acc: array<vec4<f32>, 32>;
    for (var kk = 0u; kk < k4; kk++) {
        // Column j of block c is B[n0 + 4c + j, 4kk..4kk+3], so A-row · block is 4 dot products.
        let bm0 = mat4x4<f32>(b4(br0 + kk), b4(br1 + kk), b4(br2 + kk), b4(br3 + kk));
        let bm1 = mat4x4<f32>(b4(br4 + kk), b4(br5 + kk), b4(br6 + kk), b4(br7 + kk));
        let bm2 = mat4x4<f32>(b4(br8 + kk), b4(br9 + kk), b4(br10 + kk), b4(br11 + kk));
        let bm3 = mat4x4<f32>(b4(br12 + kk), b4(br13 + kk), b4(br14 + kk), b4(br15 + kk));
        let a0 = a[ar0 + kk];
        acc[0] += a0 * bm0; acc[1] += a0 * bm1; acc[2] += a0 * bm2; acc[3] += a0 * bm3;
        let a1 = a[ar1 + kk];
        acc[4] += a1 * bm0; acc[5] += a1 * bm1; acc[6] += a1 * bm2; acc[7] += a1 * bm3;
        let a2 = a[ar2 + kk];
        acc[8] += a2 * bm0; acc[9] += a2 * bm1; acc[10] += a2 * bm2; acc[11] += a2 * bm3;
        let a3 = a[ar3 + kk];
        acc[12] += a3 * bm0; acc[13] += a3 * bm1; acc[14] += a3 * bm2; acc[15] += a3 * bm3;
        let a4 = a[ar4 + kk];
        acc[16] += a4 * bm0; acc[17] += a4 * bm1; acc[18] += a4 * bm2; acc[19] += a4 * bm3;
        let a5 = a[ar5 + kk];
        acc[20] += a5 * bm0; acc[21] += a5 * bm1; acc[22] += a5 * bm2; acc[23] += a5 * bm3;
        let a6 = a[ar6 + kk];
        acc[24] += a6 * bm0; acc[25] += a6 * bm1; acc[26] += a6 * bm2; acc[27] += a6 * bm3;
        let a7 = a[ar7 + kk];
        acc[28] += a7 * bm0; acc[29] += a7 * bm1; acc[30] += a7 * bm2; acc[31] += a7 * bm3;
    }
    for (var r = 0u; r < 8u; r++) {
        let row = m0 + r;
        if (row >= params.m) { break; }
        for (var j = 0u; j < 16u; j++) {
            let col = n0 + j;
            if (col >= params.n) { break; }
            var v = acc[r * 4u + j / 4u][j % 4u];
            let at = row * params.out_stride + params.out_col + col;
            if (ACCUMULATE) { v += out_scalar[at]; }
            out_scalar[at] = v;
        }
    }
}
