//! `update --dump-grads` against PyTorch autograd (tests/fixtures/make_ppo_fixture.py): a
//! policy with a value head, a batch with left and right padding, ratios inside and outside the
//! clip range and value clipping active; every parameter's gradient on the first minibatch and
//! the loss statistics.

use crate::common::*;
use crate::suite_gpu::{suite_env, suite_gpu};
use ppo_wgpu::gpu::{Gpu, Recorder};
use ppo_wgpu::kernels::adamw::AdamW;
use ppo_wgpu::kernels::ppo::PpoLossConfig;
use ppo_wgpu::model::checkpoint::saved_name;
use ppo_wgpu::model::optimizer::Optimizer;
use ppo_wgpu::model::{self};
use ppo_wgpu::ppo::algo::Algo;
use ppo_wgpu::ppo::batch::{PpoBatch, RolloutBatch};
use ppo_wgpu::ppo::update::{UpdateOptions, ppo_update};
use safetensors::SafeTensors;
use std::path::Path;

#[test]
fn update_gradients_match_pytorch_autograd() {
    check_update_gradients(1);
}

/// Two micro-batches per minibatch add up to the same gradient.
#[test]
fn accumulated_gradients_match_pytorch_autograd() {
    check_update_gradients(2);
}

fn check_update_gradients(grad_accum: usize) {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let policy = model::load(&gpu, &Path::new(FIXTURES).join("ppo-tiny")).unwrap();
    let batch = RolloutBatch::load(&Path::new(FIXTURES).join("ppo-batch.safetensors")).unwrap();
    let batch = PpoBatch::upload(&gpu, &batch).unwrap();
    let bytes = std::fs::read(Path::new(FIXTURES).join("ppo-expected.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let read = |name: &str| read_f32(&expected, name);

    let mut rec = Recorder::new(&gpu);
    let mut opt = Optimizer::new(&policy, &mut rec, AdamW::default(), 1.0).unwrap();
    rec.submit();
    let loss = PpoLossConfig { temperature: 0.9, ent_coef: 0.01, ..Default::default() };
    let opts = UpdateOptions { algo: Algo::Ppo, epochs: 1, minibatches: 2, lr: 1e-5, loss, grad_accum, seed: None };
    let (_, dump) = ppo_update(&policy, &mut opt, &batch, &opts, true).unwrap();
    let dump = dump.unwrap();

    // Scalars: float32 against float64, the loss being a mean over ~20 tokens.
    for (k, name) in ["loss", "pg_loss", "vf_loss", "entropy", "approx_kl", "clipfrac"].iter().enumerate() {
        let stat = ppo_wgpu::kernels::ppo::STAT_NAMES.iter().position(|n| n == name).unwrap();
        let (got, want) = (dump.stats[stat] as f64, read(name)[0] as f64);
        assert!(
            (got - want).abs() <= 1e-5 + 1e-4 * want.abs(),
            "{name} (#{k}, grad_accum {grad_accum}): {got} vs PyTorch {want}"
        );
    }
    // Every gradient, relative to the tensor's largest entry: 1e-3 is the bar.
    let mut report = Vec::new();
    for (name, _, grad) in &dump.grads {
        let err = tensor_error(grad, &read(&saved_name(name)));
        report.push(format!("{name}: {err:.2e}"));
        assert!(
            err < 1e-3,
            "gradient of {name}: relative error {err:.2e} against PyTorch (tolerance 1e-3)\n{}",
            report.join("\n")
        );
    }
    eprintln!("PPO gradients, max |Δ| / max |g| per tensor:\n  {}", report.join("\n  "));
}

/// `update --algo grpo|rloo --dump-grads` against PyTorch autograd
/// (tests/fixtures/make_grpo_fixture.py): a batch without values or returns, with padding,
/// clipping active and one row of zero advantages; GRPO's loss (per-sequence means, the k3 KL
/// term with β = 0.1) and RLOO's (a token mean, no KL term). The policy directory has a value
/// head, which both drop.
#[test]
fn critic_free_update_gradients_match_pytorch_autograd() {
    let dir = scratch_dir("critic-free-fixture");
    let (model, batch) = (format!("{FIXTURES}/ppo-tiny"), format!("{FIXTURES}/grpo-batch.safetensors"));
    for (algo, extra) in [("grpo", &["--beta", "0.1"][..]), ("rloo", &[][..])] {
        let (out, dump) = (dir.join(algo), dir.join(format!("{algo}-grads.safetensors")));
        let mut args = vec!["update", "--algo", algo, "--model", &model, "--batch", &batch];
        args.extend(["--out", out.to_str().unwrap(), "--dump-grads", dump.to_str().unwrap()]);
        args.extend(["--epochs", "1", "--minibatches", "1", "--temperature", "0.9"]);
        args.extend(extra);
        let run =
            std::process::Command::new(env!("CARGO_BIN_EXE_ppo-wgpu")).args(&args).envs(suite_env()).output().unwrap();
        assert!(run.status.success(), "update --algo {algo}: {}", String::from_utf8_lossy(&run.stderr));

        let (got_bytes, want_bytes) =
            (std::fs::read(&dump).unwrap(), std::fs::read(format!("{FIXTURES}/{algo}-expected.safetensors")).unwrap());
        let (got, want) =
            (SafeTensors::deserialize(&got_bytes).unwrap(), SafeTensors::deserialize(&want_bytes).unwrap());
        for name in ["loss", "approx_kl", "clipfrac"] {
            let (g, w) = (read_f32(&got, name)[0] as f64, read_f32(&want, name)[0] as f64);
            assert!((g - w).abs() <= 1e-5 + 1e-4 * w.abs(), "{algo} {name}: {g} vs PyTorch {w}");
        }
        let mut report = Vec::new();
        for name in want.names().into_iter().filter(|n| n.contains(".weight") || n.contains(".bias")) {
            let err = tensor_error(&read_f32(&got, name), &read_f32(&want, name));
            report.push(format!("{name}: {err:.2e}"));
            assert!(
                err < 1e-3,
                "{algo}: gradient of {name}: relative error {err:.2e} (tolerance 1e-3)\n{}",
                report.join("\n")
            );
        }
        assert!(got.tensor("v_head.summary.weight").is_err(), "{algo} has no value head to differentiate");
        assert!(!model::checkpoint::load(&out).unwrap().heads.value, "{algo} saves no value head");
        if algo == "rloo" {
            // β belongs to GRPO's loss: RLOO's KL penalty is already in the batch's advantages.
            args.extend(["--beta", "0.1"]);
            let run = std::process::Command::new(env!("CARGO_BIN_EXE_ppo-wgpu"))
                .args(&args)
                .envs(suite_env())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&run.stderr);
            assert!(!run.status.success() && stderr.contains("--beta weighs GRPO's KL term"), "{stderr}");
        }
        eprintln!("{algo} gradients, max |Δ| / max |g| per tensor:\n  {}", report.join("\n  "));
    }
}
