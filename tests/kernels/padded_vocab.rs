use crate::common::*;
use ppo_wgpu::gpu::Recorder;
use ppo_wgpu::kernels::cross_entropy::{self, IGNORE, RowVariant};
use ppo_wgpu::kernels::padded_vocab::{MASKED_LOGIT, MIN_TEMPERATURE, check_temperature, mask_padded_logits};
use ppo_wgpu::kernels::ppo::logprob_entropy_with_variant;
use ppo_wgpu::reference;

#[test]
fn mask_padded_logits_matches_reference() {
    let mut rng = Rng::new(90);
    // (rows, V, Vp): a small ragged vocabulary, GPT-2's (47 padded columns), an aligned one
    // (nothing to do), and one padded column.
    for (rows, v, vp) in [(37, 23, 64), (3, 50257, 50304), (5, 128, 128), (11, 127, 128)] {
        let logits = rng.normals(rows * vp, 2.0);
        let t = upload(&logits, &[rows, vp]);
        let gpu = gpu();
        let mut rec = Recorder::new(&gpu);
        mask_padded_logits(&mut rec, &t, v).unwrap();
        rec.submit();
        let want = reference::mask_padded_logits(&logits, v, vp);
        // The real columns are left as they were and the padded ones hold the mask, exactly.
        let want32: Vec<f64> = want.iter().map(|&x| x as f32 as f64).collect();
        assert_close(&format!("mask_padded_logits rows={rows} V={v} Vp={vp}"), &download(&t), &want32, 0.0, 0.0);
    }
    let t = upload(&[0.0; 8], &[2, 4]);
    let err = mask_padded_logits(&mut Recorder::new(&gpu()), &t, 5).unwrap_err().to_string();
    assert!(err.contains("5 real columns in rows of 4"), "{err}");
}

/// Cross-entropy (forward, backward, log-softmax) and the log-prob/entropy kernel on masked
/// logits [rows, Vp] give the reference's values over the V real columns, at temperatures from
/// 0.5 to 10⁴, and exactly 0 gradient in the padded columns; at MIN_TEMPERATURE everything
/// stays finite.
#[test]
fn softmax_kernels_ignore_the_padded_columns() {
    let mut rng = Rng::new(91);
    let (rows, v, vp) = (24, 53, 64);
    let real = rng.normals(rows * v, 2.0);
    let padded: Vec<f64> = real
        .chunks(v)
        .flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(MASKED_LOGIT as f64, vp - v)))
        .collect();
    let targets: Vec<u32> = (0..rows).map(|r| if r % 7 == 6 { IGNORE } else { rng.below(v as u32) }).collect();
    let dloss = rng.normals(rows, 1.0);
    // The sequence's tokens for the log-prob/entropy kernel: one sequence of `rows` positions,
    // whose row r predicts token r + 1.
    let tokens: Vec<u32> = (0..rows).map(|_| rng.below(v as u32)).collect();
    let gpu = gpu();
    let real_columns = |x: &[f64]| -> Vec<f64> { x.chunks(vp).flat_map(|row| row[..v].to_vec()).collect() };
    for temperature in [0.5, 1.0, 1e4, MIN_TEMPERATURE as f64] {
        let z: Vec<f64> = real.iter().map(|l| l / temperature).collect();
        for variant in [RowVariant::WorkgroupPerRow, RowVariant::InvocationPerRow] {
            let what = format!("{variant:?} τ={temperature:e}");
            let logits = upload(&padded, &[rows, vp]);
            let (t_targets, t_dloss) = (gpu.upload_u32(&[rows], &targets).unwrap(), upload(&dloss, &[rows]));
            let (loss, lse, logp) = (zeros(&[rows]), zeros(&[rows]), zeros(&[rows, vp]));
            let (lp, entropy) = (zeros(&[rows]), zeros(&[rows]));
            let tau = temperature as f32;
            let mut rec = Recorder::new(&gpu);
            cross_entropy::forward_with_variant(&mut rec, variant, &loss, &lse, &logits, &t_targets, tau).unwrap();
            cross_entropy::log_softmax_with_variant(&mut rec, variant, &logp, &logits, tau).unwrap();
            let t_tokens = gpu.upload_u32(&[rows], &tokens).unwrap();
            logprob_entropy_with_variant(&mut rec, variant, &lp, &entropy, &logits, &t_tokens, rows, tau).unwrap();
            cross_entropy::backward_with_variant(&mut rec, variant, &logits, &t_dloss, &lse, &t_targets, tau).unwrap();
            rec.submit();
            let (loss, lse, logp, dlogits) = (download(&loss), download(&lse), download(&logp), download(&logits));
            let (lp, entropy) = (download(&lp), download(&entropy));
            let outputs = [
                ("loss", &loss),
                ("lse", &lse),
                ("logp", &logp),
                ("dlogits", &dlogits),
                ("lp", &lp),
                ("entropy", &entropy),
            ];
            for (name, x) in outputs {
                assert!(x.iter().all(|g| g.is_finite()), "{what}: {name} is not finite");
            }
            assert!(dlogits.chunks(vp).all(|row| row[v..].iter().all(|&g| g == 0.0)), "{what}: padded gradient");
            if tau == MIN_TEMPERATURE {
                continue; // z ~ 10⁶: f32 keeps the values finite, not 5 digits of them
            }
            assert_close(
                &format!("{what} loss"),
                &loss,
                &reference::cross_entropy_forward(&z, &targets, v),
                1e-5,
                1e-5,
            );
            assert_close(&format!("{what} lse"), &lse, &reference::logsumexp_rows(&z, v), 1e-5, 1e-5);
            assert_close(&format!("{what} logp"), &real_columns(&logp), &reference::log_softmax(&z, v), 1e-5, 1e-5);
            let want_grad: Vec<f64> =
                reference::cross_entropy_backward(&z, &targets, &dloss, v).iter().map(|g| g / temperature).collect();
            assert_close(&format!("{what} dlogits"), &real_columns(&dlogits), &want_grad, 1e-6, 1e-4);
            // logprob_entropy writes position r + 1 from the logits of row r (which predict it).
            let ref_logp = reference::log_softmax(&z, v);
            let rows_logp: Vec<&[f64]> = ref_logp.chunks(v).take(rows - 1).collect();
            let want_lp: Vec<f64> = rows_logp.iter().enumerate().map(|(r, lp)| lp[tokens[r + 1] as usize]).collect();
            let want_h: Vec<f64> = rows_logp.iter().map(|lp| -lp.iter().map(|l| l.exp() * l).sum::<f64>()).collect();
            assert_close(&format!("{what} log-probs"), &lp[1..], &want_lp, 1e-5, 1e-5);
            assert_close(&format!("{what} entropy"), &entropy[1..], &want_h, 1e-5, 1e-5);
        }
    }
    for (tau, ok) in [(1.0, true), (MIN_TEMPERATURE, true), (1e-7, false), (0.0, false), (f32::NAN, false)] {
        assert_eq!(check_temperature(tau, "τ").is_ok(), ok, "check_temperature({tau})");
    }
}
