//! `cargo bench --bench ppo_iteration`: one PPO iteration split by phase — rollout (KV-cached
//! generation on the GPU), scoring (a reward model on the GPU), the policy and reference
//! forwards with the advantages, and the update (epochs × minibatches) — for the tiny shape of
//! the design document (batch 32, prompt 16 + response 48, 4 epochs × 4 minibatches), and for
//! GPT-2 small (batch 8, prompt 64 + response 64) when PPO_WGPU_BENCH_LARGE=1 (minutes on a
//! software adapter). Random weights; every phase ends in its own readback, so wall-clock
//! time per phase is what a run spends there. Prints each phase's time, share, dispatches,
//! submits and readbacks, and generation tokens/s. (`train` itself saves the scoring phase's
//! readback: its scores come back with the rollout's statistics.) With
//! PPO_WGPU_BENCH_PROFILE=1, one more iteration of each shape runs profiled, as `--profile`
//! profiles a command, and its report follows the figures (which it does not join).

mod common;

use ppo_wgpu::generate::{GenerateOptions, Sampling, generate};
use ppo_wgpu::gpu::{Counts, Gpu, Recorder};
use ppo_wgpu::kernels::adamw::AdamW;
use ppo_wgpu::kernels::ppo::PpoLossConfig;
use ppo_wgpu::kernels::rewards::KlEstimator;
use ppo_wgpu::model::optimizer::Optimizer;
use ppo_wgpu::model::{GptConfig, Heads, Model, init::init_weights};
use ppo_wgpu::ppo::algo::Algo;
use ppo_wgpu::ppo::rollout::{AdvantageConfig, Sequences, prepare};
use ppo_wgpu::ppo::update::{UpdateOptions, ppo_update};
use ppo_wgpu::rng::Rng;
use std::sync::Arc;

struct Shape {
    label: &'static str,
    config: GptConfig,
    batch: usize,
    prompt: usize,
    response: usize,
    epochs: usize,
    minibatches: usize,
}

const PHASES: [&str; 4] =
    ["rollout (generation)", "scoring (reward model)", "policy + reference forward, advantages", "update"];

fn bench(gpu: &Arc<Gpu>, s: &Shape, iterations: usize) {
    let policy = Model::upload(gpu, &init_weights(&s.config, Heads { value: true, reward: false }, 1)).unwrap();
    let reference = Model::upload(gpu, &init_weights(&s.config, Heads::default(), 1)).unwrap();
    // A reward model: random weights with a random score head (its scores are what they are).
    let mut rm = init_weights(&s.config, Heads { value: false, reward: true }, 2);
    let mut rng = Rng::new(3);
    for (_, _, values) in rm.tensors.iter_mut().filter(|(name, _, _)| name == "score.weight") {
        values.iter_mut().for_each(|x| *x = rng.normal() as f32 * 0.1);
    }
    let reward_model = Model::upload(gpu, &rm).unwrap();
    let mut rec = Recorder::new(gpu);
    let mut opt = Optimizer::new(&policy, &mut rec, AdamW { lr: 1e-5, ..AdamW::default() }, 1.0).unwrap();
    rec.submit();
    let prompts: Vec<Vec<u32>> =
        (0..s.batch).map(|_| (0..s.prompt).map(|_| rng.below(s.config.vocab_size as u32)).collect()).collect();

    let mut totals = [0.0f64; 4];
    let mut counts = [Counts::default(); 4];
    // With PPO_WGPU_BENCH_PROFILE, one more iteration, profiled and not counted.
    let profiled = common::profile_asked();
    for it in 0..iterations + 1 + usize::from(profiled) {
        let profiling = it == iterations + 1;
        if profiling {
            gpu.start_profiling();
        }
        let _iteration = profiling.then(|| gpu.iteration());
        let mut times = [0.0f32; 4];
        let mut phase_counts = [Counts::default(); 4];
        let mut c = gpu.counts();
        let mut counted = |k: usize, phase_counts: &mut [Counts; 4]| {
            let now = gpu.counts();
            phase_counts[k] = now - c;
            c = now;
        };
        let phase = gpu.phase(PHASES[0]);
        let opts = GenerateOptions {
            max_new_tokens: s.response,
            sampling: Sampling { temperature: 0.7, top_k: 0, top_p: 1.0 },
            seed: 0,
            first_sample: it * s.batch,
            eos: None,
            check_every: 0,
            kv_format: None,
            weight_format: None,
        };
        let generation = generate(&policy, &prompts, &opts).unwrap();
        let seqs = Sequences::new(&generation, s.response, None);
        times[0] = phase.finish();
        counted(0, &mut phase_counts);

        let phase = gpu.phase(PHASES[1]);
        let scores = score(&reward_model, &seqs);
        times[1] = phase.finish();
        counted(1, &mut phase_counts);

        let phase = gpu.phase(PHASES[2]);
        let adv = AdvantageConfig {
            algo: Algo::Ppo,
            temperature: 0.7,
            beta: 0.05,
            kl_estimator: KlEstimator::K1,
            gamma: 1.0,
            lam: 0.95,
            num_generations: 1,
            scale_rewards: true,
        };
        let rollout =
            prepare(&policy, Some(&reference), &seqs, &gpu.upload(&[s.batch], &scores).unwrap(), &adv).unwrap();
        times[2] = phase.finish();
        counted(2, &mut phase_counts);

        let phase = gpu.phase(PHASES[3]);
        let update = UpdateOptions {
            algo: Algo::Ppo,
            epochs: s.epochs,
            minibatches: s.minibatches,
            lr: 1e-5,
            loss: PpoLossConfig { temperature: 0.7, ..PpoLossConfig::default() },
            grad_accum: 1,
            seed: Some(it as u64),
        };
        let (stats, _) = ppo_update(&policy, &mut opt, &rollout.batch, &update, false).unwrap();
        assert!(stats.means.iter().all(|x| x.is_finite()), "{}: non-finite update statistics", s.label);
        times[3] = phase.finish();
        counted(3, &mut phase_counts);
        if it > 0 && it <= iterations {
            // the first iteration compiles pipelines and fills the buffer pool
            totals.iter_mut().zip(times).for_each(|(a, b)| *a += b as f64);
            counts.iter_mut().zip(phase_counts).for_each(|(a, b)| *a = *a + b);
        }
    }
    let total: f64 = totals.iter().sum();
    println!(
        "\nPPO iteration, {}: batch {}, prompt {} + response {}, {} epochs x {} minibatches (mean of {iterations})",
        s.label, s.batch, s.prompt, s.response, s.epochs, s.minibatches
    );
    println!("  {:<42} {:>10} {:>7} {:>11} {:>8} {:>10}", "phase", "ms", "share", "dispatches", "submits", "readbacks");
    let per = |x: u64| x as f64 / iterations as f64;
    let row = |name: &str, t: f64, c: Counts| {
        let share = format!("{:.1}%", 100.0 * t / total);
        let ms = t / iterations as f64 * 1e3;
        let (d, s, r) = (per(c.dispatches), per(c.submits), per(c.readbacks));
        println!("  {name:<42} {ms:>10.1} {share:>7} {d:>11.0} {s:>8.0} {r:>10.0}");
    };
    for ((name, t), c) in PHASES.iter().zip(totals).zip(counts) {
        row(name, t, c);
    }
    row("iteration", total, counts.into_iter().fold(Counts::default(), |a, b| a + b));
    let gen_tokens = (s.batch * s.response) as f64;
    println!("  generation: {:.0} tokens/s", gen_tokens / (totals[0] / iterations as f64));
    if profiled {
        println!(
            "\n{}, one more iteration profiled ({}; a pass of its own per dispatch, so slower than the figures above):",
            s.label,
            common::PROFILE_ENV
        );
        print!("{}", gpu.profile().table());
    }
    let short = s.label.split(' ').next().unwrap_or(s.label);
    common::record(gpu, &format!("{short} PPO iteration"), total / iterations as f64 * 1e3, "ms");
    common::record(gpu, &format!("{short} generation"), gen_tokens / (totals[0] / iterations as f64), "tokens/s");
}

/// The reward model's score of each sequence at its last real token (a forward without the LM
/// head, as `train` scores).
fn score(model: &Model, seqs: &Sequences) -> Vec<f32> {
    let gpu = model.gpu();
    let batch = seqs.batch(model).unwrap();
    let scores = gpu.tensor(&[seqs.b], ppo_wgpu::gpu::DType::F32).unwrap();
    let mut rec = Recorder::new(gpu);
    let acts = model.forward_without_logits(&mut rec, &batch).unwrap();
    ppo_wgpu::kernels::rollout::last_token_scores(&mut rec, &scores, acts.rewards.as_ref().unwrap(), &batch.mask)
        .unwrap();
    rec.submit();
    gpu.download(&scores).unwrap()
}

fn main() {
    // `cargo bench` passes --bench (and any filter): a filter that names neither shape skips this.
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if !filter.is_empty() && !filter.iter().any(|f| "ppo_iteration".contains(f.as_str()) || f.contains("ppo")) {
        return;
    }
    let gpu = Gpu::new(None).expect("the benches need a GPU adapter");
    common::begin(&gpu);
    let tiny = Shape {
        label: "tiny (4L/128/4H/V512)",
        config: GptConfig::tiny(),
        batch: 32,
        prompt: 16,
        response: 48,
        epochs: 4,
        minibatches: 4,
    };
    bench(&gpu, &tiny, 2);
    if common::large() {
        let small = Shape {
            label: "gpt2-small",
            config: GptConfig::gpt2_small(),
            batch: 8,
            prompt: 64,
            response: 64,
            epochs: 4,
            minibatches: 4,
        };
        bench(&gpu, &small, 1);
    } else {
        println!("\n(GPT-2 small skipped: set {}=1 to run it)", common::LARGE_ENV);
    }
    common::print_summary(&gpu);
}
