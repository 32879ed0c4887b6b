// Matrix multiply split along K, for products of few rows on GPUs (a decode step's: one row
// per sequence). There the tiled kernels have a workgroup per 64×64 output tile, so a product of
// 8 rows over 768 columns keeps 12 workgroups busy, each walking all of K, on a GPU with a
// hundred and more cores: latency, not bandwidth, sets its time. Here each invocation owns one
// output column of ROWS rows over one slice of K, and a second pass adds the slices:
//
//   matmul_split_k:  partial[s, m, n] = Σ_{k in slice s} op(A)[m, k] · op(B)[k, n]
//   split_k_reduce:  out[m, n] (+)= Σ_s partial[s, m, n] (+ bias[n]), with the epilogue
//
// op(A), op(B) as in matmul_tiled.wgsl: A[M,K] or with TRANS_A A[K,M]ᵀ (rows a_stride apart,
// from column a_col), B[K,N] or with TRANS_B B[N,K]ᵀ, f16 pairs at binding 6 with B_F16. The
// epilogue (ACCUMULATE, HAS_BIAS, HAS_GELU, GELU_BACKWARD) is matmul_tiled's, applied to the
// finished sum. Output (m, n) is stored at out[m·out_stride + out_col + n]. Slice s covers
// K = s·split_len .. min((s + 1)·split_len, K); partial is [splits, M, N].
//
// The invocations of a workgroup share their rows and their slice, so at each step of K they
// all read the same elements of A (one broadcast read) and neighbouring elements of B (one
// coalesced row of B in the NN layout). With VEC4 (K, A's stride and column multiples of 4, A
// not transposed; the host then makes every slice a multiple of 4 long) the walk takes four
// elements of K a step: A's rows as vec4s, and B's four values as one vec4 where they are
// contiguous (TRANS_B, the LM head's: each invocation walks its own row of B) — a quarter of
// the loads for the same FMAs.
//
// Launch: matmul_split_k: workgroup WG along N, one invocation per (column, slice, block of
// ROWS rows): grid (ceil(N/WG), splits, ceil(M/ROWS)). split_k_reduce: one invocation per
// output element, workgroup WG, grid laid out 2D (x ≤ 65535).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    out_stride: u32, // elements between output rows (N unless writing a column slice)
    out_col: u32,    // first output column written
    a_stride: u32,   // elements between rows of A as stored
    a_col: u32,      // first column of A as stored that the product reads
    splits: u32,     // slices of K
    split_len: u32,  // elements of K per slice
}

override ACCUMULATE: bool = false;
override HAS_BIAS: bool = false;
override HAS_GELU: bool = false;
override GELU_BACKWARD: bool = false;
override TRANS_A: bool = false;
override TRANS_B: bool = false;
override B_F16: bool = false;
override VEC4: bool = false;

const WG: u32 = 64u;  // invocations per workgroup (kernels::matmul::SPLIT_K_WG)
const ROWS: u32 = 8u; // output rows per invocation (kernels::matmul::SPLIT_K_ROWS)

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> post: array<f32>; // GELU's output, or pre-activation
@group(0) @binding(6) var<storage, read> b_f16: array<u32>;
@group(0) @binding(7) var<storage, read_write> partial_out: array<f32>; // matmul_split_k writes
@group(0) @binding(8) var<storage, read> partial_in: array<f32>;        // split_k_reduce reads
@group(0) @binding(9) var<storage, read> a4: array<vec4<f32>>;  // A again, as vec4s (VEC4)
@group(0) @binding(10) var<storage, read> b4: array<vec4<f32>>; // B again, as vec4s (VEC4, TRANS_B)

fn load_a(m: u32, k: u32) -> f32 {
    if (TRANS_A) { return a[k * params.a_stride + params.a_col + m]; }
    return a[m * params.a_stride + params.a_col + k];
}

fn load_b(k: u32, n: u32) -> f32 {
    var i = k * params.n + n;
    if (TRANS_B) { i = n * params.k + k; }
    if (B_F16) { return unpack2x16float(b_f16[i / 2u])[i % 2u]; }
    return b[i];
}

// A[m, k .. k + 4] (VEC4: k a multiple of 4).
fn load_a4(m: u32, k: u32) -> vec4<f32> {
    return a4[(m * params.a_stride + params.a_col + k) / 4u];
}

// op(B)[k .. k + 4, n] (VEC4): one vec4 (or two f16 pairs) of B's row n with TRANS_B, else
// four rows' values.
fn load_b4(k: u32, n: u32) -> vec4<f32> {
    if (TRANS_B) {
        let i = n * params.k + k;
        if (B_F16) { return vec4(unpack2x16float(b_f16[i / 2u]), unpack2x16float(b_f16[i / 2u + 1u])); }
        return b4[i / 4u];
    }
    return vec4(load_b(k, n), load_b(k + 1u, n), load_b(k + 2u, n), load_b(k + 3u, n));
}

@compute @workgroup_size(WG)
fn matmul_split_k(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = gid.x;
    let slice = gid.y;
    let m0 = gid.z * ROWS;
    if (n >= params.n || m0 >= params.m) { return; }
    let k0 = slice * params.split_len;
    let k1 = min(k0 + params.split_len, params.k);
    // Rows past M repeat the last row (read, never stored), so the loop has no branch.
    var rows: array<u32, ROWS>;
    for (var r = 0u; r < ROWS; r++) { rows[r] = min(m0 + r, params.m - 1u); }
    var acc: array<f32, ROWS>;
    var k = k0;
    if (VEC4) {
        for (; k + 4u <= k1; k += 4u) {
            let w = load_b4(k, n);
            for (var r = 0u; r < ROWS; r++) { acc[r] += dot(load_a4(rows[r], k), w); }
        }
    }
    for (; k < k1; k++) {
        let w = load_b(k, n);
        for (var r = 0u; r < ROWS; r++) { acc[r] += load_a(rows[r], k) * w; }
    }
    for (var r = 0u; r < ROWS; r++) {
        if (m0 + r < params.m) { partial_out[(slice * params.m + m0 + r) * params.n + n] = acc[r]; }
    }
}

@compute @workgroup_size(WG)
fn split_k_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.m * params.n) { return; }
    let row = i / params.n;
    let col = i % params.n;
    var v = 0.0;
    for (var s = 0u; s < params.splits; s++) { v += partial_in[s * params.m * params.n + i]; }
    if (HAS_BIAS) { v += bias[col]; }
    let at = row * params.out_stride + params.out_col + col;
    if (ACCUMULATE) { v += out[at]; }
    if (GELU_BACKWARD) { v = gelu_grad(post[at], v); }
    out[at] = v;
    if (HAS_GELU) { post[at] = gelu(v); }
}
