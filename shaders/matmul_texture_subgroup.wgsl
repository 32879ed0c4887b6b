// Matrix multiply with both operands packed into textures, the product of matmul_texture.wgsl
// (which is included after this file: the bindings, Params, the packs and store_vec4 come from
// there) with A's rows shared across a subgroup:
//
//   matmul_texture_subgroup: out[M,N] (+)= At[M,K] · Bt[K,N] (+ bias[N]), At and Bt packed as
//                            for matmul_texture (or A of a TN product as stored: A_STORED
//                            below), the epilogue and SUM_B_COLUMNS as there.
//
// Each subgroup of 8 invocations computes a 32×64 block of the output: lane l its columns
// 8l .. 8l + 7 in all 32 rows, in 64 vec4 accumulators. At each step of K the 8 lanes need the
// same 32 texels of At; each fetches 4 of them (block rows 4l .. 4l + 3) and subgroupBroadcast
// hands them round, so an invocation fetches 4 texels of At and 8 of Bt per 4 steps of K where
// matmul_texture fetches 16 and 16. On lavapipe a texel fetch costs more than the 16 FMAs it
// feeds and a broadcast is a register shuffle (docs/design.md §2). Lanes whose columns lie past
// N, or rows past M, read clamped texels and store nothing; they still fetch their share of At
// for the others. Subgroup operations need the adapter's SUBGROUP feature, so this entry lives
// in a module of its own: the other texture kernels compile without it.
//
// Launch: workgroup 64 of subgroups of exactly 8 invocations (the host offers the kernel only
// where the adapter's subgroups all have that size: lavapipe's 8-wide SIMD), SUBGROUP_BLOCKS = 8
// of them stacked along M: subgroup s of workgroup (x, y) takes output rows 256y + 32s .. + 31,
// columns 64x .. 64x + 63. Grid = (ceil(N/64), ceil(M/256)).
const SUBGROUP_BLOCKS: u32 = 8u; // 32-row blocks per workgroup (kernels::matmul::SUBGROUP_BLOCKS)

// A_STORED: the A texture holds A of a TN product as stored, [K, M] (texel (x, k) = A[k,
// 4x .. 4x + 3]; sized as a Bt of N = M), filled by a copy or pack_rows where matmul_texture's
// At takes a transposing pack. A lane's share of the block (rows 4·lane .. 4·lane + 3 at K = k ..
// k + 3) is then the 4×4 square of texels (m0/4 + lane, k .. k + 3), transposed in registers,
// and the lanes read neighbouring texels of a row where they read 32 rows of At.
override A_STORED: bool = false;

// B_STORED: likewise the B texture holds B of an NT product as stored, [N, K] (texel (x, n) =
// B[n, 4x .. 4x + 3]; sized as an At of M = N), where matmul_texture's Bt takes a transposing
// pack. A lane's 4×4 block of Bt (rows k .. k + 3, columns 4c .. 4c + 3) is then the texels
// (k/4, 4c .. 4c + 3), transposed in registers.
override B_STORED: bool = false;

// The lane's 4×4 block of Bt at rows k .. k + 3 and vec4 column c (clamped into the texture:
// `last` is its last texel column, or with B_STORED its last row).
fn b_block(k4: u32, c: u32, last: u32) -> mat4x4<f32> {
    if (B_STORED) {
        return transpose(mat4x4<f32>(
            textureLoad(b_tex, vec2<u32>(k4, min(4u * c, last))), textureLoad(b_tex, vec2<u32>(k4, min(4u * c + 1u, last))),
            textureLoad(b_tex, vec2<u32>(k4, min(4u * c + 2u, last))), textureLoad(b_tex, vec2<u32>(k4, min(4u * c + 3u, last)))));
    }
    let x = min(c, last);
    let k = 4u * k4;
    return mat4x4<f32>(textureLoad(b_tex, vec2<u32>(x, k)), textureLoad(b_tex, vec2<u32>(x, k + 1u)),
                       textureLoad(b_tex, vec2<u32>(x, k + 2u)), textureLoad(b_tex, vec2<u32>(x, k + 3u)));
}

@compute @workgroup_size(WG)
fn matmul_texture_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let m0 = (wid.y * SUBGROUP_BLOCKS + sg) * 32u;
    if (m0 >= params.m) { return; } // the whole subgroup: its lanes share m0
    let c0 = wid.x * 16u + 2u * lane; // first of the lane's two vec4 columns
    // Texel coordinates clamped into the textures (whose sizes round M and N up to 16 only).
    let a_last = select(textureDimensions(a_tex).y, textureDimensions(a_tex).x, A_STORED) - 1u;
    let ax = min(m0 / 4u + lane, a_last); // A_STORED: the lane's texel column
    let b_last = select(textureDimensions(b_tex).x, textureDimensions(b_tex).y, B_STORED) - 1u;
    let ar = vec4<u32>(min(m0 + 4u * lane, a_last), min(m0 + 4u * lane + 1u, a_last),
                       min(m0 + 4u * lane + 2u, a_last), min(m0 + 4u * lane + 3u, a_last));

    // accR_C holds row m0 + R, columns 4(c0 + C) .. 4(c0 + C) + 3.
    let zero = vec4<f32>(0.0);
    var acc0_0 = zero; var acc0_1 = zero; var acc1_0 = zero; var acc1_1 = zero;
    var acc2_0 = zero; var acc2_1 = zero; var acc3_0 = zero; var acc3_1 = zero;
    var acc4_0 = zero; var acc4_1 = zero; var acc5_0 = zero; var acc5_1 = zero;
    var acc6_0 = zero; var acc6_1 = zero; var acc7_0 = zero; var acc7_1 = zero;
    var acc8_0 = zero; var acc8_1 = zero; var acc9_0 = zero; var acc9_1 = zero;
    var acc10_0 = zero; var acc10_1 = zero; var acc11_0 = zero; var acc11_1 = zero;
    var acc12_0 = zero; var acc12_1 = zero; var acc13_0 = zero; var acc13_1 = zero;
    var acc14_0 = zero; var acc14_1 = zero; var acc15_0 = zero; var acc15_1 = zero;
    var acc16_0 = zero; var acc16_1 = zero; var acc17_0 = zero; var acc17_1 = zero;
    var acc18_0 = zero; var acc18_1 = zero; var acc19_0 = zero; var acc19_1 = zero;
    var acc20_0 = zero; var acc20_1 = zero; var acc21_0 = zero; var acc21_1 = zero;
    var acc22_0 = zero; var acc22_1 = zero; var acc23_0 = zero; var acc23_1 = zero;
    var acc24_0 = zero; var acc24_1 = zero; var acc25_0 = zero; var acc25_1 = zero;
    var acc26_0 = zero; var acc26_1 = zero; var acc27_0 = zero; var acc27_1 = zero;
    var acc28_0 = zero; var acc28_1 = zero; var acc29_0 = zero; var acc29_1 = zero;
    var acc30_0 = zero; var acc30_1 = zero; var acc31_0 = zero; var acc31_1 = zero;
    var sum0 = zero; var sum1 = zero; // SUM_B_COLUMNS
    for (var k4 = 0u; k4 < params.k4; k4++) {
        let k = 4u * k4;
        let b0 = b_block(k4, c0, b_last);
        let b1 = b_block(k4, c0 + 1u, b_last);
        if (SUM_B_COLUMNS) { sum0 += b0[0] + b0[1] + b0[2] + b0[3]; sum1 += b1[0] + b1[1] + b1[2] + b1[3]; }
        // This lane's share of At: block rows 4·lane .. 4·lane + 3, at K = k .. k + 3.
        var a0: vec4<f32>; var a1: vec4<f32>; var a2: vec4<f32>; var a3: vec4<f32>;
        if (A_STORED) {
            let square = transpose(mat4x4<f32>(
                textureLoad(a_tex, vec2<u32>(ax, k)), textureLoad(a_tex, vec2<u32>(ax, k + 1u)),
                textureLoad(a_tex, vec2<u32>(ax, k + 2u)), textureLoad(a_tex, vec2<u32>(ax, k + 3u))));
            a0 = square[0]; a1 = square[1]; a2 = square[2]; a3 = square[3];
        } else {
            a0 = textureLoad(a_tex, vec2<u32>(k4, ar.x));
            a1 = textureLoad(a_tex, vec2<u32>(k4, ar.y));
            a2 = textureLoad(a_tex, vec2<u32>(k4, ar.z));
            a3 = textureLoad(a_tex, vec2<u32>(k4, ar.w));
        }
        // Block row R is lane R / 4's a(R % 4).
        var a: vec4<f32>;
        a = subgroupBroadcast(a0, 0u); acc0_0 += b0 * a; acc0_1 += b1 * a;
        a = subgroupBroadcast(a1, 0u); acc1_0 += b0 * a; acc1_1 += b1 * a;
        a = subgroupBroadcast(a2, 0u); acc2_0 += b0 * a; acc2_1 += b1 * a;
        a = subgroupBroadcast(a3, 0u); acc3_0 += b0 * a; acc3_1 += b1 * a;
        a = subgroupBroadcast(a0, 1u); acc4_0 += b0 * a; acc4_1 += b1 * a;
        a = subgroupBroadcast(a1, 1u); acc5_0 += b0 * a; acc5_1 += b1 * a;
        a = subgroupBroadcast(a2, 1u); acc6_0 += b0 * a; acc6_1 += b1 * a;
        a = subgroupBroadcast(a3, 1u); acc7_0 += b0 * a; acc7_1 += b1 * a;
        a = subgroupBroadcast(a0, 2u); acc8_0 += b0 * a; acc8_1 += b1 * a;
        a = subgroupBroadcast(a1, 2u); acc9_0 += b0 * a; acc9_1 += b1 * a;
        a = subgroupBroadcast(a2, 2u); acc10_0 += b0 * a; acc10_1 += b1 * a;
        a = subgroupBroadcast(a3, 2u); acc11_0 += b0 * a; acc11_1 += b1 * a;
        a = subgroupBroadcast(a0, 3u); acc12_0 += b0 * a; acc12_1 += b1 * a;
        a = subgroupBroadcast(a1, 3u); acc13_0 += b0 * a; acc13_1 += b1 * a;
        a = subgroupBroadcast(a2, 3u); acc14_0 += b0 * a; acc14_1 += b1 * a;
        a = subgroupBroadcast(a3, 3u); acc15_0 += b0 * a; acc15_1 += b1 * a;
        a = subgroupBroadcast(a0, 4u); acc16_0 += b0 * a; acc16_1 += b1 * a;
        a = subgroupBroadcast(a1, 4u); acc17_0 += b0 * a; acc17_1 += b1 * a;
        a = subgroupBroadcast(a2, 4u); acc18_0 += b0 * a; acc18_1 += b1 * a;
        a = subgroupBroadcast(a3, 4u); acc19_0 += b0 * a; acc19_1 += b1 * a;
        a = subgroupBroadcast(a0, 5u); acc20_0 += b0 * a; acc20_1 += b1 * a;
        a = subgroupBroadcast(a1, 5u); acc21_0 += b0 * a; acc21_1 += b1 * a;
        a = subgroupBroadcast(a2, 5u); acc22_0 += b0 * a; acc22_1 += b1 * a;
        a = subgroupBroadcast(a3, 5u); acc23_0 += b0 * a; acc23_1 += b1 * a;
        a = subgroupBroadcast(a0, 6u); acc24_0 += b0 * a; acc24_1 += b1 * a;
        a = subgroupBroadcast(a1, 6u); acc25_0 += b0 * a; acc25_1 += b1 * a;
        a = subgroupBroadcast(a2, 6u); acc26_0 += b0 * a; acc26_1 += b1 * a;
        a = subgroupBroadcast(a3, 6u); acc27_0 += b0 * a; acc27_1 += b1 * a;
        a = subgroupBroadcast(a0, 7u); acc28_0 += b0 * a; acc28_1 += b1 * a;
        a = subgroupBroadcast(a1, 7u); acc29_0 += b0 * a; acc29_1 += b1 * a;
        a = subgroupBroadcast(a2, 7u); acc30_0 += b0 * a; acc30_1 += b1 * a;
        a = subgroupBroadcast(a3, 7u); acc31_0 += b0 * a; acc31_1 += b1 * a;
    }
    let bias0 = bias_vec4(c0);
    let bias1 = bias_vec4(c0 + 1u);
    store_vec4(m0 + 0u, c0, acc0_0 + bias0); store_vec4(m0 + 0u, c0 + 1u, acc0_1 + bias1);
    store_vec4(m0 + 1u, c0, acc1_0 + bias0); store_vec4(m0 + 1u, c0 + 1u, acc1_1 + bias1);
    store_vec4(m0 + 2u, c0, acc2_0 + bias0); store_vec4(m0 + 2u, c0 + 1u, acc2_1 + bias1);
    store_vec4(m0 + 3u, c0, acc3_0 + bias0); store_vec4(m0 + 3u, c0 + 1u, acc3_1 + bias1);
    store_vec4(m0 + 4u, c0, acc4_0 + bias0); store_vec4(m0 + 4u, c0 + 1u, acc4_1 + bias1);
    store_vec4(m0 + 5u, c0, acc5_0 + bias0); store_vec4(m0 + 5u, c0 + 1u, acc5_1 + bias1);
    store_vec4(m0 + 6u, c0, acc6_0 + bias0); store_vec4(m0 + 6u, c0 + 1u, acc6_1 + bias1);
    store_vec4(m0 + 7u, c0, acc7_0 + bias0); store_vec4(m0 + 7u, c0 + 1u, acc7_1 + bias1);
    store_vec4(m0 + 8u, c0, acc8_0 + bias0); store_vec4(m0 + 8u, c0 + 1u, acc8_1 + bias1);
    store_vec4(m0 + 9u, c0, acc9_0 + bias0); store_vec4(m0 + 9u, c0 + 1u, acc9_1 + bias1);
    store_vec4(m0 + 10u, c0, acc10_0 + bias0); store_vec4(m0 + 10u, c0 + 1u, acc10_1 + bias1);
    store_vec4(m0 + 11u, c0, acc11_0 + bias0); store_vec4(m0 + 11u, c0 + 1u, acc11_1 + bias1);
    store_vec4(m0 + 12u, c0, acc12_0 + bias0); store_vec4(m0 + 12u, c0 + 1u, acc12_1 + bias1);
    store_vec4(m0 + 13u, c0, acc13_0 + bias0); store_vec4(m0 + 13u, c0 + 1u, acc13_1 + bias1);
    store_vec4(m0 + 14u, c0, acc14_0 + bias0); store_vec4(m0 + 14u, c0 + 1u, acc14_1 + bias1);
    store_vec4(m0 + 15u, c0, acc15_0 + bias0); store_vec4(m0 + 15u, c0 + 1u, acc15_1 + bias1);
    store_vec4(m0 + 16u, c0, acc16_0 + bias0); store_vec4(m0 + 16u, c0 + 1u, acc16_1 + bias1);
    store_vec4(m0 + 17u, c0, acc17_0 + bias0); store_vec4(m0 + 17u, c0 + 1u, acc17_1 + bias1);
    store_vec4(m0 + 18u, c0, acc18_0 + bias0); store_vec4(m0 + 18u, c0 + 1u, acc18_1 + bias1);
    store_vec4(m0 + 19u, c0, acc19_0 + bias0); store_vec4(m0 + 19u, c0 + 1u, acc19_1 + bias1);
    store_vec4(m0 + 20u, c0, acc20_0 + bias0); store_vec4(m0 + 20u, c0 + 1u, acc20_1 + bias1);
    store_vec4(m0 + 21u, c0, acc21_0 + bias0); store_vec4(m0 + 21u, c0 + 1u, acc21_1 + bias1);
    store_vec4(m0 + 22u, c0, acc22_0 + bias0); store_vec4(m0 + 22u, c0 + 1u, acc22_1 + bias1);
    store_vec4(m0 + 23u, c0, acc23_0 + bias0); store_vec4(m0 + 23u, c0 + 1u, acc23_1 + bias1);
    store_vec4(m0 + 24u, c0, acc24_0 + bias0); store_vec4(m0 + 24u, c0 + 1u, acc24_1 + bias1);
    store_vec4(m0 + 25u, c0, acc25_0 + bias0); store_vec4(m0 + 25u, c0 + 1u, acc25_1 + bias1);
    store_vec4(m0 + 26u, c0, acc26_0 + bias0); store_vec4(m0 + 26u, c0 + 1u, acc26_1 + bias1);
    store_vec4(m0 + 27u, c0, acc27_0 + bias0); store_vec4(m0 + 27u, c0 + 1u, acc27_1 + bias1);
    store_vec4(m0 + 28u, c0, acc28_0 + bias0); store_vec4(m0 + 28u, c0 + 1u, acc28_1 + bias1);
    store_vec4(m0 + 29u, c0, acc29_0 + bias0); store_vec4(m0 + 29u, c0 + 1u, acc29_1 + bias1);
    store_vec4(m0 + 30u, c0, acc30_0 + bias0); store_vec4(m0 + 30u, c0 + 1u, acc30_1 + bias1);
    store_vec4(m0 + 31u, c0, acc31_0 + bias0); store_vec4(m0 + 31u, c0 + 1u, acc31_1 + bias1);
    if (SUM_B_COLUMNS && m0 == 0u) { store_column_sums(c0, sum0); store_column_sums(c0 + 1u, sum1); }
}
