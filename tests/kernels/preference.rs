use crate::common::*;
use ppo_wgpu::gpu::{DType, Recorder};
use ppo_wgpu::kernels::preference::bradley_terry;
use ppo_wgpu::reference;

#[test]
fn bradley_terry_matches_the_reference_and_finite_differences() {
    let gpu = gpu();
    let mut rng = Rng::new(330);
    let (n, t) = (7, 9);
    // Rewards up to ±12 so that both tails of the softplus are exercised.
    let rewards = rng.normals(2 * n * t, 4.0);
    // Ragged masks: left padding, right padding, a one-token row, and a row with none.
    let mask: Vec<u32> = (0..2 * n)
        .flat_map(|row| {
            let (lo, hi) = match row {
                0 => (3, t),
                1 => (0, 4),
                2 => (5, 6),
                3 => (0, 0),
                _ => (row % 3, t - row % 2),
            };
            (0..t).map(move |j| (lo <= j && j < hi) as u32)
        })
        .collect();
    let (want_loss, want_grad) = reference::bradley_terry(&rewards, &mask, t);
    let (drewards, stats) = (gpu.tensor(&[2 * n, t], DType::F32).unwrap(), zeros(&[n, 2]));
    let mut rec = Recorder::new(&gpu);
    let mask_t = gpu.upload_u32(&[2 * n, t], &mask).unwrap();
    bradley_terry(&mut rec, &drewards, &stats, &upload(&rewards, &[2 * n, t]), &mask_t).unwrap();
    rec.submit();
    let grad = download(&drewards);
    assert_close("Bradley–Terry gradient", &grad, &want_grad, 1e-7, 1e-5);
    let stats = download(&stats);
    let loss: f64 = (0..n).map(|i| stats[2 * i]).sum::<f64>() / n as f64;
    assert_close("Bradley–Terry loss", &[loss], &[want_loss], 1e-6, 1e-5);
    let r32 = to_f32(&rewards);
    for i in 0..n {
        let (c, r) =
            ((0..t).rev().find(|&j| mask[2 * i * t + j] != 0), (0..t).rev().find(|&j| mask[(2 * i + 1) * t + j] != 0));
        let (c, r) = (2 * i * t + c.unwrap_or(0), (2 * i + 1) * t + r.unwrap_or(0));
        assert_eq!(stats[2 * i + 1], (r32[c] > r32[r]) as u8 as f64, "pair {i}: correct flag");
    }
    check_fd("Bradley–Terry", &want_grad, |x| reference::bradley_terry(x, &mask, t).0, &rewards, &mut rng, 1e-7, 1e-4);
}
