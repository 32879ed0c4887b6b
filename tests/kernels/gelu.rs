use crate::common::*;
use ppo_wgpu::gpu::Recorder;
use ppo_wgpu::kernels::gelu::{gelu_backward, gelu_forward};
use ppo_wgpu::reference;

// f32 tanh and polynomial: a few ulps of the output.
const ATOL: f64 = 1e-6;
const RTOL: f64 = 1e-5;

#[test]
fn gelu_forward_and_backward_match_reference() {
    let mut rng = Rng::new(1);
    // 37·53 is not a multiple of the workgroup; 64·3072 is a GPT-2-small MLP activation slab.
    for n in [37 * 53, 64 * 3072] {
        let x = rng.normals(n, 3.0);
        let dout = rng.normals(n, 1.0);
        let (tx, tdout) = (upload(&x, &[n]), upload(&dout, &[n]));
        let (out, dinp) = (zeros(&[n]), zeros(&[n]));
        let gpu = gpu();
        let mut rec = Recorder::new(&gpu);
        gelu_forward(&mut rec, &out, &tx).unwrap();
        gelu_backward(&mut rec, &dinp, &tx, &tdout).unwrap();
        rec.submit();
        assert_close(&format!("gelu_forward n={n}"), &download(&out), &reference::gelu_forward(&x), ATOL, RTOL);
        let dinp = download(&dinp);
        assert_close(&format!("gelu_backward n={n}"), &dinp, &reference::gelu_backward(&x, &dout), ATOL, RTOL);
        check_fd("gelu_backward", &dinp, |x| dot(&dout, &reference::gelu_forward(x)), &x, &mut rng, 1e-4, 1e-3);
    }
}

#[test]
fn gelu_is_finite_for_large_inputs() {
    let x = vec![-1e4, -50.0, -10.0, 0.0, 10.0, 50.0, 1e4];
    let n = x.len();
    let (tx, out) = (upload(&x, &[n]), zeros(&[n]));
    let gpu = gpu();
    let mut rec = Recorder::new(&gpu);
    gelu_forward(&mut rec, &out, &tx).unwrap();
    rec.submit();
    assert_close("gelu_forward extremes", &download(&out), &reference::gelu_forward(&x), 1e-6, 1e-6);
}
