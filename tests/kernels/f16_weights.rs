//! A generation's f16 weights: the conversion against the CPU rounding, and every matmul
//! variant reading an f16 B against the reference product with B rounded the same way.

use crate::common::*;
use crate::suite_gpu::suite_gpu;
use ppo_wgpu::gpu::{DType, MatmulVariant, Recorder};
use ppo_wgpu::kernels::f16_weights::{WeightFormat, in_format, to_f16};
use ppo_wgpu::kernels::matmul::{Layout, matmul_with_variant};
use ppo_wgpu::reference::{self, F16_MAX, f16_weight};

/// The f16 copy holds each value rounded to the nearest f16, to within half an f16 ulp
/// (2⁻¹¹ relative; 2⁻²⁵ absolute among f16's subnormals, which the reference rounding does not
/// model), out-of-range values clamped to exactly ±65504, at ragged shapes and magnitudes from
/// f16's subnormals to beyond its range.
#[test]
fn f16_copy_rounds_each_weight_to_the_nearest_f16() {
    let gpu = gpu();
    let mut rng = Rng::new(41);
    for (shape, scale) in [(vec![7, 38], 1.0), (vec![1, 2], 0.02), (vec![33, 130], 1e-5), (vec![3, 4, 10], 3e4)] {
        let n: usize = shape.iter().product();
        let mut w = rng.normals(n, scale);
        w[0] = 1e6; // beyond f16's range
        w[n - 1] = -7e4;
        let mut rec = Recorder::new(&gpu);
        let half = to_f16(&mut rec, &upload(&w, &shape)).unwrap();
        rec.submit();
        let mut words_shape = shape.clone();
        *words_shape.last_mut().unwrap() /= 2;
        assert_eq!(half.shape(), &words_shape[..], "the f16 copy's shape counts u32 words");
        let got = unpack_f16_pairs(&gpu.download_u32(&half).unwrap());
        let want: Vec<f64> = to_f32(&w).iter().map(|&x| f16_weight(x) as f64).collect();
        assert_close(&format!("f16 copy of {shape:?} × {scale}"), &got, &want, 2f64.powi(-25), 2f64.powi(-11));
        assert_eq!((got[0], got[n - 1]), (F16_MAX as f64, -F16_MAX as f64), "out-of-range weights clamp");
    }
}

/// An f16 copy of rows of odd length is an error; a decode step keeps such a weight in f32.
#[test]
fn f16_copy_of_an_odd_row_is_an_error() {
    let gpu = gpu();
    let mut rec = Recorder::new(&gpu);
    let odd = upload(&[0.5; 15], &[3, 5]);
    let err = to_f16(&mut rec, &odd).unwrap_err().to_string();
    assert!(err.contains("even number of columns"), "{err}");
    let kept = in_format(&mut rec, &odd, WeightFormat::F16).unwrap();
    assert_eq!((kept.dtype(), kept.shape()), (DType::F32, &[3, 5][..]));
    let even = in_format(&mut rec, &upload(&[0.5; 12], &[3, 4]), WeightFormat::F16).unwrap();
    assert_eq!((even.dtype(), even.shape()), (DType::U32, &[3, 2][..]));
}

const VARIANTS: [MatmulVariant; 6] = [
    MatmulVariant::RegisterTiled,
    MatmulVariant::WorkgroupTiled,
    MatmulVariant::Texture,
    MatmulVariant::TextureSubgroup,
    MatmulVariant::SplitK,
    MatmulVariant::WorkgroupTiledLarge,
];

/// out (+)= op(A)·op(B) (+ bias, NN) with B in f16 on `variant` against the reference with B
/// rounded as the copy rounds it (so a kernel that read B at f32 would fail: the rounding
/// moves these products by about 1e-3, the tolerance is 1e-5), on `gpu`; returns the dispatches.
fn check_f16_b(
    gpu: &std::sync::Arc<ppo_wgpu::gpu::Gpu>,
    variant: MatmulVariant,
    layout: Layout,
    (m, n, k): (usize, usize, usize),
    rng: &mut Rng,
) -> usize {
    let (sa, sb) = match layout {
        Layout::NN => ([m, k], [k, n]),
        Layout::NT => ([m, k], [n, k]),
        Layout::TN => ([k, m], [k, n]),
    };
    let (a, b, prior, bias) =
        (rng.normals(m * k, 1.0), rng.normals(k * n, 1.0), rng.normals(m * n, 1.0), rng.normals(n, 1.0));
    let rounded: Vec<f64> = to_f32(&b).iter().map(|&x| f16_weight(x) as f64).collect();
    let with_bias = layout == Layout::NN;
    let mut want = reference::matmul(&a, &rounded, m, n, k, layout);
    if with_bias {
        want.chunks_mut(n).for_each(|row| row.iter_mut().zip(&bias).for_each(|(x, b)| *x += b));
    }
    let want_acc: Vec<f64> = want.iter().zip(&prior).map(|(x, y)| x + y).collect();
    let up = |x: &[f64], shape: &[usize]| gpu.upload(shape, &to_f32(x)).unwrap();
    let (ta, out, acc, tbias) = (up(&a, &sa), up(&vec![0.0; m * n], &[m, n]), up(&prior, &[m, n]), up(&bias, &[n]));
    let mut rec = Recorder::new(gpu);
    let half = to_f16(&mut rec, &up(&b, &sb)).unwrap();
    let bias = with_bias.then_some(&tbias);
    let before = rec.dispatch_count();
    matmul_with_variant(&mut rec, variant, &out, &ta, &half, bias, layout, false).unwrap();
    matmul_with_variant(&mut rec, variant, &acc, &ta, &half, bias, layout, true).unwrap();
    let dispatches = rec.dispatch_count() - before;
    rec.submit();
    let got = |t| gpu.download(t).unwrap().into_iter().map(f64::from).collect::<Vec<_>>();
    let (atol, rtol) = (8e-6 * (k as f64).sqrt(), 1e-5);
    let what = format!("f16 B matmul {layout:?} {variant:?} M={m} N={n} K={k}");
    assert_close(&what, &got(&out), &want, atol, rtol);
    assert_close(&format!("{what} accumulate"), &got(&acc), &want_acc, atol, rtol);
    dispatches
}

/// Every variant and layout (the texture variant runs an f16 B register-tiled), at ragged shapes (odd M; N, K even as f16 pairs need, and not
/// multiples of 4, which sends the register-tiled kernel's vec4 axes to the tiled kernel), at
/// a decode step's shapes, and at shapes that fill whole tiles.
#[test]
fn every_matmul_variant_reads_an_f16_b() {
    let gpu = gpu();
    let mut rng = Rng::new(42);
    for variant in VARIANTS {
        for layout in [Layout::NN, Layout::NT, Layout::TN] {
            for shape in [(37, 54, 30), (5, 8, 6), (32, 132, 36), (64, 128, 64), (17, 20, 52)] {
                check_f16_b(&gpu, variant, layout, shape, &mut rng);
            }
        }
    }
}

/// An f16 B larger than the binding limit splits as an f32 one does, its rows counted in words:
/// NT over rows of B (GPT-2's LM head), NN over rows of B.
#[test]
fn f16_b_splits_past_the_binding_limit() {
    let gpu = suite_gpu(ppo_wgpu::gpu::Gpu::with_binding_limit(None, Some(64 * 1024)).unwrap());
    let mut rng = Rng::new(43);
    // B of 40 000 values (20 000 words, above the limit of 16384) in each.
    for (layout, shape) in [(Layout::NT, (16, 500, 80)), (Layout::NN, (16, 80, 500))] {
        for variant in VARIANTS {
            let dispatches = check_f16_b(&gpu, variant, layout, shape, &mut rng);
            assert!(dispatches > 2, "{layout:?} {variant:?} {shape:?} should have been split");
        }
    }
}
