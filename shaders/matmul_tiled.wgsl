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
            var v = acc[i][j];
            if (HAS_BIAS) { v += bias[col]; }
            let at = row * params.out_stride + params.out_col + col;
            if (ACCUMULATE) { v += out[at]; }
            if (GELU_BACKWARD) { v = gelu_grad(post[at], v); }
            out[at] = v;
            if (HAS_GELU) { post[at] = gelu(v); }
        }
    }
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
