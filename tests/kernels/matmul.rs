use crate::common::*;
use crate::suite_gpu::suite_gpu;
use ppo_wgpu::gpu::{MatmulVariant, Recorder};
use ppo_wgpu::kernels::matmul::{
    Layout, bias_backward, linear_backward_with_variant, linear_forward, matmul_with_variant,
};
use ppo_wgpu::reference;

const VARIANTS: [MatmulVariant; 6] = [
    MatmulVariant::RegisterTiled,
    MatmulVariant::WorkgroupTiled,
    MatmulVariant::Texture,
    MatmulVariant::TextureSubgroup,
    MatmulVariant::SplitK,
    MatmulVariant::WorkgroupTiledLarge,
];
const LAYOUTS: [Layout; 3] = [Layout::NN, Layout::NT, Layout::TN];

/// f32 sums of K products of unit normals: the error grows like sqrt(K)·ε·|terms|.
fn tol(k: usize) -> (f64, f64) {
    (2e-6 * (k as f64).sqrt() * 4.0, 1e-5)
}

/// (rows, cols) of the stored A and B for op(A)·op(B) of shape M×K·K×N.
fn operand_shapes(layout: Layout, m: usize, n: usize, k: usize) -> ([usize; 2], [usize; 2]) {
    match layout {
        Layout::NN => ([m, k], [k, n]),
        Layout::NT => ([m, k], [n, k]),
        Layout::TN => ([k, m], [k, n]),
    }
}

fn check_matmul(m: usize, n: usize, k: usize, rng: &mut Rng) {
    for layout in LAYOUTS {
        let (sa, sb) = operand_shapes(layout, m, n, k);
        let a = rng.normals(m * k, 1.0);
        let b = rng.normals(k * n, 1.0);
        let prior = rng.normals(m * n, 1.0);
        let want = reference::matmul(&a, &b, m, n, k, layout);
        let want_acc: Vec<f64> = want.iter().zip(&prior).map(|(x, y)| x + y).collect();
        let (ta, tb) = (upload(&a, &sa), upload(&b, &sb));
        for variant in VARIANTS {
            let out = zeros(&[m, n]);
            let acc = upload(&prior, &[m, n]);
            let gpu = gpu();
            let mut rec = Recorder::new(&gpu);
            matmul_with_variant(&mut rec, variant, &out, &ta, &tb, None, layout, false).unwrap();
            matmul_with_variant(&mut rec, variant, &acc, &ta, &tb, None, layout, true).unwrap();
            rec.submit();
            let (atol, rtol) = tol(k);
            let what = format!("matmul {layout:?} {variant:?} M={m} N={n} K={k}");
            assert_close(&what, &download(&out), &want, atol, rtol);
            assert_close(&format!("{what} accumulate"), &download(&acc), &want_acc, atol, rtol);
        }
    }
}

#[test]
fn matmul_unaligned_shapes() {
    let mut rng = Rng::new(10);
    check_matmul(37, 53, 29, &mut rng);
    check_matmul(1, 1, 1, &mut rng);
    check_matmul(7, 129, 65, &mut rng);
    // K aligned, N not: the register-tiled NT kernel itself (an aligned N goes transpose + NN).
    check_matmul(37, 53, 28, &mut rng);
    // N aligned, K (NN) or M (TN) not: the register-tiled kernels reading A as scalars.
    check_matmul(37, 52, 29, &mut rng);
    check_matmul(5, 8, 3, &mut rng);
}

#[test]
fn matmul_aligned_shapes_with_ragged_edges() {
    // vec4 axes aligned, but M and N not multiples of the 64/128 invocation tiles.
    let mut rng = Rng::new(11);
    check_matmul(37, 52, 28, &mut rng);
    check_matmul(64, 128, 64, &mut rng);
    check_matmul(100, 132, 36, &mut rng);
    // Few columns and more than one workgroup of tile rows: the texture kernel's workgroups
    // then cover fewer than 8 tile columns (3 and 1 here) over 8 tile rows each.
    check_matmul(300, 44, 24, &mut rng);
    check_matmul(150, 12, 20, &mut rng);
}

/// Products with a vector operand (the value and reward heads and their gradients): the
/// register-tiled variant runs them with the vector read as a row (see matmul_with_variant).
#[test]
fn matmul_vector_shapes() {
    let mut rng = Rng::new(13);
    check_matmul(37, 1, 64, &mut rng); // a head forward (NN), its dW (TN)
    check_matmul(37, 64, 1, &mut rng); // a head's dinp (NT with K = 1)
    check_matmul(40, 1, 37, &mut rng); // K ragged: NN stays tiled, TN reads A as scalars
    check_matmul(1, 1, 8, &mut rng);
}

/// Products of few rows (a decode step's), which split-K takes: rows that do not fill its
/// 8-row blocks, more columns than one workgroup, and K in slices that do not divide it (200 as
/// 4 × 52 with a last slice of 44, 700 as 11 × 64 with a last slice of 60), walked four elements
/// at a step where K is a multiple of 4 and one at a time where not (130). And its slicing: no
/// slice empty, at most 32 of them, each a multiple of 4 long but the last, their partial
/// outputs within the budget.
#[test]
fn matmul_few_rows() {
    use ppo_wgpu::kernels::matmul::{SPLIT_K_MAX_PARTIAL, split_k_slices};
    let mut rng = Rng::new(14);
    check_matmul(1, 70, 200, &mut rng);
    check_matmul(13, 65, 130, &mut rng);
    check_matmul(32, 129, 64, &mut rng);
    check_matmul(9, 4, 700, &mut rng);
    let budget = SPLIT_K_MAX_PARTIAL;
    assert_eq!(split_k_slices(1, 70, 200, budget), (4, 52));
    assert_eq!(split_k_slices(9, 4, 700, budget), (11, 64));
    assert_eq!(split_k_slices(9, 4, 700, 9 * 4 * 3), (3, 236), "an adapter binding little: 3 slices fit");
    assert_eq!(split_k_slices(9, 4, 700, 10), (1, 700), "one slice, as large as the output, always");
    for (m, n, k) in [(1, 1, 1), (8, 768, 768), (32, 50304, 768), (8, 768, 3072), (32, 1 << 20, 16384), (3, 5, 100_000)]
    {
        let (splits, len) = split_k_slices(m, n, k, budget);
        assert!(
            (1..=32).contains(&splits) && splits * len >= k && (splits - 1) * len < k && len.is_multiple_of(4),
            "{m}×{n}×{k}: {splits} × {len}"
        );
        assert!(splits == 1 || splits * m * n <= budget, "{m}×{n}×{k}: {splits} slices of {m}×{n} partial outputs");
    }
}

/// Split-K products recorded together share the recorder's scratch for their partial sums
/// (`Recorder::scratch`): each reads its own slices whatever the products before and after it
/// wrote there (a larger after a smaller, a smaller after a larger), and the recorder allocates
/// the largest once, not one scratch per product.
#[test]
fn split_k_products_of_one_recorder_share_their_scratch() {
    use ppo_wgpu::kernels::matmul::{SPLIT_K_MAX_PARTIAL, split_k_slices};
    let gpu = suite_gpu(ppo_wgpu::gpu::Gpu::new(None).unwrap());
    let mut rng = Rng::new(15);
    let shapes = [(16, 200, 700), (3, 40, 130), (16, 200, 700), (8, 96, 300), (16, 200, 700)];
    let products: Vec<_> = shapes
        .iter()
        .map(|&(m, n, k)| {
            let (a, b) = (rng.normals(m * k, 1.0), rng.normals(k * n, 1.0));
            let want = reference::matmul(&a, &b, m, n, k, Layout::NN);
            let tensors = (gpu.upload(&[m, k], &to_f32(&a)).unwrap(), gpu.upload(&[k, n], &to_f32(&b)).unwrap());
            (tensors, gpu.tensor(&[m, n], ppo_wgpu::gpu::DType::F32).unwrap(), want, k)
        })
        .collect();
    let before = gpu.tensor_bytes_allocated();
    let mut rec = Recorder::new(&gpu);
    for ((a, b), out, _, _) in &products {
        matmul_with_variant(&mut rec, MatmulVariant::SplitK, out, a, b, None, Layout::NN, false).unwrap();
    }
    let allocated = gpu.tensor_bytes_allocated() - before;
    rec.submit();
    for (i, (_, out, want, k)) in products.iter().enumerate() {
        let (atol, rtol) = tol(*k);
        let got: Vec<f64> = gpu.download(out).unwrap().iter().map(|&x| x as f64).collect();
        assert_close(&format!("split-K product {i} of {shapes:?}"), &got, want, atol, rtol);
    }
    let partial = |&(m, n, k): &(usize, usize, usize)| 4 * split_k_slices(m, n, k, SPLIT_K_MAX_PARTIAL).0 * m * n;
    let (largest, all) = (shapes.iter().map(partial).max().unwrap(), shapes.iter().map(partial).sum::<usize>());
    assert!(
        (allocated as usize) < largest + 1024 && all > 3 * largest,
        "{allocated} bytes allocated for partial sums of at most {largest} bytes each ({all} in all)"
    );
}

#[test]
fn matmul_gpt2_small_shapes() {
    // 64 tokens through c_attn (768 → 2304) and the MLP projection (3072 → 768).
    let mut rng = Rng::new(12);
    check_matmul(64, 2304, 768, &mut rng);
    check_matmul(64, 768, 3072, &mut rng);
}

/// The forward with its bias on every variant, writing and accumulating: layer shapes, and a
/// head's (one output column: register-tiled runs it as an NT row plus `unpad_columns` adding
/// the bias; K ragged keeps it on the tiled kernel).
#[test]
fn linear_forward_with_bias_matches_reference() {
    let mut rng = Rng::new(13);
    for (n, c, oc) in [(37, 28, 52), (37, 29, 53), (64, 128, 384), (37, 64, 1), (40, 37, 1), (13, 28, 70)] {
        let (inp, w, bias) = (rng.normals(n * c, 1.0), rng.normals(c * oc, 1.0), rng.normals(oc, 1.0));
        let prior = rng.normals(n * oc, 1.0);
        let (t_inp, t_w, t_bias) = (upload(&inp, &[n, c]), upload(&w, &[c, oc]), upload(&bias, &[oc]));
        let want = reference::linear_forward(&inp, &w, Some(&bias), n, c, oc);
        let want_acc: Vec<f64> = want.iter().zip(&prior).map(|(x, y)| x + y).collect();
        for variant in VARIANTS {
            let (out, acc) = (zeros(&[n, oc]), upload(&prior, &[n, oc]));
            let gpu = gpu();
            let mut rec = Recorder::new(&gpu);
            matmul_with_variant(&mut rec, variant, &out, &t_inp, &t_w, Some(&t_bias), Layout::NN, false).unwrap();
            matmul_with_variant(&mut rec, variant, &acc, &t_inp, &t_w, Some(&t_bias), Layout::NN, true).unwrap();
            rec.submit();
            let (atol, rtol) = tol(c);
            let what = format!("linear_forward {variant:?} {n}x{c}x{oc}");
            assert_close(&what, &download(&out), &want, atol, rtol);
            assert_close(&format!("{what} accumulate"), &download(&acc), &want_acc, atol, rtol);
        }
        // And through linear_forward, on the adapter's choice.
        let out = zeros(&[n, oc]);
        let gpu = gpu();
        let mut rec = Recorder::new(&gpu);
        linear_forward(&mut rec, &out, &t_inp, &t_w, Some(&t_bias)).unwrap();
        rec.submit();
        let (atol, rtol) = tol(c);
        assert_close(&format!("linear_forward {n}x{c}x{oc}"), &download(&out), &want, atol, rtol);
    }
}

#[test]
fn linear_backward_matches_reference_and_finite_differences() {
    // On every variant: the texture kernels take the weight gradient of an N multiple of 4
    // together with the bias gradient (SUM_B_COLUMNS), the others run bias_backward after it.
    let mut rng = Rng::new(14);
    for (n, c, oc) in [(37, 29, 53), (24, 32, 48), (45, 18, 20)] {
        let (inp, w, bias) = (rng.normals(n * c, 1.0), rng.normals(c * oc, 1.0), rng.normals(oc, 1.0));
        let dout = rng.normals(n * oc, 1.0);
        let (r_inp, r_w, r_b) = reference::linear_backward(&dout, &inp, &w, n, c, oc);
        let loss =
            |inp: &[f64], w: &[f64], bias: &[f64]| dot(&dout, &reference::linear_forward(inp, w, Some(bias), n, c, oc));
        for (variant, accumulate_dinp) in VARIANTS.into_iter().flat_map(|v| [(v, true), (v, false)]) {
            // Gradients accumulate: start from nonzero buffers and subtract them afterwards (dinp
            // only with accumulate_dinp; else what it held must be overwritten).
            let (p_inp, p_w, p_b) = (rng.normals(n * c, 1.0), rng.normals(c * oc, 1.0), rng.normals(oc, 1.0));
            let (dinp, dw, db) = (upload(&p_inp, &[n, c]), upload(&p_w, &[c, oc]), upload(&p_b, &[oc]));
            let gpu = gpu();
            let mut rec = Recorder::new(&gpu);
            let (t_dout, t_inp, t_w) = (upload(&dout, &[n, oc]), upload(&inp, &[n, c]), upload(&w, &[c, oc]));
            let dbias = Some(&db);
            linear_backward_with_variant(
                &mut rec,
                Some(variant),
                &dinp,
                accumulate_dinp,
                &dw,
                dbias,
                &t_dout,
                &t_inp,
                &t_w,
            )
            .unwrap();
            rec.submit();
            let g_inp = if accumulate_dinp { added(&dinp, &p_inp) } else { download(&dinp) };
            let (g_w, g_b) = (added(&dw, &p_w), added(&db, &p_b));
            let what = format!("linear_backward {variant:?} {n}x{c}x{oc} accumulate_dinp={accumulate_dinp}");
            assert_close(&format!("{what} dinp"), &g_inp, &r_inp, tol(oc).0, 1e-5);
            assert_close(&format!("{what} dw"), &g_w, &r_w, tol(n).0, 1e-5);
            assert_close(&format!("{what} dbias"), &g_b, &r_b, tol(n).0, 1e-5);
            if variant == VARIANTS[0] {
                check_fd(&format!("{what} dinp"), &g_inp, |x| loss(x, &w, &bias), &inp, &mut rng, 1e-3, 1e-3);
                check_fd(&format!("{what} dw"), &g_w, |x| loss(&inp, x, &bias), &w, &mut rng, 1e-3, 1e-3);
                check_fd(&format!("{what} dbias"), &g_b, |x| loss(&inp, &w, x), &bias, &mut rng, 1e-3, 1e-3);
            }
        }
    }
}

/// mlp.c_proj's backward taken back through c_fc's GELU on every variant: dpre = gelu'(pre) ⊙
/// (dout · wᵀ) (the products' GELU_BACKWARD epilogue, where they run in one dispatch) and the
/// parameter gradients, against the reference and finite differences, on shapes the epilogue
/// takes (the hidden width a multiple of 4; ragged rows, fewer than 64 and more) and one that
/// runs the GELU kernel after the product (a ragged hidden width).
#[test]
fn linear_backward_gelu_matches_reference_and_finite_differences() {
    use ppo_wgpu::kernels::matmul::linear_backward_gelu_with_variant;
    let mut rng = Rng::new(41);
    for (n, h, oc) in [(37, 44, 29), (130, 64, 24), (33, 18, 20), (12, 44, 29)] {
        let (pre, w, bias) = (rng.normals(n * h, 1.5), rng.normals(h * oc, 1.0), rng.normals(oc, 1.0));
        let inp = reference::gelu_forward(&pre);
        let dout = rng.normals(n * oc, 1.0);
        let (r_inp, r_w, r_b) = reference::linear_backward(&dout, &inp, &w, n, h, oc);
        let r_pre = reference::gelu_backward(&pre, &r_inp);
        let loss = |pre: &[f64], w: &[f64], bias: &[f64]| {
            dot(&dout, &reference::linear_forward(&reference::gelu_forward(pre), w, Some(bias), n, h, oc))
        };
        for variant in VARIANTS {
            // dpre starts as NaN (every element must be written), the parameter gradients from
            // nonzero buffers (they accumulate).
            let (p_w, p_b) = (rng.normals(h * oc, 1.0), rng.normals(oc, 1.0));
            let (dpre, dw, db) = (upload(&vec![f64::NAN; n * h], &[n, h]), upload(&p_w, &[h, oc]), upload(&p_b, &[oc]));
            let (t_dout, t_inp, t_w, t_pre) =
                (upload(&dout, &[n, oc]), upload(&inp, &[n, h]), upload(&w, &[h, oc]), upload(&pre, &[n, h]));
            let gpu = gpu();
            let mut rec = Recorder::new(&gpu);
            let dbias = Some(&db);
            linear_backward_gelu_with_variant(
                &mut rec,
                Some(variant),
                &dpre,
                &dw,
                dbias,
                &t_dout,
                &t_inp,
                &t_w,
                &t_pre,
            )
            .unwrap();
            rec.submit();
            let (g_pre, g_w, g_b) = (download(&dpre), added(&dw, &p_w), added(&db, &p_b));
            let what = format!("linear_backward_gelu {variant:?} {n}x{h}x{oc}");
            assert_close(&format!("{what} dpre"), &g_pre, &r_pre, tol(oc).0, 1e-5);
            assert_close(&format!("{what} dw"), &g_w, &r_w, tol(n).0, 1e-5);
            assert_close(&format!("{what} dbias"), &g_b, &r_b, tol(n).0, 1e-5);
            if variant == VARIANTS[0] {
                check_fd(&format!("{what} dpre"), &g_pre, |x| loss(x, &w, &bias), &pre, &mut rng, 1e-3, 1e-3);
            }
        }
    }
}

#[test]
fn matmul_splits_operands_larger_than_the_binding_limit() {
    // A device whose bindings hold at most 64 KiB (16384 floats): one operand or more of each
    // product below is larger, so it must split — NN/NT over rows of A and out, NT over rows of
    // B (column slices of out), NN over rows of B (column slices of A), TN over the shared K
    // rows, TN over rows of out (column slices of A) — as GPT-2's LM head and its gradients must
    // on adapters with 128 MiB bindings.
    let gpu = suite_gpu(ppo_wgpu::gpu::Gpu::with_binding_limit(None, Some(64 * 1024)).unwrap());
    let mut rng = Rng::new(15);
    for (layout, m, n, k) in [
        (Layout::NN, 300, 40, 68),
        (Layout::NT, 300, 12, 68),
        (Layout::NT, 40, 300, 68),
        (Layout::NT, 40, 301, 68), // a ragged N written as column slices of rows of 301 (GPT-2's logits)
        (Layout::NN, 40, 48, 400),
        (Layout::NN, 40, 48, 401),
        (Layout::TN, 40, 36, 600),
        (Layout::TN, 600, 36, 24),
        (Layout::TN, 601, 36, 24),
    ] {
        let (sa, sb) = operand_shapes(layout, m, n, k);
        let (a, b) = (rng.normals(m * k, 1.0), rng.normals(k * n, 1.0));
        let prior = rng.normals(m * n, 1.0);
        let up = |x: &[f64], shape: &[usize]| gpu.upload(shape, &to_f32(x)).unwrap();
        let (ta, tb) = (up(&a, &sa), up(&b, &sb));
        for variant in VARIANTS {
            let (out, acc) = (up(&vec![0.0; m * n], &[m, n]), up(&prior, &[m, n]));
            let mut rec = Recorder::new(&gpu);
            matmul_with_variant(&mut rec, variant, &out, &ta, &tb, None, layout, false).unwrap();
            matmul_with_variant(&mut rec, variant, &acc, &ta, &tb, None, layout, true).unwrap();
            assert!(rec.dispatch_count() > 2, "{layout:?} M={m} N={n} K={k} should have been split");
            rec.submit();
            let want = reference::matmul(&a, &b, m, n, k, layout);
            let want_acc: Vec<f64> = want.iter().zip(&prior).map(|(x, y)| x + y).collect();
            let got = |t| gpu.download(t).unwrap().into_iter().map(f64::from).collect::<Vec<_>>();
            let (atol, rtol) = tol(k);
            let what = format!("split matmul {layout:?} {variant:?} M={m} N={n} K={k}");
            assert_close(&what, &got(&out), &want, atol, rtol);
            assert_close(&format!("{what} accumulate"), &got(&acc), &want_acc, atol, rtol);
        }
    }
}

#[test]
fn matmul_that_cannot_be_split_is_an_error() {
    let gpu = suite_gpu(ppo_wgpu::gpu::Gpu::with_binding_limit(None, Some(64 * 1024)).unwrap());
    // 64 rows of A [40, 600] hold 38400 floats, above the 16384 limit: no row split helps.
    let (a, b, out) = (
        gpu.upload(&[40, 600], &[0.0; 24000]).unwrap(),
        gpu.upload(&[600, 8], &[0.0; 4800]).unwrap(),
        gpu.upload(&[40, 8], &[0.0; 320]).unwrap(),
    );
    let mut rec = Recorder::new(&gpu);
    let err =
        ppo_wgpu::kernels::matmul::matmul(&mut rec, &out, &a, &b, None, Layout::NN, false).unwrap_err().to_string();
    assert!(err.contains("storage-binding limit"), "{err}");
}

#[test]
fn texture_matmul_splits_operands_larger_than_the_texture_limit() {
    // A device whose textures are at most 32 texels on a side: each product below has an
    // operand wider or taller than that, so the texture kernel runs it in blocks of rows of
    // out (M > 32), columns of out (N > 4·32 in 16-column tiles) and slices of K accumulated
    // (K > 32 rows of Bt), with and without a bias.
    let lower = ppo_wgpu::gpu::LowerLimits { texture_dimension: Some(32), ..Default::default() };
    let gpu = suite_gpu(ppo_wgpu::gpu::Gpu::with_lower_limits(None, lower).unwrap());
    let mut rng = Rng::new(16);
    // (N = 131 and 203: not a multiple of 4, so the product also goes through a padded scratch.)
    let cases = [
        (Layout::NN, 70, 20, 24),
        (Layout::NT, 20, 200, 12),
        (Layout::TN, 24, 36, 75),
        (Layout::NN, 37, 136, 131),
        (Layout::NN, 40, 131, 40),
        (Layout::NT, 18, 203, 36),
    ];
    for (layout, m, n, k) in cases {
        let (sa, sb) = operand_shapes(layout, m, n, k);
        let (a, b, prior) = (rng.normals(m * k, 1.0), rng.normals(k * n, 1.0), rng.normals(m * n, 1.0));
        let up = |x: &[f64], shape: &[usize]| gpu.upload(shape, &to_f32(x)).unwrap();
        let (ta, tb) = (up(&a, &sa), up(&b, &sb));
        let bias = rng.normals(n, 1.0);
        for variant in [MatmulVariant::Texture, MatmulVariant::TextureSubgroup] {
            let acc = up(&prior, &[m, n]);
            let mut rec = Recorder::new(&gpu);
            matmul_with_variant(&mut rec, variant, &acc, &ta, &tb, None, layout, true).unwrap();
            assert!(rec.dispatch_count() > 3, "{layout:?} M={m} N={n} K={k} should have been split");
            rec.submit();
            let want: Vec<f64> =
                reference::matmul(&a, &b, m, n, k, layout).iter().zip(&prior).map(|(x, y)| x + y).collect();
            let got: Vec<f64> = gpu.download(&acc).unwrap().into_iter().map(f64::from).collect();
            let (atol, rtol) = tol(k);
            let what = format!("{variant:?} M={m} N={n} K={k}");
            assert_close(&format!("texture-split matmul {layout:?} {what}"), &got, &want, atol, rtol);
            if layout == Layout::NN {
                let out = up(&vec![0.0; m * n], &[m, n]);
                let mut rec = Recorder::new(&gpu);
                let tbias = up(&bias, &[n]);
                matmul_with_variant(&mut rec, variant, &out, &ta, &tb, Some(&tbias), layout, false).unwrap();
                rec.submit();
                let want = reference::linear_forward(&a, &b, Some(&bias), m, k, n);
                let got: Vec<f64> = gpu.download(&out).unwrap().into_iter().map(f64::from).collect();
                assert_close(&format!("texture-split linear {what}"), &got, &want, atol, rtol);
            }
        }
    }
    // The weight and bias gradients in one pass (SUM_B_COLUMNS) over blocks of K (tokens > 32
    // rows of Bt), of rows of dW (40 input channels > 32: only the first block's kernels add
    // the column sums) and of its columns (136 > 128 output channels).
    let (n, c, oc) = (75, 40, 136);
    let (inp, w, dout) = (rng.normals(n * c, 1.0), rng.normals(c * oc, 1.0), rng.normals(n * oc, 1.0));
    let (p_w, p_b) = (rng.normals(c * oc, 1.0), rng.normals(oc, 1.0));
    let (_, r_w, r_b) = reference::linear_backward(&dout, &inp, &w, n, c, oc);
    let up = |x: &[f64], shape: &[usize]| gpu.upload(shape, &to_f32(x)).unwrap();
    for variant in [MatmulVariant::Texture, MatmulVariant::TextureSubgroup] {
        let (dinp, dw, db) = (up(&vec![0.0; n * c], &[n, c]), up(&p_w, &[c, oc]), up(&p_b, &[oc]));
        let mut rec = Recorder::new(&gpu);
        let (t_dout, t_inp, t_w) = (up(&dout, &[n, oc]), up(&inp, &[n, c]), up(&w, &[c, oc]));
        linear_backward_with_variant(&mut rec, Some(variant), &dinp, true, &dw, Some(&db), &t_dout, &t_inp, &t_w)
            .unwrap();
        rec.submit();
        let got = |t: &ppo_wgpu::gpu::Tensor, prior: &[f64]| -> Vec<f64> {
            gpu.download(t).unwrap().into_iter().zip(prior).map(|(g, p)| g as f64 - p).collect()
        };
        let what = format!("texture-split linear_backward {variant:?}");
        assert_close(&format!("{what} dw"), &got(&dw, &p_w), &r_w, tol(n).0, 1e-5);
        assert_close(&format!("{what} dbias"), &got(&db, &p_b), &r_b, tol(n).0, 1e-5);
    }
}

#[test]
fn texture_subgroup_is_measured_where_subgroups_have_8_lanes_and_runs_as_texture_elsewhere() {
    // Where the adapter's subgroups all have 8 invocations (lavapipe's 8-wide SIMD) the variant
    // is measured as its own (a figure in the choice); on a device without subgroup operations
    // it has no figure, is never chosen, and, forced, runs the texture kernel and matches.
    let has_lanes = gpu().fixed_subgroup_size() == Some(ppo_wgpu::kernels::BROADCAST_LANES);
    let figure = |gpu: &std::sync::Arc<ppo_wgpu::gpu::Gpu>| {
        ppo_wgpu::kernels::matmul::variant(gpu).unwrap();
        let choices = gpu.variant_choices();
        let (_, choice) = choices.iter().find(|(family, _)| family == "matmul").unwrap();
        choice.figures.iter().find(|(name, _)| name == "texture-subgroup").and_then(|(_, rate)| *rate)
    };
    if std::env::var_os("PPO_WGPU_MATMUL").is_none() {
        assert_eq!(figure(&gpu()).is_some(), has_lanes, "texture-subgroup measured on {}", gpu().describe());
    }
    let lower = ppo_wgpu::gpu::LowerLimits { no_subgroups: true, ..Default::default() };
    let plain = suite_gpu(ppo_wgpu::gpu::Gpu::with_lower_limits(None, lower).unwrap());
    plain.set_variant_cache(None);
    let mut rng = Rng::new(18);
    let (m, n, k) = (70, 72, 24);
    let (a, b) = (rng.normals(m * k, 1.0), rng.normals(k * n, 1.0));
    let up = |x: &[f64], shape: &[usize]| plain.upload(shape, &to_f32(x)).unwrap();
    let (ta, tb, out) = (up(&a, &[m, k]), up(&b, &[k, n]), up(&vec![0.0; m * n], &[m, n]));
    let mut rec = Recorder::new(&plain);
    matmul_with_variant(&mut rec, MatmulVariant::TextureSubgroup, &out, &ta, &tb, None, Layout::NN, false).unwrap();
    rec.submit();
    let got: Vec<f64> = plain.download(&out).unwrap().into_iter().map(f64::from).collect();
    let (atol, rtol) = tol(k);
    assert_close(
        "texture-subgroup without subgroups",
        &got,
        &reference::matmul(&a, &b, m, n, k, Layout::NN),
        atol,
        rtol,
    );
    // The same through the GELU epilogue, which an H100 (subgroups of 32) once ran on the
    // subgroup kernel: rows past the first 64 came back unwritten.
    let (m, c, oc) = (130, 64, 256);
    let (x, w, bias) = (rng.normals(m * c, 1.0), rng.normals(c * oc, 0.5), rng.normals(oc, 1.0));
    let (tx, tw, tb) = (up(&x, &[m, c]), up(&w, &[c, oc]), up(&bias, &[oc]));
    let (pre, post) = (up(&vec![f64::NAN; m * oc], &[m, oc]), up(&vec![f64::NAN; m * oc], &[m, oc]));
    let mut rec = Recorder::new(&plain);
    let fused = ppo_wgpu::kernels::matmul::GeluEpilogue::Fused;
    ppo_wgpu::kernels::matmul::linear_forward_gelu_with(
        &mut rec,
        MatmulVariant::TextureSubgroup,
        fused,
        &pre,
        &post,
        &tx,
        &tw,
        &tb,
    )
    .unwrap();
    rec.submit();
    let want_pre = reference::linear_forward(&x, &w, Some(&bias), m, c, oc);
    let got = |t| plain.download(t).unwrap().into_iter().map(f64::from).collect::<Vec<f64>>();
    let (atol, rtol) = tol(c);
    assert_close("fused GELU product without subgroups", &got(&pre), &want_pre, atol, rtol);
    assert_close("its GELU", &got(&post), &reference::gelu_forward(&want_pre), atol, rtol);
    if std::env::var_os("PPO_WGPU_MATMUL").is_none() {
        assert_eq!(figure(&plain), None);
        assert_ne!(ppo_wgpu::kernels::matmul::variant(&plain).unwrap(), MatmulVariant::TextureSubgroup);
    }
}

#[test]
fn matmul_long_k_runs_in_slices() {
    // K = 70001 (a weight gradient over 70001 tokens): past MAX_K the product runs as slices
    // accumulated one after another; walked in one dispatch, llvmpipe's loop limit (65535
    // iterations per invocation) would stop it short without a word.
    let mut rng = Rng::new(17);
    let (m, n, k) = (16, 8, 70001);
    for layout in [Layout::NN, Layout::TN] {
        let (sa, sb) = operand_shapes(layout, m, n, k);
        let (a, b) = (rng.normals(m * k, 1.0), rng.normals(k * n, 1.0));
        let want = reference::matmul(&a, &b, m, n, k, layout);
        let (ta, tb) = (upload(&a, &sa), upload(&b, &sb));
        for variant in VARIANTS {
            let out = zeros(&[m, n]);
            let gpu = gpu();
            let mut rec = Recorder::new(&gpu);
            matmul_with_variant(&mut rec, variant, &out, &ta, &tb, None, layout, false).unwrap();
            rec.submit();
            let (atol, rtol) = tol(k);
            assert_close(&format!("matmul {layout:?} {variant:?} K={k}"), &download(&out), &want, atol, rtol);
        }
    }
}

#[test]
fn bias_gradient_sums_columns_over_lanes_and_row_slices() {
    // 70001 rows of 19 columns, added to a prior gradient: 16 row lanes per column in each
    // dispatch, five row slices (MAX_SERIAL_STEPS), and a workgroup of 16 columns with three of
    // a second one.
    let mut rng = Rng::new(23);
    let (rows, cols) = (70001, 19);
    let (dout, prior) = (rng.normals(rows * cols, 1.0), rng.normals(cols, 1.0));
    let want: Vec<f64> = (0..cols).map(|c| prior[c] + (0..rows).map(|r| dout[r * cols + c]).sum::<f64>()).collect();
    let (t_dout, dbias) = (upload(&dout, &[rows, cols]), upload(&prior, &[cols]));
    let gpu = gpu();
    let mut rec = Recorder::new(&gpu);
    bias_backward(&mut rec, &dbias, &t_dout).unwrap();
    rec.submit();
    let (atol, rtol) = tol(rows);
    assert_close("bias gradient over 70001 rows", &download(&dbias), &want, atol, rtol);
}

/// The texture kernel with each pack method: `copy` copies the blocks that fill a texture
/// exactly (not transposed, rows 64 floats apart, starting on a texel) and packs the rest with
/// the shader, so products whose operands are such blocks, blocks of ragged size, and an operand
/// viewed from the middle of its buffer must all give the reference's product.
#[test]
fn texture_pack_methods_match_reference() {
    use ppo_wgpu::kernels::matmul::{PACK_METHODS, texture_matmul_with_pack};
    let mut rng = Rng::new(31);
    let gpu = gpu();
    // (M, N, K): every operand copyable (NN); K ragged for the copy (A's rows 100 floats apart);
    // M ragged (A's texture has rows past the block).
    for (m, n, k) in [(64, 128, 128), (48, 64, 100), (37, 64, 64)] {
        for layout in LAYOUTS {
            let (sa, sb) = operand_shapes(layout, m, n, k);
            let (a, b) = (rng.normals(m * k, 1.0), rng.normals(k * n, 1.0));
            let bias = rng.normals(n, 1.0);
            let want: Vec<f64> = reference::matmul(&a, &b, m, n, k, layout)
                .iter()
                .enumerate()
                .map(|(i, x)| x + if layout == Layout::NN { bias[i % n] } else { 0.0 })
                .collect();
            // A also as a view into its buffer at the adapter's storage offset alignment.
            let at = gpu.limits.min_storage_buffer_offset_alignment as usize / 4;
            let shifted: Vec<f64> = std::iter::repeat_n(7.0, at).chain(a.iter().copied()).collect();
            let a_shifted = upload(&shifted, &[shifted.len()]).view(&gpu, at, &sa).unwrap();
            for (method, name) in PACK_METHODS {
                for (ta, what_a) in
                    [(upload(&a, &sa), "A".to_string()), (a_shifted.clone(), format!("A at offset {at}"))]
                {
                    let (tb, out) = (upload(&b, &sb), zeros(&[m, n]));
                    let t_bias = (layout == Layout::NN).then(|| upload(&bias, &[n]));
                    let mut rec = Recorder::new(&gpu);
                    texture_matmul_with_pack(&mut rec, method, &out, &ta, &tb, t_bias.as_ref(), layout, false).unwrap();
                    rec.submit();
                    let (atol, rtol) = tol(k);
                    let what = format!("texture matmul {layout:?} M={m} N={n} K={k}, pack {name}, {what_a}");
                    assert_close(&what, &download(&out), &want, atol, rtol);
                }
            }
        }
    }
}

/// c_fc's forward with each GELU epilogue on each matmul variant, its weights in f32 and (as a
/// decode step reads them) in f16: the pre-activation (kept for the backward) and its GELU
/// against the reference (with the weights rounded as the f16 copy rounds them), on shapes the
/// fused epilogue takes (N a multiple of 4, ragged M and K) and one it hands back to the
/// separate kernels (N ragged).
#[test]
fn linear_forward_gelu_epilogues_match_reference() {
    use ppo_wgpu::kernels::matmul::{GELU_EPILOGUES, linear_forward_gelu_with};
    let mut rng = Rng::new(33);
    for ((m, c, oc), f16) in [
        ((37, 29, 44), false),
        ((130, 64, 256), false),
        ((33, 20, 18), false),
        ((37, 29, 44), true),
        ((33, 20, 18), true),
        ((13, 29, 44), false), // few rows: split-K's
        ((13, 29, 44), true),
    ] {
        let (x, w, bias) = (rng.normals(m * c, 1.0), rng.normals(c * oc, 0.5), rng.normals(oc, 1.0));
        let held: Vec<f64> =
            if f16 { to_f32(&w).iter().map(|&v| reference::f16_weight(v) as f64).collect() } else { w.clone() };
        let want_pre = reference::linear_forward(&x, &held, Some(&bias), m, c, oc);
        let want_post = reference::gelu_forward(&want_pre);
        let (tx, tw, tb) = (upload(&x, &[m, c]), upload(&w, &[c, oc]), upload(&bias, &[oc]));
        let tw = if f16 {
            let gpu = gpu();
            let mut rec = Recorder::new(&gpu);
            let half = ppo_wgpu::kernels::f16_weights::to_f16(&mut rec, &tw).unwrap();
            rec.submit();
            half
        } else {
            tw
        };
        for variant in VARIANTS {
            for (epilogue, name) in GELU_EPILOGUES {
                // Outputs start as NaN: every element must be written.
                let (pre, post) =
                    (upload(&vec![f64::NAN; m * oc], &[m, oc]), upload(&vec![f64::NAN; m * oc], &[m, oc]));
                let gpu = gpu();
                let mut rec = Recorder::new(&gpu);
                linear_forward_gelu_with(&mut rec, variant, epilogue, &pre, &post, &tx, &tw, &tb).unwrap();
                rec.submit();
                let (atol, rtol) = tol(c);
                let what = format!("c_fc {variant:?} {name} M={m} C={c} OC={oc} f16 weights {f16}");
                assert_close(&format!("{what} pre-activation"), &download(&pre), &want_pre, atol, rtol);
                assert_close(&format!("{what} gelu"), &download(&post), &want_post, atol, rtol);
            }
        }
    }
}

#[test]
fn group_columns_share_a_row_of_tiles_evenly_among_the_fewest_workgroups() {
    use ppo_wgpu::kernels::matmul::group_columns;
    assert_eq!((group_columns(12, 8), group_columns(4, 8), group_columns(16, 8), group_columns(20, 8)), (6, 4, 8, 7));
    for tiles in 1..200 {
        let g = group_columns(tiles, 8);
        let groups = tiles.div_ceil(g);
        assert!(g <= 8 && groups == tiles.div_ceil(8), "{tiles} tile columns: {g} per workgroup, {groups} workgroups");
        assert!(g * groups - tiles < groups, "{tiles} tile columns: {g} per workgroup leaves a workgroup short");
    }
}
