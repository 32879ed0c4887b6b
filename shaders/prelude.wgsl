
// ---------------------------------------------------------------------------------------------
// prelude.wgsl — appended to every shader when it is loaded (`Shader::wgsl`), so that the
// pieces many kernels need are written once. (WGSL declarations may come in any order; at the
// end, the shader's own line numbers stay as they are in its file.)
//
//   NEG_BIG                      a finite "minus infinity" for masked scores and running maxima
//   workgroup_sum/max/min(lid, n, x)
//                                a tree reduction of x over the first n invocations of the
//                                workgroup (n a power of two ≤ 256, every invocation with
//                                lid < n taking part); the result is the same in every
//                                invocation and uniform, so code may branch on it. Call it from
//                                uniform control flow (it has barriers).
//   softmax_merge(m_a, m_b)      merging two online-softmax states with maxima m_a, m_b: the
//                                new max and the factors that rescale each side's sums to it,
//                                (max, exp(m_a − max), exp(m_b − max))
//   softmax_state_add(st, z), workgroup_softmax_state(lid, n, st)
//                                the online softmax over a row that a workgroup reads in strided
//                                slices: each invocation folds its values into a state
//                                st = (m, l, s) = (max z, Σ e^{z−m}, Σ e^{z−m}·z), starting from
//                                (NEG_BIG, 0, 0); the workgroup then merges the states (uniform
//                                result), so lse = m + log l and Σ p·z = s/l
//   softmax_state_add4(st, z)    the same state with four values folded at once: one rescale for
//                                the four (5 exps where four single steps take 8)
//   workgroup_rows(wid, nwg, rows_per_group, rows)
//                                the rows (first, end) that a workgroup owning rows_per_group
//                                consecutive rows of `rows` has (the subgroup-per-row kernels,
//                                whose subgroups share them out)
//   gelu(x), gelu4(v)            GPT-2's tanh GELU ("gelu_new") of a value or a vec4 (gelu.wgsl
//                                and the matmul epilogues that fuse it)

const NEG_BIG: f32 = -3.0e38;

const REDUCE_SUM: u32 = 0u;
const REDUCE_MAX: u32 = 1u;
const REDUCE_MIN: u32 = 2u;

var<workgroup> prelude_scratch: array<f32, 256>;
var<workgroup> prelude_result: f32;

fn reduce_over_workgroup(lid: u32, n: u32, x: f32, op: u32) -> f32 {
    prelude_scratch[lid] = x;
    workgroupBarrier();
    for (var s = n / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let a = prelude_scratch[lid];
            let b = prelude_scratch[lid + s];
            prelude_scratch[lid] = select(select(min(a, b), max(a, b), op == REDUCE_MAX), a + b, op == REDUCE_SUM);
        }
        workgroupBarrier();
    }
    if (lid == 0u) { prelude_result = prelude_scratch[0]; }
    return workgroupUniformLoad(&prelude_result);
}

fn workgroup_sum(lid: u32, n: u32, x: f32) -> f32 { return reduce_over_workgroup(lid, n, x, REDUCE_SUM); }
fn workgroup_max(lid: u32, n: u32, x: f32) -> f32 { return reduce_over_workgroup(lid, n, x, REDUCE_MAX); }
fn workgroup_min(lid: u32, n: u32, x: f32) -> f32 { return reduce_over_workgroup(lid, n, x, REDUCE_MIN); }

fn softmax_merge(m_a: f32, m_b: f32) -> vec3<f32> {
    let m = max(m_a, m_b);
    return vec3<f32>(m, exp(m_a - m), exp(m_b - m));
}

fn softmax_state_add(st: vec3<f32>, z: f32) -> vec3<f32> {
    let m = max(st.x, z);
    let scale = exp(st.x - m);
    let e = exp(z - m);
    return vec3<f32>(m, st.y * scale + e, st.z * scale + e * z);
}

fn softmax_state_add4(st: vec3<f32>, z: vec4<f32>) -> vec3<f32> {
    let m = max(st.x, max(max(z.x, z.y), max(z.z, z.w)));
    let scale = exp(st.x - m);
    let e = exp(z - vec4<f32>(m));
    return vec3<f32>(m, st.y * scale + (e.x + e.y + e.z + e.w), st.z * scale + dot(e, z));
}

var<workgroup> prelude_states: array<vec3<f32>, 256>;
var<workgroup> prelude_state: vec3<f32>;

fn workgroup_softmax_state(lid: u32, n: u32, st: vec3<f32>) -> vec3<f32> {
    prelude_states[lid] = st;
    workgroupBarrier();
    for (var s = n / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let a = prelude_states[lid];
            let b = prelude_states[lid + s];
            let k = softmax_merge(a.x, b.x);
            prelude_states[lid] = vec3<f32>(k.x, a.y * k.y + b.y * k.z, a.z * k.y + b.z * k.z);
        }
        workgroupBarrier();
    }
    if (lid == 0u) { prelude_state = prelude_states[0]; }
    return workgroupUniformLoad(&prelude_state);
}

fn workgroup_rows(wid: vec3<u32>, nwg: vec3<u32>, rows_per_group: u32, rows: u32) -> vec2<u32> {
    let first = (wid.y * nwg.x + wid.x) * rows_per_group;
    return vec2<u32>(first, min(first + rows_per_group, rows));
}

const GELU_SQRT_2_OVER_PI: f32 = 0.7978845608028654;

// gelu(x) = 0.5·x·(1 + tanh(u)), u = sqrt(2/π)·(x + 0.044715·x³), written with a sigmoid, which
// stays accurate in f32 where the tanh form cancels (for x ≪ 0): 0.5·(1 + tanh(u)) = σ(2u).
// exp overflowing to +inf gives σ = 0 exactly, so no input produces NaN.
fn gelu_sigmoid(z: f32) -> f32 {
    return 1.0 / (1.0 + exp(-z));
}

fn gelu_inner(x: f32) -> f32 {
    return GELU_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
}

fn gelu(x: f32) -> f32 {
    return x * gelu_sigmoid(2.0 * gelu_inner(x));
}

fn gelu4(v: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(gelu(v.x), gelu(v.y), gelu(v.z), gelu(v.w));
}

// gelu'(x)·d, with the same sigmoids (the tanh form cancels in f32 for x ≪ 0 as well):
//   gelu'(x) = 0.5·(1 + tanh(u)) + 0.5·x·(1 − tanh²(u))·du/dx
//            = σ(2u) + 2·x·σ(2u)·σ(−2u)·du/dx,   du/dx = sqrt(2/π)·(1 + 3·0.044715·x²).
fn gelu_grad(x: f32, d: f32) -> f32 {
    let u = gelu_inner(x);
    let s_pos = gelu_sigmoid(2.0 * u);
    let s_neg = gelu_sigmoid(-2.0 * u);
    let du_dx = GELU_SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
    return (s_pos + 2.0 * x * s_pos * s_neg * du_dx) * d;
}

fn gelu_grad4(x: vec4<f32>, d: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(gelu_grad(x.x, d.x), gelu_grad(x.y, d.y), gelu_grad(x.z, d.z), gelu_grad(x.w, d.w));
}
