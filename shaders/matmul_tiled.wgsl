// Matrix multiply with workgroup-shared tiles: the fast variant on real GPUs, and the one that
// takes any shape (no vec4 alignment needed), so it also serves unaligned shapes everywhere.
//
//   out[M,N] (+)= op(A) · op(B) (+ bias[N])
//   op(A) = A[M,K] or, with TRANS_A, A[K,M]ᵀ;  op(B) = B[K,N] or, with TRANS_B, B[N,K]ᵀ
//
// So forward is (TRANS_A=false, TRANS_B=false), dinp = dout·Wᵀ is (false, true) and
// dW = inpᵀ·dout is (true, false). The epilogue (ACCUMULATE, HAS_BIAS, HAS_GELU, GELU_BACKWARD
// below): accumulate, add the bias, also store gelu of each output at `post` (c_fc's forward:
// out keeps the pre-activation), or store gelu'(pre)·(the product) with the pre-activation read
// at `post` (mlp.c_proj's input gradient taken back through c_fc's GELU). Output
// (r, c) is stored at out[r·out_stride + out_col + c], and A is read from rows of a_stride
// elements from column a_col (column slices of wider operands). With B_F16, B holds f16
// values two to a u32 (pack2x16float, a generation's weights), read at binding 6.
//
// Tiling: a workgroup of 16×16 invocations owns a 64×64 output tile; invocation (x, y) owns
// the 4×4 outputs at rows y + 16i and columns x + 16j of it (strided, so that neighbouring
// invocations read neighbouring tile elements and write neighbouring output columns). K is
// walked 16 at a time: the workgroup stages a 64×16 slice of op(A) and a 16×64 slice of op(B)
// in workgroup memory (8 KiB), then each invocation does 4×4×16 FMAs from registers.
// Out-of-range elements are staged as zeros. Tile rows are 65 floats apart, not 64: staging
// along k then writes 16 different memory banks instead of one.
//
// Launch: workgroup (16, 16); grid = (ceil(N/64), ceil(M/64)).
//
// matmul_tiled_large is the same product with a 128×128 output tile per workgroup of 16×16:
// invocation (x, y) owns 8×8 outputs, rows 4y .. 4y + 3 and 64 + 4y .. 64 + 4y + 3 of the tile
// and columns 4x .. 4x + 3 and 64 + 4x .. 64 + 4x + 3, read from the staged tiles as vec4s (four
// workgroup-memory loads per 64 FMAs where the 64×64 tile makes eight per 16). K is walked 8 at
// a time: a 128×8 slice of op(A) and an 8×128 slice of op(B), 8 KiB. The classic shape for
// large products on GPUs; with few output tiles it leaves more of a GPU idle, which the
// measurement weighs. Launch: workgroup (16, 16); grid = (ceil(N/128), ceil(M/128)).
//
// Two helpers of the matmul family share this file's bindings: `bias_backward` (the bias
// gradient, a column sum) and `transpose` (B for the CPU adapter's NT-as-NN path); each has
// its launch shape beside it below.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    out_stride: u32, // elements between output rows (N unless writing a column slice)
    out_col: u32,    // first output column written (0 unless writing a column slice)
    a_stride: u32,   // elements between rows of A as stored (K, or M for the transposed A)
    a_col: u32,      // first column of A as stored that the product reads (0 unless a slice)
    group_columns: u32, // (the register-tiled kernel's workgroup layout; unused here)
}

// The epilogue is fixed per pipeline by override constants (kernels::matmul::epilogue), not by
// a field of params: on lavapipe an untaken branch's loads and stores still loop over the
// lanes, which cost a K = 128 product a quarter of its time.
override ACCUMULATE: bool = false; // add to what out holds (gradients)
override HAS_BIAS: bool = false;   // add bias[column]
override HAS_GELU: bool = false;   // also store gelu of each output at `post`
override GELU_BACKWARD: bool = false; // store gelu'(post)·(the product) instead of the product

override TRANS_A: bool = false;
override TRANS_B: bool = false;
override B_F16: bool = false;

const TILE: u32 = 64u;
const TILE_K: u32 = 16u;
const THREADS: u32 = TILE / 4u; // THREADS × THREADS invocations, 4 × 4 outputs each
const STRIDE: u32 = TILE + 1u;  // floats between the k-rows of a staged tile
const WG: u32 = 64u; // transpose: invocations per workgroup (kernels::matmul::WG)

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> post: array<f32>; // GELU's output, or pre-activation
// B as f16 pairs, read when B_F16 is set (the host binds a stand-in at the other format's binding).
@group(0) @binding(6) var<storage, read> b_f16: array<u32>;

var<workgroup> a_tile: array<f32, 1040>; // [TILE_K][STRIDE]: a_tile[k*65 + m] = op(A)[m0+m, k0+k]
var<workgroup> b_tile: array<f32, 1040>; // [TILE_K][STRIDE]: b_tile[k*65 + n] = op(B)[k0+k, n0+n]

const LARGE_TILE: u32 = 128u; // matmul_tiled_large's output tile (kernels::matmul::LARGE_TILE)
const LARGE_K: u32 = 8u;      // … and its step along K
// [LARGE_K][LARGE_TILE / 4] vec4s: a_large[k*32 + m/4][m%4] = op(A)[m0+m, k0+k], likewise B by n.
var<workgroup> a_large: array<vec4<f32>, 256>;
var<workgroup> b_large: array<vec4<f32>, 256>;

fn load_a(m: u32, k: u32) -> f32 {
    if (m >= params.m || k >= params.k) { return 0.0; }
    if (TRANS_A) { return a[k * params.a_stride + params.a_col + m]; }
    return a[m * params.a_stride + params.a_col + k];
}

fn load_b(k: u32, n: u32) -> f32 {
    if (k >= params.k || n >= params.n) { return 0.0; }
    var i = k * params.n + n;
    if (TRANS_B) { i = n * params.k + k; }
    if (B_F16) { return unpack2x16float(b_f16[i / 2u])[i % 2u]; }
    return b[i];
}

@compute @workgroup_size(THREADS, THREADS)
fn matmul_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m0 = wid.y * TILE;
    let n0 = wid.x * TILE;
    let flat = lid.y * THREADS + lid.x; // 0 .. THREADS² − 1

    var acc: array<array<f32, 4>, 4>;
    for (var k0 = 0u; k0 < params.k; k0 += TILE_K) {
        // Stage the tiles: 1024 elements each, 4 per invocation. Consecutive invocations take
        // consecutive elements along the contiguous axis of the source, so loads coalesce.
        for (var i = 0u; i < 4u; i++) {
            let e = flat + i * THREADS * THREADS;
            if (TRANS_A) { // contiguous along m
                let m = e % TILE; let k = e / TILE;
                a_tile[k * STRIDE + m] = load_a(m0 + m, k0 + k);
            } else {       // contiguous along k
                let k = e % TILE_K; let m = e / TILE_K;
                a_tile[k * STRIDE + m] = load_a(m0 + m, k0 + k);
            }
            if (TRANS_B) { // contiguous along k
                let k = e % TILE_K; let n = e / TILE_K;
                b_tile[k * STRIDE + n] = load_b(k0 + k, n0 + n);
            } else {       // contiguous along n
                let n = e % TILE; let k = e / TILE;
                b_tile[k * STRIDE + n] = load_b(k0 + k, n0 + n);
            }
        }
        workgroupBarrier();
        for (var k = 0u; k < TILE_K; k++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = a_tile[k * STRIDE + lid.y + i * THREADS];
                bv[i] = b_tile[k * STRIDE + lid.x + i * THREADS];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] += av[i] * bv[j];
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let row = m0 + lid.y + i * THREADS;
        if (row >= params.m) { break; }
        for (var j = 0u; j < 4u; j++) {
            let col = n0 + lid.x + j * THREADS;
            if (col >= params.n) { break; }
            store(row, col, acc[i][j]);
        }
    }
}

// Stores output (row, col), inside [M, N]: the product `v` with the epilogue (bias, accumulate,
// GELU forward or backward).
fn store(row: u32, col: u32, product: f32) {
    var v = product;
    if (HAS_BIAS) { v += bias[col]; }
    let at = row * params.out_stride + params.out_col + col;
    if (ACCUMULATE) { v += out[at]; }
    if (GELU_BACKWARD) { v = gelu_grad(post[at], v); }
    out[at] = v;
    if (HAS_GELU) { post[at] = gelu(v); }
}

// Stores the four outputs of row `row` from column `col` (those inside [M, N]).
fn store4(row: u32, col: u32, v: vec4<f32>) {
    if (row >= params.m) { return; }
    for (var j = 0u; j < 4u; j++) {
        if (col + j < params.n) { store(row, col + j, v[j]); }
    }
}

@compute @workgroup_size(THREADS, THREADS)
fn matmul_tiled_large(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m0 = wid.y * LARGE_TILE;
    let n0 = wid.x * LARGE_TILE;
    let flat = lid.y * THREADS + lid.x;
    // accR_C: row R of the invocation's 8 (4y + R, or 64 + 4y + R − 4 for R ≥ 4), columns
    // 4x .. 4x + 3 (C = 0) or 64 + 4x .. 64 + 4x + 3 (C = 1).
    let zero = vec4<f32>(0.0);
    var acc0_0 = zero; var acc0_1 = zero; var acc1_0 = zero; var acc1_1 = zero;
    var acc2_0 = zero; var acc2_1 = zero; var acc3_0 = zero; var acc3_1 = zero;
    var acc4_0 = zero; var acc4_1 = zero; var acc5_0 = zero; var acc5_1 = zero;
    var acc6_0 = zero; var acc6_1 = zero; var acc7_0 = zero; var acc7_1 = zero;
    for (var k0 = 0u; k0 < params.k; k0 += LARGE_K) {
        // Stage 1024 elements of each slice, 4 per invocation, consecutive invocations along
        // the contiguous axis of the source (as matmul_tiled).
        for (var i = 0u; i < 4u; i++) {
            let e = flat + i * THREADS * THREADS;
            var m = e / LARGE_K;
            var k = e % LARGE_K;
            if (TRANS_A) { m = e % LARGE_TILE; k = e / LARGE_TILE; }
            a_large[k * 32u + m / 4u][m % 4u] = load_a(m0 + m, k0 + k);
            var n = e % LARGE_TILE;
            var kb = e / LARGE_TILE;
            if (TRANS_B) { n = e / LARGE_K; kb = e % LARGE_K; }
            b_large[kb * 32u + n / 4u][n % 4u] = load_b(k0 + kb, n0 + n);
        }
        workgroupBarrier();
        for (var k = 0u; k < LARGE_K; k++) {
            let a0 = a_large[k * 32u + lid.y];
            let a1 = a_large[k * 32u + 16u + lid.y];
            let b0 = b_large[k * 32u + lid.x];
            let b1 = b_large[k * 32u + 16u + lid.x];
            acc0_0 += a0.x * b0; acc0_1 += a0.x * b1; acc1_0 += a0.y * b0; acc1_1 += a0.y * b1;
            acc2_0 += a0.z * b0; acc2_1 += a0.z * b1; acc3_0 += a0.w * b0; acc3_1 += a0.w * b1;
            acc4_0 += a1.x * b0; acc4_1 += a1.x * b1; acc5_0 += a1.y * b0; acc5_1 += a1.y * b1;
            acc6_0 += a1.z * b0; acc6_1 += a1.z * b1; acc7_0 += a1.w * b0; acc7_1 += a1.w * b1;
        }
        workgroupBarrier();
    }
    let r0 = m0 + 4u * lid.y;
    let r1 = m0 + 64u + 4u * lid.y;
    let c0 = n0 + 4u * lid.x;
    let c1 = n0 + 64u + 4u * lid.x;
    store4(r0, c0, acc0_0); store4(r0, c1, acc0_1);
    store4(r0 + 1u, c0, acc1_0); store4(r0 + 1u, c1, acc1_1);
    store4(r0 + 2u, c0, acc2_0); store4(r0 + 2u, c1, acc2_1);
    store4(r0 + 3u, c0, acc3_0); store4(r0 + 3u, c1, acc3_1);
    store4(r1, c0, acc4_0); store4(r1, c1, acc4_1);
    store4(r1 + 1u, c0, acc5_0); store4(r1 + 1u, c1, acc5_1);
    store4(r1 + 2u, c0, acc6_0); store4(r1 + 2u, c1, acc6_1);
    store4(r1 + 3u, c0, acc7_0); store4(r1 + 3u, c1, acc7_1);
}

// Bias gradient: out[n] (+)= Σ_m a[m, n], with a = dout [M, N] and out = dbias [N]. A
// workgroup of COLS × LANES invocations owns COLS columns; lane l of a column sums rows l,
// l + LANES, …, so neighbouring invocations read neighbouring columns of a row, and the lanes'
// partial sums are added in workgroup memory.
// Launch: workgroup 256; grid = ceil(N/16).
const COLS: u32 = 16u;  // (kernels::matmul::BIAS_COLS)
const LANES: u32 = 16u;
var<workgroup> lane_sums: array<f32, COLS * LANES>; // [LANES][COLS]

@compute @workgroup_size(COLS * LANES)
fn bias_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col = lid % COLS;
    let lane = lid / COLS;
    let n = wid.x * COLS + col;
    var sum = 0.0;
    if (n < params.n) {
        for (var row = lane; row < params.m; row += LANES) {
            sum += a[row * params.n + n];
        }
    }
    lane_sums[lid] = sum;
    workgroupBarrier();
    if (lane == 0u && n < params.n) {
        var total = 0.0;
        for (var l = 0u; l < LANES; l++) { total += lane_sums[l * COLS + col]; }
        if (ACCUMULATE) { total += out[n]; }
        out[n] = total;
    }
}

// Transpose: out[c, r] = a[r, c] for a [M, N] (params.m rows, params.n columns). The CPU
// adapter's NT product runs as transpose + NN, whose vec4 loads are the fast ones there.
// One invocation per element, consecutive invocations along a row of `a`.
// Launch: workgroup 64; grid = ceil(M·N/64) laid out 2D (x ≤ 65535).
@compute @workgroup_size(WG)
fn transpose(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.m * params.n) { return; }
    let r = i / params.n;
    let c = i % params.n;
    out[c * params.m + r] = a[i];
}
