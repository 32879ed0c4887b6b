// Token + position embedding, forward and backward.
//
//   forward:  out[n, c] = wte[ids[n], c] + wpe[pos[n], c]
//   backward: dtable[r, c] += Σ_{n : index[n] = r} dout[n, c]        (for wte with ids, wpe with pos)
//
// WGSL has no float atomics, so the backward never lets two invocations add into the same row:
// the host groups the token positions by the table row they read ("buckets", in CSR form:
// bucket b is table row bucket_rows[b] and owns the token positions
// bucket_tokens[bucket_offsets[b] .. bucket_offsets[b+1]]), and one invocation per
// (bucket, channel) sums its tokens' gradients in a fixed order, so the result is deterministic.
//
// Layout: ids, pos [N] u32; wte [V, C]; wpe [T, C]; out, dout [N, C]; dtable [rows, C].
// A table larger than the adapter's storage-binding limit (GPT-2's wte is 154 MB) is bound in
// slices of rows: each dispatch sees rows row_offset .. row_offset + rows of the table, the
// forward skips tokens whose id lies outside its slice (another dispatch writes them), the
// backward takes only the buckets of its slice. Positions are clamped to wpe (the host validates
// ids and positions before upload; nothing ever reads outside a buffer).
// embedding_forward4 and embedding_backward4 are the same for C a multiple of 4, one invocation
// per vec4 of channels (a quarter of the loads; the tables and gradients bound as vec4 arrays
// at bindings 11–14).
// Launch: workgroup 256, one invocation per output element (forward: N·C; backward:
// buckets·C; the vec4 forms: a quarter of that), consecutive invocations along C; grid laid out
// 2D (x ≤ 65535).

struct Params {
    n: u32,          // forward: tokens; backward: buckets in this dispatch
    c: u32,
    rows: u32,       // rows of the bound wte / dtable slice
    row_offset: u32, // table row of the slice's first row
    positions: u32,  // rows of wpe (forward)
    first_bucket: u32, // backward: index of this dispatch's first bucket
}

@group(0) @binding(0) var<uniform> params: Params;
const WG: u32 = 256u; // invocations per workgroup (kernels::embedding::WG)
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> pos: array<u32>;
@group(0) @binding(3) var<storage, read> wte: array<f32>;
@group(0) @binding(4) var<storage, read> wpe: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
// Backward
@group(0) @binding(6) var<storage, read> dout: array<f32>;
@group(0) @binding(7) var<storage, read> bucket_rows: array<u32>;
@group(0) @binding(8) var<storage, read> bucket_offsets: array<u32>;
@group(0) @binding(9) var<storage, read> bucket_tokens: array<u32>;
@group(0) @binding(10) var<storage, read_write> dtable: array<f32>;
// The vec4 forms
@group(0) @binding(11) var<storage, read> wte4: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read> wpe4: array<vec4<f32>>;
@group(0) @binding(13) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(14) var<storage, read> dout4: array<vec4<f32>>;
@group(0) @binding(15) var<storage, read_write> dtable4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn embedding_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.n * params.c) { return; }
    let token = i / params.c;
    let ch = i % params.c;
    let id = ids[token];
    if (id < params.row_offset || id - params.row_offset >= params.rows) { return; }
    let p = min(pos[token], params.positions - 1u);
    out[i] = wte[(id - params.row_offset) * params.c + ch] + wpe[p * params.c + ch];
}

@compute @workgroup_size(WG)
fn embedding_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= params.n * params.c) { return; }
    let bucket = params.first_bucket + i / params.c;
    let ch = i % params.c;
    var sum = 0.0;
    for (var j = bucket_offsets[bucket]; j < bucket_offsets[bucket + 1u]; j++) {
        sum += dout[bucket_tokens[j] * params.c + ch];
    }
    let row = min(bucket_rows[bucket] - params.row_offset, params.rows - 1u);
    dtable[row * params.c + ch] += sum;
}

@compute @workgroup_size(WG)
fn embedding_forward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    let c4 = params.c / 4u;
    if (i >= params.n * c4) { return; }
    let token = i / c4;
    let ch = i % c4;
    let id = ids[token];
    if (id < params.row_offset || id - params.row_offset >= params.rows) { return; }
    let p = min(pos[token], params.positions - 1u);
    out4[i] = wte4[(id - params.row_offset) * c4 + ch] + wpe4[p * c4 + ch];
}

@compute @workgroup_size(WG)
fn embedding_backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    let c4 = params.c / 4u;
    if (i >= params.n * c4) { return; }
    let bucket = params.first_bucket + i / c4;
    let ch = i % c4;
    var sum = vec4<f32>(0.0);
    for (var j = bucket_offsets[bucket]; j < bucket_offsets[bucket + 1u]; j++) {
        sum += dout4[bucket_tokens[j] * c4 + ch];
    }
    let row = min(bucket_rows[bucket] - params.row_offset, params.rows - 1u);
    dtable4[row * c4 + ch] += sum;
}
