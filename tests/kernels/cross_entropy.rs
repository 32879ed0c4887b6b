use crate::common::*;
use crate::suite_gpu::suite_gpu;
use ppo_wgpu::gpu::Recorder;
use ppo_wgpu::kernels::cross_entropy::{
    IGNORE, RowVariant, VARIANTS, backward_with_variant, cross_entropy_backward, cross_entropy_forward,
    forward_with_variant, log_softmax_forward, log_softmax_with_variant,
};
use ppo_wgpu::reference;

/// Checks each variant at temperature τ against the references applied to logits/τ.
fn run(rows: usize, v: usize, logit_std: f64, temperature: f64, rng: &mut Rng, check_fd_too: bool) {
    for (variant, _) in VARIANTS {
        run_variant(variant, rows, v, logit_std, temperature, rng, check_fd_too);
    }
}

fn run_variant(
    variant: RowVariant,
    rows: usize,
    v: usize,
    logit_std: f64,
    temperature: f64,
    rng: &mut Rng,
    check_fd_too: bool,
) {
    let mut logits = rng.normals(rows * v, logit_std);
    // A very negative and a very positive logit, to exercise the online max.
    logits[0] = -1e4;
    logits[v / 2] = 60.0;
    let targets: Vec<u32> = (0..rows).map(|r| if r % 5 == 3 { IGNORE } else { rng.below(v as u32) }).collect();
    let dloss: Vec<f64> = (0..rows).map(|_| rng.uniform() as f32 as f64).collect();
    let gpu = gpu();
    let t_logits = upload(&logits, &[rows, v]);
    let t_targets = gpu.upload_u32(&[rows], &targets).unwrap();
    let (loss, lse, logp) = (zeros(&[rows]), zeros(&[rows]), zeros(&[rows, v]));
    let mut rec = Recorder::new(&gpu);
    let tau = temperature as f32;
    forward_with_variant(&mut rec, variant, &loss, &lse, &t_logits, &t_targets, tau).unwrap();
    log_softmax_with_variant(&mut rec, variant, &logp, &t_logits, tau).unwrap();
    backward_with_variant(&mut rec, variant, &t_logits, &upload(&dloss, &[rows]), &lse, &t_targets, tau).unwrap();
    rec.submit();

    let what = format!("cross-entropy {variant:?} N={rows} V={v} τ={temperature}");
    let z: Vec<f64> = logits.iter().map(|l| l / temperature).collect();
    // The sum of V exponentials in f32: relative error ~ε·log V on lse, and on logp.
    let want_loss = reference::cross_entropy_forward(&z, &targets, v);
    assert_close(&format!("{what} loss"), &download(&loss), &want_loss, 1e-4, 1e-5);
    assert_close(&format!("{what} lse"), &download(&lse), &reference::logsumexp_rows(&z, v), 1e-4, 1e-5);
    assert_close(&format!("{what} log_softmax"), &download(&logp), &reference::log_softmax(&z, v), 1e-4, 1e-5);
    let grad = download(&t_logits);
    // ∂/∂logits = ∂/∂z · 1/τ.
    let want_grad: Vec<f64> =
        reference::cross_entropy_backward(&z, &targets, &dloss, v).iter().map(|g| g / temperature).collect();
    assert_close(&format!("{what} dlogits"), &grad, &want_grad, 1e-6, 1e-4);
    if check_fd_too {
        let loss = |l: &[f64]| {
            let z: Vec<f64> = l.iter().map(|l| l / temperature).collect();
            dot(&dloss, &reference::cross_entropy_forward(&z, &targets, v))
        };
        check_fd(&format!("{what} dlogits"), &grad, loss, &logits, rng, 1e-5, 1e-3);
    }
}

#[test]
fn cross_entropy_unaligned_and_tiny_vocab() {
    let mut rng = Rng::new(50);
    run(37, 53, 2.0, 1.0, &mut rng, true);
    // V a multiple of 4 (the vec4 walks) on a ragged number of rows, and a tensor shorter than
    // one vec4 (its vec4 bindings get a stand-in).
    run(37, 52, 2.0, 1.0, &mut rng, true);
    run(1, 3, 2.0, 1.0, &mut rng, true);
    run(64, 512, 3.0, 0.7, &mut rng, true);
}

#[test]
fn cross_entropy_gpt2_vocab() {
    // GPT-2's vocabulary runs a workgroup per row in either variant; SERIAL_MAX_COLUMNS is the
    // longest row an invocation walks alone (past llvmpipe's loop limit it would stop short).
    let mut rng = Rng::new(51);
    run(8, 50257, 3.0, 1.0, &mut rng, false);
    run(3, ppo_wgpu::kernels::cross_entropy::SERIAL_MAX_COLUMNS, 3.0, 1.0, &mut rng, false);
}

#[test]
fn cross_entropy_splits_logits_larger_than_the_binding_limit() {
    // 150 rows of 200 logits against 16384-float bindings: three row slices (64, 64, 22), as
    // GPT-2's [B·T, 50257] logits need on adapters with 128 MiB bindings.
    let gpu = suite_gpu(ppo_wgpu::gpu::Gpu::with_binding_limit(None, Some(64 * 1024)).unwrap());
    let mut rng = Rng::new(52);
    let (rows, v) = (150, 200);
    let logits = rng.normals(rows * v, 2.0);
    let targets: Vec<u32> = (0..rows).map(|_| rng.below(v as u32)).collect();
    let dloss = vec![0.5; rows];
    let up = |x: &[f64], shape: &[usize]| gpu.upload(shape, &to_f32(x)).unwrap();
    let (t_logits, t_targets) = (up(&logits, &[rows, v]), gpu.upload_u32(&[rows], &targets).unwrap());
    let (loss, lse, logp) =
        (up(&vec![0.0; rows], &[rows]), up(&vec![0.0; rows], &[rows]), up(&vec![0.0; rows * v], &[rows, v]));
    let mut rec = Recorder::new(&gpu);
    cross_entropy_forward(&mut rec, &loss, &lse, &t_logits, &t_targets, 1.0).unwrap();
    log_softmax_forward(&mut rec, &logp, &t_logits, 1.0).unwrap();
    cross_entropy_backward(&mut rec, &t_logits, &up(&dloss, &[rows]), &lse, &t_targets, 1.0).unwrap();
    assert_eq!(rec.dispatch_count(), 9, "three row slices for each of the three kernels");
    rec.submit();
    let got = |t| gpu.download(t).unwrap().into_iter().map(f64::from).collect::<Vec<_>>();
    assert_close(
        "split cross-entropy loss",
        &got(&loss),
        &reference::cross_entropy_forward(&logits, &targets, v),
        1e-4,
        1e-5,
    );
    assert_close("split log_softmax", &got(&logp), &reference::log_softmax(&logits, v), 1e-4, 1e-5);
    let want = reference::cross_entropy_backward(&logits, &targets, &dloss, v);
    assert_close("split dlogits", &got(&t_logits), &want, 1e-6, 1e-4);
}
