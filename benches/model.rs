//! `cargo bench --bench model`: whole-model throughput in tokens/s, forward alone (with the LM
//! head, and without it as a reward model scores) and forward + backward (+ AdamW), for the
//! shipped tiny shape (batch 32 × 64) and, with PPO_WGPU_BENCH_LARGE=1, a GPT-2-small-shaped
//! model (randomly initialised, batch 1 × 128).
//! Each is checked first: the tiny model's logits against the CPU reference model, GPT-2
//! small's initial loss against ln V (what a 0.02-scale random init gives).

mod common;

use ppo_wgpu::gpu::{Gpu, Recorder};
use ppo_wgpu::kernels::adamw::AdamW;
use ppo_wgpu::model::optimizer::Optimizer;
use ppo_wgpu::model::{GptConfig, Heads, Model, init::init_weights};
use ppo_wgpu::reference;
use ppo_wgpu::rng::Rng;
use ppo_wgpu::sft::{LmBatch, record_loss, record_step};
use std::sync::Arc;
use std::time::Duration;

fn bench_model(gpu: &Arc<Gpu>, label: &str, config: GptConfig, b: usize, t: usize) {
    let heads = Heads { value: true, reward: false };
    let ck = init_weights(&config, heads, 1);
    let model = Model::upload(gpu, &ck).unwrap();
    let mut rng = Rng::new(2);
    let ids: Vec<u32> = (0..b * t).map(|_| rng.below(config.vocab_size as u32)).collect();
    let mask = vec![1u32; b * t];
    let targets: Vec<u32> = (0..b * t).map(|i| ids[(i + 1) % (b * t)]).collect();
    let lm = LmBatch::new(&model, &ids, &mask, &targets, b, t).unwrap();
    let mut rec = Recorder::new(gpu);
    let mut opt = Optimizer::new(&model, &mut rec, AdamW::default(), 1.0).unwrap();
    let grads = model.zeros_like_params(&mut rec).unwrap();
    rec.submit();

    // Check first.
    let mut rec = Recorder::new(gpu);
    let acts = record_loss(&mut rec, &model, &lm).unwrap();
    rec.submit();
    if config.n_layer <= 4 {
        let param = |name: &str| ck.get(name).map(|v| v.iter().map(|&x| x as f64).collect()).unwrap_or_default();
        let want = reference::gpt2_forward(&config, &param, &ids, &mask, b, t).logits;
        // The model's logits are Vp wide (the padded vocabulary): compare the V real columns.
        let got = gpu.download(acts.logits().unwrap()).unwrap();
        let (v, vp) = (config.vocab_size, config.padded_vocab_size());
        let real = got.chunks(vp).flat_map(|row| &row[..v]);
        let worst = real.zip(&want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-4, "{label}: logits differ from the CPU reference model by {worst:.2e}");
    } else {
        let mean = lm.mean_loss(gpu).unwrap() as f64;
        let ln_v = (config.vocab_size as f64).ln();
        assert!((mean - ln_v).abs() < 0.5, "{label}: initial loss {mean:.3}, expected about ln V = {ln_v:.3}");
    }
    drop(acts);

    // Timed with a budget rather than criterion's ten samples: a GPT-2 training step takes
    // seconds on a software adapter.
    let budget = Duration::from_secs(3);
    let forward = common::seconds_per_call(budget, || {
        let mut rec = Recorder::new(gpu);
        let _acts = model.forward(&mut rec, &lm.batch).unwrap();
        rec.submit();
        gpu.wait().unwrap();
    });
    // A reward model's scoring: the same forward without the LM head.
    let reward_forward = common::seconds_per_call(budget, || {
        let mut rec = Recorder::new(gpu);
        let _acts = model.forward_without_logits(&mut rec, &lm.batch).unwrap();
        rec.submit();
        gpu.wait().unwrap();
    });
    let step = common::seconds_per_call(budget, || {
        let mut rec = Recorder::new(gpu);
        record_step(&mut rec, &model, &mut opt, &grads, &lm, 1e-4).unwrap();
        rec.submit();
        gpu.wait().unwrap();
    });
    let rows = [
        ("forward", "forward", forward),
        ("forward without the LM head (a reward model's scoring)", "reward forward", reward_forward),
        ("forward+backward+AdamW", "training step", step),
    ];
    for (what, workload, secs) in rows {
        println!("  {label} {what}: {:.0} tokens/s ({:.1} ms per {b}x{t} batch)", (b * t) as f64 / secs, secs * 1e3);
        common::record(gpu, &format!("{label} {workload}"), (b * t) as f64 / secs, "tokens/s");
    }
}

fn main() {
    // `cargo bench` passes --bench (and any filter): a filter that names no shape skips it.
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let wanted = |label: &str| {
        filter.is_empty() || filter.iter().any(|f| label.contains(f.as_str()) || "model".contains(f.as_str()))
    };
    let gpu = Gpu::new(None).expect("the benches need a GPU adapter");
    common::begin(&gpu);
    if wanted("tiny") {
        bench_model(&gpu, "tiny", GptConfig::tiny(), 32, 64);
    }
    if wanted("gpt2-small") && common::large() {
        bench_model(&gpu, "gpt2-small", GptConfig::gpt2_small(), 1, 128);
    } else if wanted("gpt2-small") {
        println!("  (GPT-2 small skipped: set {}=1 to run it; minutes on a software adapter)", common::LARGE_ENV);
    }
    common::print_summary(&gpu);
}
