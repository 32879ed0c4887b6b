//! `cargo bench --bench model`: whole-model throughput in tokens/s, forward alone and
//! forward + backward (+ AdamW), for the shipped tiny shape (batch 32 × 64) and a
//! GPT-2-small-shaped model (randomly initialised, batch 1 × 128). Each is checked first: the
//! tiny model's logits against the CPU reference model, GPT-2 small's initial loss against
//! ln V (what a 0.02-scale random init gives).

mod common;

use criterion::{Criterion, Throughput};
use ppo_wgpu::gpu::{Gpu, Recorder};
use ppo_wgpu::kernels::adamw::AdamW;
use ppo_wgpu::model::optimizer::Optimizer;
use ppo_wgpu::model::{GptConfig, Heads, Model, init::init_weights};
use ppo_wgpu::reference;
use ppo_wgpu::rng::Rng;
use ppo_wgpu::sft::{LmBatch, record_loss, record_step};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn bench_model(c: &mut Criterion, gpu: &Arc<Gpu>, label: &str, config: GptConfig, b: usize, t: usize) {
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
        let got = gpu.download(&acts.logits).unwrap();
        let worst = got.iter().zip(&want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-4, "{label}: logits differ from the CPU reference model by {worst:.2e}");
    } else {
        let mean = lm.mean_loss(gpu).unwrap() as f64;
        let ln_v = (config.vocab_size as f64).ln();
        assert!((mean - ln_v).abs() < 0.5, "{label}: initial loss {mean:.3}, expected about ln V = {ln_v:.3}");
    }
    drop(acts);

    let mut g = c.benchmark_group("model");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements((b * t) as u64)); // tokens
    let mut report = Vec::new();
    let mut forward_secs = (0.0, 0);
    g.bench_function(format!("{label} forward"), |bench| {
        bench.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let mut rec = Recorder::new(gpu);
                let _acts = model.forward(&mut rec, &lm.batch).unwrap();
                rec.submit();
            }
            gpu.wait().unwrap();
            forward_secs.0 += start.elapsed().as_secs_f64();
            forward_secs.1 += iters;
            start.elapsed()
        })
    });
    report.push(("forward", "forward", forward_secs.0 / forward_secs.1 as f64));
    let mut step_secs = (0.0, 0);
    g.bench_function(format!("{label} forward+backward+AdamW"), |bench| {
        bench.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let mut rec = Recorder::new(gpu);
                record_step(&mut rec, &model, &mut opt, &grads, &lm, 1e-4).unwrap();
                rec.submit();
            }
            gpu.wait().unwrap();
            step_secs.0 += start.elapsed().as_secs_f64();
            step_secs.1 += iters;
            start.elapsed()
        })
    });
    report.push(("forward+backward+AdamW", "training step", step_secs.0 / step_secs.1 as f64));
    g.finish();
    // (criterion runs nothing for a benchmark its filter leaves out: those are NaN here)
    for (what, workload, secs) in report.into_iter().filter(|(_, _, secs)| secs.is_finite()) {
        println!("  {label} {what}: {:.0} tokens/s ({:.1} ms per {b}x{t} batch)", (b * t) as f64 / secs, secs * 1e3);
        common::record(gpu, &format!("{label} {workload}"), (b * t) as f64 / secs, "tokens/s");
    }
}

fn main() {
    let gpu = Gpu::new(None).expect("the benches need a GPU adapter");
    println!("benchmarking on {} (CPU: {})", gpu.describe(), ppo_wgpu::gpu::cpu_model());
    let mut c = Criterion::default().configure_from_args();
    bench_model(&mut c, &gpu, "tiny", GptConfig::tiny(), 32, 64);
    bench_model(&mut c, &gpu, "gpt2-small", GptConfig::gpt2_small(), 1, 128);
    c.final_summary();
}
