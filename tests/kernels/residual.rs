use crate::common::*;
use ppo_wgpu::gpu::Recorder;
use ppo_wgpu::kernels::residual::{accumulate, residual_forward};

#[test]
fn residual_forward_and_accumulate_match_reference() {
    let mut rng = Rng::new(2);
    for n in [37 * 53, 64 * 768] {
        let (a, b) = (rng.normals(n, 1.0), rng.normals(n, 1.0));
        let (ta, tb, out) = (upload(&a, &[n]), upload(&b, &[n]), zeros(&[n]));
        let acc = upload(&a, &[n]);
        let gpu = gpu();
        let mut rec = Recorder::new(&gpu);
        residual_forward(&mut rec, &out, &ta, &tb).unwrap();
        accumulate(&mut rec, &acc, &tb).unwrap();
        accumulate(&mut rec, &acc, &tb).unwrap();
        rec.submit();
        let sum: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        let sum2: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + 2.0 * y).collect();
        // One or two f32 roundings.
        assert_close(&format!("residual_forward n={n}"), &download(&out), &sum, 1e-6, 1e-6);
        assert_close(&format!("accumulate n={n}"), &download(&acc), &sum2, 1e-6, 1e-6);
    }
}
