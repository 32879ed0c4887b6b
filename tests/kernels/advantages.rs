use crate::common::*;
use ppo_wgpu::gpu::Recorder;
use ppo_wgpu::kernels::gae::{GaeKernel, gae};
use ppo_wgpu::kernels::rewards::{KlEstimator, kl_rewards, masked_whiten};
use ppo_wgpu::reference;

/// Response masks over [B, T]: row 0 a response in the middle (prompt before, padding after),
/// row 1 to the end, row 2 nothing, row 3 a single token, the rest random contiguous spans.
fn response_mask(b: usize, t: usize, rng: &mut Rng) -> Vec<f64> {
    let mut mask = vec![0.0; b * t];
    for row in 0..b {
        let (start, end) = match row {
            0 => (t / 3, t - t / 4),
            1 => (t / 2, t),
            2 => (0, 0),
            3 => (t - 1, t),
            _ => {
                let s = rng.below(t as u32) as usize;
                (s, s + 1 + rng.below((t - s) as u32) as usize)
            }
        };
        mask[row * t + start..row * t + end.max(start)].iter_mut().for_each(|m| *m = 1.0);
    }
    mask
}

fn check_gae(b: usize, t: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let (rewards, values) = (rng.normals(b * t, 1.0), rng.normals(b * t, 1.0));
    let mask = response_mask(b, t, &mut rng);
    let (gamma, lam) = (0.99, 0.95);
    let (want_adv, want_ret) = reference::gae(&rewards, &values, &mask, t, gamma, lam);
    for kernel in [GaeKernel::PerSequence, GaeKernel::Scan] {
        let (adv, ret) = (zeros(&[b, t]), zeros(&[b, t]));
        let gpu = gpu();
        let mut rec = Recorder::new(&gpu);
        let (tr, tv, tm) = (upload(&rewards, &[b, t]), upload(&values, &[b, t]), upload(&mask, &[b, t]));
        gae(&mut rec, kernel, &adv, &ret, &tr, &tv, &tm, gamma as f32, lam as f32).unwrap();
        rec.submit();
        // A sum of up to T discounted terms in f32; the scan also reassociates it.
        let atol = 1e-5 * (t as f64).sqrt() * 4.0;
        let what = format!("GAE {kernel:?} B={b} T={t}");
        assert_close(&format!("{what} advantages"), &download(&adv), &want_adv, atol, 1e-4);
        assert_close(&format!("{what} returns"), &download(&ret), &want_ret, atol, 1e-4);
    }
}

#[test]
fn gae_short_sequences() {
    check_gae(5, 1, 80);
    check_gae(5, 2, 81);
    check_gae(9, 37, 82);
}

#[test]
fn gae_long_sequences() {
    check_gae(6, 4096, 83);
    check_gae(4, 1000, 84); // not a multiple of the 256 chunks
}

#[test]
fn gae_with_gamma_one_sums_rewards_minus_the_value() {
    // γ = λ = 1 (TRL's γ): A_t = Σ_{s≥t} r_s − v_t over the response.
    let (b, t) = (1, 5);
    let rewards = [0.0, 1.0, 2.0, 3.0, 0.0];
    let values = [9.0, 0.5, 0.25, 0.125, 9.0];
    let mask = [0.0, 1.0, 1.0, 1.0, 0.0];
    let (adv, ret) = (zeros(&[b, t]), zeros(&[b, t]));
    let gpu = gpu();
    let mut rec = Recorder::new(&gpu);
    let (tr, tv, tm) = (upload(&rewards, &[b, t]), upload(&values, &[b, t]), upload(&mask, &[b, t]));
    gae(&mut rec, GaeKernel::Scan, &adv, &ret, &tr, &tv, &tm, 1.0, 1.0).unwrap();
    rec.submit();
    assert_close("A", &download(&adv), &[0.0, 6.0 - 0.5, 5.0 - 0.25, 3.0 - 0.125, 0.0], 1e-6, 1e-6);
    assert_close("R", &download(&ret), &[0.0, 6.0, 5.0, 3.0, 0.0], 1e-6, 1e-6);
}

#[test]
fn kl_rewards_and_whitening_match_reference() {
    let mut rng = Rng::new(85);
    let (b, t) = (7, 33);
    let mask = response_mask(b, t, &mut rng);
    let logp_old: Vec<f64> = rng.normals(b * t, 1.0).iter().map(|x| -x.abs() - 0.1).collect();
    let logp_ref: Vec<f64> = logp_old.iter().map(|x| ((x + 0.3 * rng.normal()) as f32) as f64).collect();
    let scores = rng.normals(b, 2.0);
    let gpu = gpu();
    for (estimator, k3) in [(KlEstimator::K1, false), (KlEstimator::K3, true)] {
        let (kl, rewards) = (zeros(&[b, t]), zeros(&[b, t]));
        let mut rec = Recorder::new(&gpu);
        let (to, tr, tm, ts) =
            (upload(&logp_old, &[b, t]), upload(&logp_ref, &[b, t]), upload(&mask, &[b, t]), upload(&scores, &[b]));
        kl_rewards(&mut rec, &kl, &rewards, &to, &tr, &tm, &ts, 0.05, estimator).unwrap();
        rec.submit();
        let (want_kl, want_rewards) = reference::kl_rewards(&logp_old, &logp_ref, &mask, &scores, t, 0.05, k3);
        assert_close(&format!("{estimator:?} kl"), &download(&kl), &want_kl, 1e-6, 1e-5);
        assert_close(&format!("{estimator:?} rewards"), &download(&rewards), &want_rewards, 1e-6, 1e-5);
        if k3 {
            assert!(download(&kl).iter().all(|&k| k >= 0.0), "k3 is never negative");
        }
    }
    // Whitening, with a large mean to exercise the two-pass variance.
    let x: Vec<f64> = rng.normals(b * t, 3.0).iter().map(|v| v + 100.0).collect();
    for shift_mean in [true, false] {
        let (tx, moments) = (upload(&x, &[b, t]), zeros(&[3]));
        let mut rec = Recorder::new(&gpu);
        masked_whiten(&mut rec, &tx, &upload(&mask, &[b, t]), &moments, shift_mean).unwrap();
        rec.submit();
        let want = reference::masked_whiten(&x, &mask, shift_mean);
        assert_close(&format!("whiten shift_mean={shift_mean}"), &download(&tx), &want, 1e-4, 1e-4);
        // The moments it reports are those of x before whitening: mean, unbiased var, count.
        let n: f64 = mask.iter().sum();
        let mean = x.iter().zip(&mask).map(|(x, m)| x * m).sum::<f64>() / n;
        let var = x.iter().zip(&mask).map(|(x, m)| m * (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        assert_close("whitening moments", &download(&moments), &[mean, var, n], 1e-4, 1e-4);
        let w = download(&tx);
        if shift_mean {
            let n: f64 = mask.iter().sum();
            let mean = w.iter().zip(&mask).map(|(w, m)| w * m).sum::<f64>() / n;
            let var = w.iter().zip(&mask).map(|(w, m)| m * (w - mean).powi(2)).sum::<f64>() / (n - 1.0);
            assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4, "whitened: mean {mean}, var {var}");
        }
    }
}

/// GRPO's and RLOO's group advantages: RLOO's returns summed on the GPU from per-token rewards,
/// then each baseline against the CPU reference, over ragged masks, groups of 2 and 5, and a
/// group whose returns all tie (GRPO gives it zero advantage, not a division by zero).
#[test]
fn group_advantages_match_reference() {
    use ppo_wgpu::kernels::group_advantages::{GroupBaseline, group_advantages, sequence_returns};
    let gpu = gpu();
    let mut rng = Rng::new(86);
    for (group, groups, t) in [(2, 3, 5), (5, 4, 33)] {
        let b = group * groups;
        let rewards = rng.normals(b * t, 1.0);
        let mask = response_mask(b, t, &mut rng);
        let mut rec = Recorder::new(&gpu);
        let (returns, tm) = (zeros(&[b]), upload(&mask, &[b, t]));
        sequence_returns(&mut rec, &returns, &upload(&rewards, &[b, t])).unwrap();
        rec.submit();
        let want: Vec<f64> = rewards.chunks(t).map(|row| row.iter().sum()).collect();
        assert_close(&format!("sequence returns B={b} T={t}"), &download(&returns), &want, 1e-5, 1e-5);

        // Integer-valued returns (a verifiable reward), the last group tied.
        let mut scores: Vec<f64> = (0..b).map(|_| rng.below(3) as f64).collect();
        scores[b - group..].iter_mut().for_each(|s| *s = 1.0);
        for (baseline, scaled, loo) in [
            (GroupBaseline::MeanStd, true, false),
            (GroupBaseline::Mean, false, false),
            (GroupBaseline::LeaveOneOut, false, true),
        ] {
            let adv = zeros(&[b, t]);
            let mut rec = Recorder::new(&gpu);
            group_advantages(&mut rec, &adv, &upload(&scores, &[b]), &tm, group, baseline).unwrap();
            rec.submit();
            let per_row = reference::group_advantages(&scores, group, scaled, loo);
            let want: Vec<f64> = (0..b * t).map(|i| mask[i] * per_row[i / t]).collect();
            let got = download(&adv);
            assert_close(&format!("{baseline:?} advantages G={group} B={b}"), &got, &want, 1e-5, 1e-5);
            assert!(got[(b - group) * t..].iter().all(|&a| a == 0.0), "{baseline:?}: a tied group has no advantage");
        }
    }
}

#[test]
fn group_advantages_reject_a_batch_of_partial_groups() {
    use ppo_wgpu::kernels::group_advantages::{GroupBaseline, group_advantages};
    let gpu = gpu();
    let (adv, returns, mask) = (zeros(&[6, 4]), zeros(&[6]), zeros(&[6, 4]));
    let mut rec = Recorder::new(&gpu);
    for group in [4, 1] {
        let err = group_advantages(&mut rec, &adv, &returns, &mask, group, GroupBaseline::MeanStd).unwrap_err();
        assert!(err.to_string().contains("groups of"), "{err}");
    }
}
