//! `update --dump-grads` against PyTorch autograd (tests/fixtures/make_ppo_fixture.py): a
//! policy with a value head, a batch with left and right padding, ratios inside and outside the
//! clip range and value clipping active; every parameter's gradient on the first minibatch and
//! the loss statistics.

use crate::common::*;
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
    let gpu = Gpu::new(None).unwrap();
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
