use crate::common::*;
use ppo_wgpu::gpu::Recorder;
use ppo_wgpu::kernels::layernorm::{VARIANTS, backward_with_variant, forward_with_variant};
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
        let prior = rng.normals(rows * c, 1.0); // dinp accumulates
        let (out, mean, rstd) = (zeros(&[rows, c]), zeros(&[rows]), zeros(&[rows]));
        let (dinp, dw, db) = (upload(&prior, &[rows, c]), zeros(&[c]), zeros(&[c]));
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

        let g_inp: Vec<f64> = download(&dinp).iter().zip(&prior).map(|(g, p)| g - p).collect();
        let (g_w, g_b) = (download(&dw), download(&db));
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
