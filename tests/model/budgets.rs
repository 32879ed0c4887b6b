//! The round-trip and allocation budgets of docs/design.md §7, counted by the GPU layer: a
//! rollout (generation, a reward model's scores, the rollout batch) reads back twice — its
//! tokens, then its statistics with the scores; a PPO update reads its statistics once; a
//! training step is one submit; from the second iteration on, nothing new is allocated or
//! compiled. And the profiler that reports these counts per iteration.

use crate::suite_gpu::suite_gpu;
use ppo_wgpu::generate::{GenerateOptions, Sampling, generate};
use ppo_wgpu::gpu::{Gpu, Recorder};
use ppo_wgpu::kernels::adamw::AdamW;
use ppo_wgpu::kernels::ppo::PpoLossConfig;
use ppo_wgpu::kernels::rewards::KlEstimator;
use ppo_wgpu::model::optimizer::Optimizer;
use ppo_wgpu::model::{GptConfig, Heads, Model, init::init_weights};
use ppo_wgpu::ppo::algo::Algo;
use ppo_wgpu::ppo::reward::{RewardModel, Sample};
use ppo_wgpu::ppo::rollout::{AdvantageConfig, Sequences, prepare};
use ppo_wgpu::ppo::update::{UpdateOptions, ppo_update};

#[test]
fn a_ppo_iteration_keeps_its_round_trip_and_allocation_budgets() {
    let gpu = suite_gpu(Gpu::new(None).unwrap()); // a device of its own: its counters see only this test
    let config =
        GptConfig { vocab_size: 50, n_positions: 32, n_embd: 32, n_layer: 2, n_head: 2, layer_norm_epsilon: 1e-5 };
    let policy = Model::upload(&gpu, &init_weights(&config, Heads { value: true, reward: false }, 1)).unwrap();
    let reference = Model::upload(&gpu, &init_weights(&config, Heads::default(), 1)).unwrap();
    let reward =
        RewardModel::new(Model::upload(&gpu, &init_weights(&config, Heads { value: false, reward: true }, 3)).unwrap())
            .unwrap();
    let mut rec = Recorder::new(&gpu);
    let mut opt = Optimizer::new(&policy, &mut rec, AdamW { lr: 1e-3, ..AdamW::default() }, 1.0).unwrap();
    rec.submit();
    let prompts: Vec<Vec<u32>> = (0..8).map(|i| (0..1 + i % 4).map(|j| (i * 7 + j) as u32 % 50).collect()).collect();
    let (epochs, minibatches) = (2, 2);

    let mut after_first = None;
    for it in 0..2 {
        let start = gpu.counts();
        let opts = GenerateOptions {
            max_new_tokens: 12,
            sampling: Sampling { temperature: 1.0, top_k: 0, top_p: 1.0 },
            seed: 5,
            first_sample: it * 8,
            eos: None,
            check_every: 0,
            kv_format: None,
            weight_format: None,
        };
        let mut generation = generate(&policy, &prompts, &opts).unwrap();
        let rolled = gpu.counts();
        assert_eq!((rolled - start).readbacks, 1, "a rollout reads its tokens back once");

        // As if they had ended early, at other lengths in each iteration (the first's at most 8
        // tokens): the rollout's and the update's shapes follow the layout, not the lengths.
        for (row, response) in generation.responses.iter_mut().enumerate() {
            response.truncate(if it == 0 { 5 + row % 4 } else { 12 - row % 3 });
        }
        let seqs = Sequences::new(&generation, 12, None);
        let samples: Vec<Sample> = (0..8).map(|_| Sample { prompt: String::new(), response: String::new() }).collect();
        let mut rec = Recorder::new(&gpu);
        let scores = reward.record_scores(&mut rec, &seqs, &samples).unwrap();
        rec.submit();
        assert_eq!((gpu.counts() - rolled).readbacks, 0, "the reward model's scores stay on the GPU");
        let adv = AdvantageConfig {
            algo: Algo::Ppo,
            temperature: 1.0,
            beta: 0.05,
            kl_estimator: KlEstimator::K1,
            gamma: 1.0,
            lam: 0.95,
            num_generations: 1,
            scale_rewards: true,
        };
        let rollout = prepare(&policy, Some(&reference), &seqs, &scores, &adv).unwrap();
        let prepared = gpu.counts();
        assert_eq!((prepared - rolled).readbacks, 1, "the rollout batch: one readback of its statistics and scores");
        assert_eq!((prepared - start).readbacks, 2, "a whole rollout reads back twice");
        assert_eq!((prepared - rolled).submits, 3, "the scores, the batch, the readback's copy");
        assert!(rollout.scores.iter().all(|s| s.is_finite()) && rollout.scores.len() == 8);

        let update = UpdateOptions {
            algo: Algo::Ppo,
            epochs,
            minibatches,
            lr: 1e-3,
            loss: PpoLossConfig { temperature: 1.0, ..Default::default() },
            grad_accum: 1,
            seed: Some(it as u64),
        };
        ppo_update(&policy, &mut opt, &rollout.batch, &update, false).unwrap();
        let updated = gpu.counts() - prepared;
        assert_eq!(updated.readbacks, 1, "a PPO update reads its statistics back once");
        assert_eq!(updated.submits as usize, 1 + epochs * minibatches + 1, "zeroing, one per minibatch, the readback");

        if it == 0 {
            after_first = Some(gpu.counts());
        }
    }
    let second = gpu.counts() - after_first.unwrap();
    assert_eq!(second.buffers, 0, "the second iteration allocates nothing: {second:?}");
    assert_eq!(second.pipelines, 0, "the second iteration compiles nothing: {second:?}");
}

/// With an end token, generation may check the ended flags every K steps: one readback each.
#[test]
fn early_stopping_checks_cost_one_readback_every_k_steps() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let config =
        GptConfig { vocab_size: 40, n_positions: 32, n_embd: 32, n_layer: 1, n_head: 2, layer_norm_epsilon: 1e-5 };
    let model = Model::upload(&gpu, &init_weights(&config, Heads::default(), 2)).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 20,
        sampling: Sampling { temperature: 1.0, top_k: 0, top_p: 1.0 },
        seed: 1,
        first_sample: 0,
        eos: Some(39),
        check_every: 8,
        kv_format: None,
        weight_format: None,
    };
    let start = gpu.counts();
    let generation = generate(&model, &[vec![1, 2], vec![3]], &opts).unwrap();
    // Checks run before steps 8 and 16; a check that finds every row ended stops there.
    let checks = (1..=generation.steps).filter(|s| s % 8 == 0 && *s < 20).count() as u64;
    assert_eq!((gpu.counts() - start).readbacks, 1 + checks);
}

/// A training step (forward, loss, backward, clipping, AdamW) records into one encoder and
/// submits once, reading nothing back.
#[test]
fn a_training_step_is_one_submit() {
    use ppo_wgpu::kernels::cross_entropy::IGNORE;
    use ppo_wgpu::sft::{LmBatch, record_step};
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let config =
        GptConfig { vocab_size: 40, n_positions: 16, n_embd: 32, n_layer: 2, n_head: 2, layer_norm_epsilon: 1e-5 };
    let model = Model::upload(&gpu, &init_weights(&config, Heads::default(), 4)).unwrap();
    let mut rec = Recorder::new(&gpu);
    let mut opt = Optimizer::new(&model, &mut rec, AdamW::default(), 1.0).unwrap();
    let grads = model.zeros_like_params(&mut rec).unwrap();
    rec.submit();
    let (b, t) = (2, 16);
    let ids: Vec<u32> = (0..b * t).map(|i| (i * 7 % 40) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| if i % t + 1 < t { ids[i + 1] } else { IGNORE }).collect();
    let lm = LmBatch::new(&model, &ids, &vec![1; b * t], &targets, b, t).unwrap();
    let start = gpu.counts();
    let mut rec = Recorder::new(&gpu);
    record_step(&mut rec, &model, &mut opt, &grads, &lm, 1e-3).unwrap();
    let dispatches = rec.dispatch_count() as u64;
    rec.submit();
    let step = gpu.counts() - start;
    assert_eq!((step.submits, step.readbacks), (1, 0), "{step:?}");
    assert!(step.dispatches == dispatches && dispatches > 20, "{step:?}");
}

/// A reward command: each line's length.
const LENGTH: &str = r#"while IFS= read -r l; do echo ${#l}; done"#;

/// `--profile`'s report on a short PPO run: every kernel counted (and, where the adapter has
/// timestamp queries, timed with a rate), the phases of the loop, the counts per iteration,
/// and a Chrome trace of one iteration with the phases and the kernels.
#[test]
fn the_profiler_reports_kernels_phases_counts_and_a_trace() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let dir = crate::common::scratch_dir("profile");
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, "the cat sees the dog. a film was good.\n".repeat(40)).unwrap();
    crate::common::tiny_model(&corpus, &dir.join("policy"), 280, 1);
    std::fs::write(dir.join("prompts.txt"), "the cat\na dog\n").unwrap();
    let args = ["train", "--policy", "P", "--prompts", "Q", "--out", "O", "--reward-cmd", LENGTH, "--iterations", "2"];
    let mut args: Vec<String> = args.map(String::from).to_vec();
    args[2] = dir.join("policy").display().to_string();
    args[4] = dir.join("prompts.txt").display().to_string();
    args[6] = dir.join("out").display().to_string();
    args.extend(["--batch-size", "4", "--response-length", "6", "--epochs", "1", "--quiet"].map(String::from));
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        train: ppo_wgpu::ppo::trainer::TrainOptions,
    }
    let opts = <Cli as clap::Parser>::parse_from(args).train;

    gpu.start_profiling();
    ppo_wgpu::ppo::trainer::run(&gpu, &opts).unwrap();
    let profile = gpu.profile();
    let table = profile.table();
    assert_eq!(profile.iterations, 2, "{table}");
    let kernel =
        |name: &str| profile.kernels.iter().find(|k| k.kernel == name).unwrap_or_else(|| panic!("{name}\n{table}"));
    // Calls of the kernels whose names start with `prefix` (a family's variants have suffixes).
    let calls =
        |prefix: &str| profile.kernels.iter().filter(|k| k.kernel.starts_with(prefix)).map(|k| k.calls).sum::<u64>();
    // The fused loss's entry in whichever row walk ppo_rows chose (its own module for subgroups).
    let loss_calls: u64 =
        profile.kernels.iter().filter(|k| k.kernel.contains(":ppo_loss_fused")).map(|k| k.calls).sum();
    assert!(calls("matmul") > 0 && loss_calls == 2 && kernel("sampling:sample_tokens").calls == 12, "{table}");
    if profile.timestamps {
        assert!(profile.gpu_ms > 0.0 && profile.kernels.iter().map(|k| k.share).sum::<f64>() > 0.99, "{table}");
        assert!(
            profile.kernels.iter().any(|k| k.gflops.is_some()) && profile.kernels.iter().any(|k| k.gbps.is_some()),
            "{table}"
        );
    }
    let phases: Vec<&str> = profile.phases.iter().map(|p| p.phase.as_str()).collect();
    for phase in
        ["rollout: generation", "scoring", "policy and reference forwards, advantages", "update", "other host work"]
    {
        assert!(phases.contains(&phase), "{phase}: {phases:?}");
    }
    // generation's tokens, the rollout's statistics and scores, the update's statistics
    assert_eq!(profile.per_iteration.readbacks, 3.0, "{table}");
    assert!(profile.per_iteration.dispatches > profile.per_iteration.submits, "{table}");

    let trace: serde_json::Value = serde_json::from_str(&profile.trace_json()).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    let count = |cat: &str| events.iter().filter(|e| e["cat"] == cat).count();
    assert_eq!(count("phase"), 4, "one iteration's phases: {trace}");
    assert!(!profile.timestamps || count("kernel") > 20, "one iteration's kernels");
    assert!(events.iter().all(|e| e["ph"] == "M" || (e["ts"].as_f64().is_some() && e["dur"].as_f64().unwrap() >= 0.0)));
    // The kernels on the host's clock ran within the iteration's phases (the last ends with the
    // update's statistics read back), whichever wait read their timestamps.
    let span = |cat: &str| {
        let of = |e: &serde_json::Value, end: bool| {
            e["ts"].as_f64().unwrap() + if end { e["dur"].as_f64().unwrap() } else { 0.0 }
        };
        let picked = events.iter().filter(|e| e["cat"] == cat);
        (
            picked.clone().map(|e| of(e, false)).fold(f64::MAX, f64::min),
            picked.map(|e| of(e, true)).fold(f64::MIN, f64::max),
        )
    };
    if profile.timestamps {
        let ((first, last), (phases_start, phases_end)) = (span("kernel"), span("phase"));
        // µs: the GPU's clock is placed by its tightest read, a wake-up after the work at most
        let slack = f64::max(5000.0, 0.05 * (phases_end - phases_start));
        assert!(
            first >= phases_start && last <= phases_end + slack,
            "kernels {first}..{last} µs, phases {phases_start}..{phases_end}"
        );
    }
}
