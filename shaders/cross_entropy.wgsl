// Log-softmax and cross-entropy over rows of logits (vocabularies up to 50257 and beyond), at
// a temperature τ: every formula below sees z = logits/τ (params.inv_temperature = 1/τ).
//
//   lse_n     = log Σ_v exp(z[n, v])                       one pass, online max/sum
//   loss_n    = lse_n − z[n, target_n]                     (0 where target_n is IGNORE)
//   logp[n,v] = z[n, v] − lse_n                            (log_softmax_forward)
//   backward, in place of the logits (as llm.c's fused classifier):
//   logits[n, v] ← dloss_n · (exp(z[n, v] − lse_n) − [v = target_n]) / τ
//
// The online recurrence keeps a running max m and a sum l of exp(z − m); when a larger value
// arrives the sum is rescaled by exp(m_old − m_new), so each logit is read once and nothing
// overflows. Each of the 64 invocations of a row's workgroup folds a strided slice of the row,
// then the 64 partial (m, l) pairs are merged by a tree in workgroup memory.
//
// The _serial entry points compute the same with one invocation walking each row alone (the
// other variant, chosen per adapter by measurement: kernels::cross_entropy::variant): no
// workgroup memory and no barriers, which cost more than they save on CPU adapters. The third,
// a subgroup per row, is in cross_entropy_subgroup.wgsl.
//
// With VEC4 set (V a multiple of 4, as the model's padded vocabulary always is), the row walks
// read and write vec4s, a quarter of the loads and stores, and fold four logits per step of the
// online recurrence (softmax_state_add4: 5 exps where four single steps take 8). The walks'
// (start, step) then count vec4s.
//
// Layout: logits [N, V] row-major; targets [N] u32 (0xFFFFFFFF = ignore); dloss, lse, loss [N].
// The VEC4 walks read logits, logp and the gradient as vec4 arrays at bindings 9–11; the host
// binds each tensor at the set the specialisation walks and 4-float stand-ins, unread, at the
// other (one buffer at both, writable, would alias: WebGPU forbids it).
// Launch: one workgroup of 64 per row; grid = N workgroups laid out 2D (x ≤ 65535). The _serial
// forms: one invocation per row, workgroup 64, grid = ceil(N/64) laid out 2D.

struct Params {
    rows: u32,
    v: u32,
    inv_temperature: f32, // 1/τ
    rows_per_group: u32,  // the subgroup entries (cross_entropy_subgroup.wgsl): rows per workgroup
}

const WG: u32 = 64u;
const IGNORE: u32 = 0xFFFFFFFFu;

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> lse: array<f32>;
@group(0) @binding(4) var<storage, read_write> loss: array<f32>;
@group(0) @binding(5) var<storage, read_write> logp: array<f32>;
// Backward: the logits are overwritten with their gradient.
@group(0) @binding(6) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(7) var<storage, read> dloss: array<f32>;
@group(0) @binding(8) var<storage, read> lse_saved: array<f32>;
override VEC4: bool = false;
@group(0) @binding(9) var<storage, read> logits4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> logp4: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> dlogits4: array<vec4<f32>>;

// The row walks take (start, step): a workgroup's invocation walks start = lid, step = WG (and
// the workgroup then merges), an invocation alone (the _serial entry points) start = 0, step = 1.

// The online-softmax state (see prelude.wgsl) of (a strided slice of) row `row`.
fn fold_row(row: u32, start: u32, step: u32) -> vec3<f32> {
    var st = vec3<f32>(NEG_BIG, 0.0, 0.0);
    if (VEC4) {
        let v4 = params.v / 4u;
        for (var j = start; j < v4; j += step) {
            st = softmax_state_add4(st, logits4[row * v4 + j] * params.inv_temperature);
        }
    } else {
        for (var i = start; i < params.v; i += step) {
            st = softmax_state_add(st, logits[row * params.v + i] * params.inv_temperature);
        }
    }
    return st;
}

// log Σ exp over row `row`; every invocation of the workgroup gets the result.
fn row_logsumexp(row: u32, lid: u32) -> f32 {
    let st = workgroup_softmax_state(lid, WG, fold_row(row, lid, WG));
    return st.x + log(st.y);
}

// loss and lse of row `row` from its lse.
fn write_loss(row: u32, row_lse: f32) {
    lse[row] = row_lse;
    let tgt = targets[row];
    let at = row * params.v + min(tgt, params.v - 1u);
    var logit: f32;
    if (VEC4) { logit = logits4[at / 4u][at % 4u]; } else { logit = logits[at]; }
    loss[row] = select(row_lse - logit * params.inv_temperature, 0.0, tgt == IGNORE);
}

fn write_log_softmax(row: u32, row_lse: f32, start: u32, step: u32) {
    if (VEC4) {
        let v4 = params.v / 4u;
        for (var j = start; j < v4; j += step) {
            logp4[row * v4 + j] = logits4[row * v4 + j] * params.inv_temperature - row_lse;
        }
    } else {
        for (var i = start; i < params.v; i += step) {
            logp[row * params.v + i] = logits[row * params.v + i] * params.inv_temperature - row_lse;
        }
    }
}

// The gradient in place of (a strided slice of) the row: each element is read and then
// overwritten by the same invocation, so no barrier is needed.
fn write_gradient(row: u32, start: u32, step: u32) {
    let tgt = targets[row];
    let weight = select(dloss[row] * params.inv_temperature, 0.0, tgt == IGNORE);
    let row_lse = lse_saved[row];
    if (VEC4) {
        let v4 = params.v / 4u;
        for (var j = start; j < v4; j += step) {
            let p = exp(dlogits4[row * v4 + j] * params.inv_temperature - row_lse);
            let onehot = select(vec4<f32>(0.0), vec4<f32>(1.0), 4u * j + vec4<u32>(0u, 1u, 2u, 3u) == vec4<u32>(tgt));
            dlogits4[row * v4 + j] = weight * (p - onehot);
        }
    } else {
        for (var i = start; i < params.v; i += step) {
            let p = exp(dlogits[row * params.v + i] * params.inv_temperature - row_lse);
            dlogits[row * params.v + i] = weight * (p - select(0.0, 1.0, i == tgt));
        }
    }
}

@compute @workgroup_size(WG)
fn cross_entropy_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= params.rows) { return; } // uniform across the workgroup: barriers stay uniform
    let row_lse = row_logsumexp(row, lid);
    if (lid == 0u) { write_loss(row, row_lse); }
}

@compute @workgroup_size(WG)
fn log_softmax_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= params.rows) { return; }
    write_log_softmax(row, row_logsumexp(row, lid), lid, WG);
}

@compute @workgroup_size(WG)
fn cross_entropy_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= params.rows) { return; }
    write_gradient(row, lid, WG);
}

// The row index of a _serial invocation.
fn serial_row(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// log Σ exp over row `row`, walked by one invocation.
fn row_logsumexp_serial(row: u32) -> f32 {
    let st = fold_row(row, 0u, 1u);
    return st.x + log(st.y);
}

@compute @workgroup_size(WG)
fn cross_entropy_forward_serial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                @builtin(local_invocation_index) lid: u32) {
    let row = serial_row(wid, nwg, lid);
    if (row >= params.rows) { return; }
    write_loss(row, row_logsumexp_serial(row));
}

@compute @workgroup_size(WG)
fn log_softmax_forward_serial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(local_invocation_index) lid: u32) {
    let row = serial_row(wid, nwg, lid);
    if (row >= params.rows) { return; }
    write_log_softmax(row, row_logsumexp_serial(row), 0u, 1u);
}

@compute @workgroup_size(WG)
fn cross_entropy_backward_serial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                 @builtin(local_invocation_index) lid: u32) {
    let row = serial_row(wid, nwg, lid);
    if (row >= params.rows) { return; }
    write_gradient(row, 0u, 1u);
}
