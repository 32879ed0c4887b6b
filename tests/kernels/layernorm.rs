use crate::common::*;
use crate::suite_gpu::suite_gpu;
use ppo_wgpu::gpu::{Gpu, LowerLimits, Recorder};
use ppo_wgpu::kernels::layernorm::{
    LayernormVariant, VARIANTS, backward_with_variant, forward_with_variant, residual_forward_with_variant, variant,
};
use ppo_wgpu::reference;

const EPS: f64 = 1e-5;

#[test]
fn layernorm_forward_and_backward_match_reference_and_finite_differences() {
    let mut rng = Rng::new(20);
    // 37 rows of 53 (nothing aligned), of 52 (vec4 rows, fewer vec4s than a workgroup's 64
    // invocations), and 64 rows of GPT-2-small's 768 (three vec4s per invocation of a workgroup),
    // on each variant.
    let cases = [(37, 53), (37, 52), (64, 768)];
    for ((rows, c), (variant, name)) in cases.into_iter().flat_map(|case| VARIANTS.map(|v| (case, v))) {
        let inp: Vec<f64> = rng.normals(rows * c, 2.0).iter().map(|x| x + 0.5).collect();
        let (w, b) = (rng.normals(c, 1.0), rng.normals(c, 1.0));
        let dout = rng.normals(rows * c, 1.0);
        // The gradients accumulate: start from nonzero buffers and subtract them afterwards.
        let (prior, prior_w, prior_b) = (rng.normals(rows * c, 1.0), rng.normals(c, 1.0), rng.normals(c, 1.0));
        let (out, mean, rstd) = (zeros(&[rows, c]), zeros(&[rows]), zeros(&[rows]));
        let (dinp, dw, db) = (upload(&prior, &[rows, c]), upload(&prior_w, &[c]), upload(&prior_b, &[c]));
        let (t_inp, t_w, t_b) = (upload(&inp, &[rows, c]), upload(&w, &[c]), upload(&b, &[c]));
        let gpu = gpu();
        let mut rec = Recorder::new(&gpu);
        forward_with_variant(&mut rec, variant, &out, &mean, &rstd, &t_inp, &t_w, &t_b, EPS as f32).unwrap();
        let t_dout = upload(&dout, &[rows, c]);
        backward_with_variant(&mut rec, variant, &dinp, &dw, &db, &t_dout, &t_inp, &t_w, &mean, &rstd).unwrap();
        rec.submit();

        let what = format!("layernorm {name} {rows}x{c}");
        let (r_out, r_mean, r_rstd) = reference::layernorm_forward(&inp, &w, &b, c, EPS);
        // Sums over C in f32.
        assert_close(&format!("{what} out"), &download(&out), &r_out, 1e-5, 1e-5);
        assert_close(&format!("{what} mean"), &download(&mean), &r_mean, 1e-6, 1e-5);
        assert_close(&format!("{what} rstd"), &download(&rstd), &r_rstd, 1e-6, 1e-5);

        let (g_inp, g_w, g_b) = (added(&dinp, &prior), added(&dw, &prior_w), added(&db, &prior_b));
        let (r_inp, r_w, r_b) = reference::layernorm_backward(&dout, &inp, &w, c, EPS);
        assert_close(&format!("{what} dinp"), &g_inp, &r_inp, 1e-5, 1e-4);
        // Sums over rows in f32.
        assert_close(&format!("{what} dweight"), &g_w, &r_w, 1e-4, 1e-4);
        assert_close(&format!("{what} dbias"), &g_b, &r_b, 1e-4, 1e-4);

        let loss = |inp: &[f64], w: &[f64], b: &[f64]| dot(&dout, &reference::layernorm_forward(inp, w, b, c, EPS).0);
        check_fd(&format!("{what} dinp"), &g_inp, |x| loss(x, &w, &b), &inp, &mut rng, 1e-4, 1e-3);
        check_fd(&format!("{what} dweight"), &g_w, |x| loss(&inp, x, &b), &w, &mut rng, 1e-4, 1e-3);
        check_fd(&format!("{what} dbias"), &g_b, |x| loss(&inp, &w, x), &b, &mut rng, 1e-4, 1e-3);
    }
}

#[test]
fn fused_residual_layernorm_matches_the_sum_then_reference_layernorm() {
    let mut rng = Rng::new(22);
    // Rows of 53 (not whole vec4s: the two kernels run one after the other), of 52 (vec4 rows
    // shorter than a workgroup), and of 768 (several vec4s per invocation of a workgroup).
    let cases = [(37, 53), (37, 52), (64, 768)];
    for ((rows, c), (variant, name)) in cases.into_iter().flat_map(|case| VARIANTS.map(|v| (case, v))) {
        let a: Vec<f64> = rng.normals(rows * c, 2.0).iter().map(|x| x + 0.5).collect();
        let b = rng.normals(rows * c, 1.0);
        let (w, bias) = (rng.normals(c, 1.0), rng.normals(c, 1.0));
        let (residual, out, mean, rstd) = (zeros(&[rows, c]), zeros(&[rows, c]), zeros(&[rows]), zeros(&[rows]));
        let (t_a, t_b, t_w, t_bias) =
            (upload(&a, &[rows, c]), upload(&b, &[rows, c]), upload(&w, &[c]), upload(&bias, &[c]));
        let gpu = gpu();
        let mut rec = Recorder::new(&gpu);
        residual_forward_with_variant(
            &mut rec, variant, &residual, &out, &mean, &rstd, &t_a, &t_b, &t_w, &t_bias, EPS as f32,
        )
        .unwrap();
        rec.submit();

        let what = format!("residual layernorm {name} {rows}x{c}");
        let sum: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        // One f32 rounding of the sum, then sums over C in f32.
        assert_close(&format!("{what} residual"), &download(&residual), &sum, 1e-6, 1e-6);
        let (r_out, r_mean, r_rstd) = reference::layernorm_forward(&sum, &w, &bias, c, EPS);
        assert_close(&format!("{what} out"), &download(&out), &r_out, 1e-5, 1e-5);
        assert_close(&format!("{what} mean"), &download(&mean), &r_mean, 1e-6, 1e-5);
        assert_close(&format!("{what} rstd"), &download(&rstd), &r_rstd, 1e-6, 1e-5);
    }
}

#[test]
fn without_subgroups_the_subgroup_variant_runs_per_row_and_is_never_chosen() {
    // A device with subgroup operations left off: the subgroup variant, forced, runs an
    // invocation per row and still matches the reference; measured, it has no figure and is
    // not chosen.
    let lower = LowerLimits { no_subgroups: true, ..Default::default() };
    let gpu = suite_gpu(Gpu::with_lower_limits(None, lower).unwrap());
    assert!(!gpu.has_subgroups());
    gpu.set_variant_cache(None);
    let mut rng = Rng::new(21);
    let (rows, c) = (37, 52);
    let f32s = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
    let (inp, w, b, dout) =
        (rng.normals(rows * c, 1.0), rng.normals(c, 1.0), rng.normals(c, 1.0), rng.normals(rows * c, 1.0));
    let up = |x: &[f64], shape: &[usize]| gpu.upload(shape, &f32s(x)).unwrap();
    let (t_inp, t_w, t_b, t_dout) = (up(&inp, &[rows, c]), up(&w, &[c]), up(&b, &[c]), up(&dout, &[rows, c]));
    let z = |shape: &[usize]| gpu.upload(shape, &vec![0.0; shape.iter().product()]).unwrap();
    let (out, mean, rstd, dinp, dw, db) = (z(&[rows, c]), z(&[rows]), z(&[rows]), z(&[rows, c]), z(&[c]), z(&[c]));
    let mut rec = Recorder::new(&gpu);
    let sg = LayernormVariant::SubgroupPerRow;
    forward_with_variant(&mut rec, sg, &out, &mean, &rstd, &t_inp, &t_w, &t_b, EPS as f32).unwrap();
    backward_with_variant(&mut rec, sg, &dinp, &dw, &db, &t_dout, &t_inp, &t_w, &mean, &rstd).unwrap();
    rec.submit();
    let got = |t| gpu.download(t).unwrap().iter().map(|&v| v as f64).collect::<Vec<f64>>();
    assert_close(
        "forced subgroup-per-row out",
        &got(&out),
        &reference::layernorm_forward(&inp, &w, &b, c, EPS).0,
        1e-5,
        1e-5,
    );
    let want_dinp = reference::layernorm_backward(&dout, &inp, &w, c, EPS).0;
    assert_close("forced subgroup-per-row dinp", &got(&dinp), &want_dinp, 1e-5, 1e-4);

    assert_ne!(variant(&gpu).unwrap(), sg);
    let choices = gpu.variant_choices();
    let (_, choice) = choices.iter().find(|(family, _)| family == "layernorm").unwrap();
    assert!(
        choice.figures.iter().any(|(name, rate)| name == "subgroup-per-row" && rate.is_none()),
        "the subgroup variant should have no figure without subgroups: {:?}",
        choice.figures
    );
}

#[test]
fn the_texture_variant_reads_rows_past_the_texture_size_from_the_buffers() {
    // A device whose textures are at most 32 texels on a side: 48 rows do not fit in one, so
    // the texture variant runs them as an invocation per row from the storage buffers; 24 rows
    // of 128 channels (32 texels) do, and go through the textures. Both match the reference,
    // the forward fused with its residual add as well.
    let lower = LowerLimits { texture_dimension: Some(32), ..Default::default() };
    let gpu = suite_gpu(Gpu::with_lower_limits(None, lower).unwrap());
    let mut rng = Rng::new(23);
    let f32s = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
    let tex = LayernormVariant::Texture;
    for (rows, c) in [(48, 64), (24, 128)] {
        let (a, add) = (rng.normals(rows * c, 1.0), rng.normals(rows * c, 1.0));
        let (w, b, dout) = (rng.normals(c, 1.0), rng.normals(c, 1.0), rng.normals(rows * c, 1.0));
        let up = |x: &[f64], shape: &[usize]| gpu.upload(shape, &f32s(x)).unwrap();
        let (t_a, t_add, t_w, t_b, t_dout) =
            (up(&a, &[rows, c]), up(&add, &[rows, c]), up(&w, &[c]), up(&b, &[c]), up(&dout, &[rows, c]));
        let z = |shape: &[usize]| gpu.upload(shape, &vec![0.0; shape.iter().product()]).unwrap();
        let (residual, out, mean, rstd) = (z(&[rows, c]), z(&[rows, c]), z(&[rows]), z(&[rows]));
        let (dinp, dw, db) = (z(&[rows, c]), z(&[c]), z(&[c]));
        let mut rec = Recorder::new(&gpu);
        residual_forward_with_variant(
            &mut rec, tex, &residual, &out, &mean, &rstd, &t_a, &t_add, &t_w, &t_b, EPS as f32,
        )
        .unwrap();
        backward_with_variant(&mut rec, tex, &dinp, &dw, &db, &t_dout, &residual, &t_w, &mean, &rstd).unwrap();
        rec.submit();
        let got = |t| gpu.download(t).unwrap().iter().map(|&v| v as f64).collect::<Vec<f64>>();
        let sum: Vec<f64> = a.iter().zip(&add).map(|(x, y)| x + y).collect();
        let what = format!("texture layernorm {rows}x{c} on 32-texel textures");
        assert_close(&format!("{what} residual"), &got(&residual), &sum, 1e-6, 1e-6);
        let want_out = reference::layernorm_forward(&sum, &w, &b, c, EPS).0;
        assert_close(&format!("{what} out"), &got(&out), &want_out, 1e-5, 1e-5);
        let want_dinp = reference::layernorm_backward(&dout, &sum, &w, c, EPS).0;
        assert_close(&format!("{what} dinp"), &got(&dinp), &want_dinp, 1e-5, 1e-4);
    }
}
