//! The PPO trainer end to end on a tiny random model: a rule reward rises, resume is bit-exact,
//! the same seed gives the same run, and a broken reward is an error naming the sample.

use crate::common::scratch_dir;
use crate::suite_gpu::suite_gpu;
use clap::Parser;
use ppo_wgpu::gpu::Gpu;
use ppo_wgpu::model::{Heads, checkpoint, init::init_weights};
use ppo_wgpu::ppo::batch::RolloutBatch;
use ppo_wgpu::ppo::metrics::Metrics;
use ppo_wgpu::ppo::reward::{RewardCommand, RewardModel, Sample};
use ppo_wgpu::ppo::rollout::Sequences;
use ppo_wgpu::ppo::trainer::{TrainOptions, run};
use ppo_wgpu::rng::Rng;
use ppo_wgpu::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser)]
#[command(args_override_self = true)] // later flags win, as in `ppo-wgpu train`
struct Cli {
    #[command(flatten)]
    train: TrainOptions,
}

/// A reward command: the number of letters "e" in the JSON line (prompt and keys included, a
/// constant offset per prompt), in POSIX shell so that the tests need nothing else.
const COUNT_E: &str = r#"while IFS= read -r l; do printf "%s" "$l" | tr -cd e | wc -c; done"#;

/// A verifiable reward command: 1 when the completion (the line after its "response" key) holds
/// the letter "e", else 0; about half the completions of the random tiny policy do.
const HAS_E: &str = r#"while IFS= read -r l; do case "${l#*\"response\"}" in *e*) echo 1;; *) echo 0;; esac; done"#;

/// A tokenizer trained on a small corpus, a random tiny policy and a prompts file in `dir`.
fn setup(dir: &Path) -> PathBuf {
    let mut rng = Rng::new(40);
    let words = ["the", "cat", "dog", "sees", "a", "tree", "film", "was", "good", "bad", "sea", "every"];
    let lines: Vec<String> = (0..300)
        .map(|_| (0..5).map(|_| words[rng.below(words.len() as u32) as usize]).collect::<Vec<_>>().join(" "))
        .collect();
    std::fs::write(dir.join("corpus.txt"), lines.join("\n")).unwrap();
    let policy = dir.join("policy");
    crate::common::tiny_model(&dir.join("corpus.txt"), &policy, 280, 1);
    std::fs::write(dir.join("prompts.txt"), "the cat\nthe film was\na dog\n{\"prompt\": \"every tree\"}\nthe sea\n")
        .unwrap();
    policy
}

fn options(dir: &Path, out: &str, extra: &[&str]) -> TrainOptions {
    let (policy, prompts, out) = (dir.join("policy"), dir.join("prompts.txt"), dir.join(out));
    let mut args: Vec<String> = [
        "train",
        "--policy",
        policy.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch-size",
        "16",
        "--response-length",
        "12",
        "--lr",
        "1e-2",
        "--lr-schedule",
        "constant",
        "--temperature",
        "1",
        "--quiet",
        "--sample-every",
        "5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !extra.iter().any(|a| *a == "--reward-model" || *a == "--reward-cmd") {
        args.extend(["--reward-cmd".to_string(), COUNT_E.to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Cli::parse_from(args).train
}

fn read_metrics(path: &Path) -> Vec<Metrics> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The metrics that must repeat exactly (everything but the clock).
fn deterministic(m: &Metrics) -> Vec<f32> {
    vec![
        m.score_mean,
        m.score_std,
        m.kl_mean,
        m.beta,
        m.lr,
        m.loss,
        m.pg_loss,
        m.vf_loss.unwrap_or(f32::NAN),
        m.entropy,
        m.approx_kl,
        m.clipfrac,
        m.vf_clipfrac.unwrap_or(f32::NAN),
        m.ratio_mean,
        m.value_mean.unwrap_or(f32::NAN),
        m.response_len_mean,
    ]
}

#[test]
fn ppo_raises_a_rule_reward() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let dir = scratch_dir("train-rises");
    setup(&dir);
    let dump = dir.join("batch.safetensors");
    let extra = ["--iterations", "12", "--lr", "2e-2", "--dump-batch", dump.to_str().unwrap()];
    let report = run(&gpu, &options(&dir, "out", &extra)).unwrap_or_else(|e| panic!("train: {e}"));
    let scores: Vec<f32> = report.metrics.iter().map(|m| m.score_mean).collect();
    let (first, last) = (scores[..3].iter().sum::<f32>() / 3.0, scores[9..].iter().sum::<f32>() / 3.0);
    assert!(last > first + 1.5, "the mean score should rise clearly: {scores:?}");

    // metrics.jsonl holds the keys of docs/design.md §6; the samples and the final policy are written.
    let text = std::fs::read_to_string(dir.join("out/metrics.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    for key in [
        "iteration",
        "score_mean",
        "kl_mean",
        "beta",
        "pg_loss",
        "vf_loss",
        "entropy",
        "approx_kl",
        "clipfrac",
        "explained_variance",
        "response_len_mean",
        "tokens_per_s",
        "time_rollout_s",
        "time_update_s",
    ] {
        assert!(line.get(key).is_some(), "metrics.jsonl lacks {key}: {line}");
    }
    assert_eq!(text.lines().count(), 12);
    assert_eq!(
        std::fs::read_to_string(dir.join("out/samples.jsonl")).unwrap().lines().count(),
        12,
        "iterations 5, 10, 12"
    );
    let policy = checkpoint::load(&dir.join("out/policy")).unwrap();
    assert!(policy.heads.value, "the policy keeps its value head under TRL's names");
    assert!(dir.join("out/policy/tokenizer.json").is_file());

    // The dumped rollout batch reads back, with whitened advantages on the response tokens.
    let batch = RolloutBatch::load(&dir.join("batch.safetensors")).unwrap();
    let count: f32 = batch.response_mask.iter().sum();
    assert!(count > 0.0 && batch.b == 16);
    let mean = batch.advantages.iter().zip(&batch.response_mask).map(|(a, m)| a * m).sum::<f32>() / count;
    assert!(mean.abs() < 1e-4, "whitened advantages have mean {mean}");
    assert!(batch.ref_logprobs.is_some() && batch.scores.as_ref().unwrap().len() == 16);
}

/// GRPO with a verifiable reward (1 when the completion holds a letter, else 0) and no reference
/// (β = 0): the mean reward rises within a few iterations, the metrics are GRPO's, and the
/// policy keeps no value head.
#[test]
fn grpo_raises_a_verifiable_reward() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let dir = scratch_dir("train-grpo");
    setup(&dir);
    let extra =
        ["--algo", "grpo", "--num-generations", "8", "--iterations", "10", "--lr", "2e-2", "--reward-cmd", HAS_E];
    let report = run(&gpu, &options(&dir, "out", &extra)).unwrap_or_else(|e| panic!("train --algo grpo: {e}"));
    let scores: Vec<f32> = report.metrics.iter().map(|m| m.score_mean).collect();
    let (first, last) = (scores[..3].iter().sum::<f32>() / 3.0, scores[7..].iter().sum::<f32>() / 3.0);
    assert!(last > first + 0.2 && last > 0.8, "GRPO should raise the share of completions with an e: {scores:?}");
    let m = &report.metrics[0];
    assert!(m.frac_reward_zero_std.is_some() && m.vf_loss.is_none() && m.explained_variance.is_none(), "{m:?}");
    assert_eq!(m.kl_mean, 0.0, "β = 0: no reference, no KL");
    let line = std::fs::read_to_string(dir.join("out/metrics.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert!(line["algo"] == "grpo" && line.get("frac_reward_zero_std").is_some() && line.get("vf_loss").is_none());
    assert!(!checkpoint::load(&report.policy).unwrap().heads.value, "no value head is created or saved");

    // A batch that is not whole groups, a group of one, and GRPO's option for another algorithm
    // are refused before anything runs.
    let rloo = ["--algo", "rloo", "--scale-rewards", "false", "--iterations", "1"];
    let err = run(&gpu, &options(&dir, "bad", &rloo)).unwrap_err().to_string();
    assert!(err.contains("--scale-rewards applies to grpo"), "{err}");
    for (flags, want) in
        [(["--num-generations", "5"], "multiple of --num-generations"), (["--num-generations", "1"], "at least 2")]
    {
        let mut args = vec!["--algo", "grpo", "--iterations", "1"];
        args.extend(flags);
        let err = run(&gpu, &options(&dir, "bad", &args)).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
}

/// RLOO with its KL penalty and GRPO with the KL term resume bit-exactly, like PPO; a PPO
/// checkpoint is not resumed as another algorithm.
#[test]
fn critic_free_runs_resume_bit_exact() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let dir = scratch_dir("train-critic-free-resume");
    setup(&dir);
    for (algo, beta) in [("rloo", "0.05"), ("grpo", "0.04")] {
        let extra =
            ["--algo", algo, "--beta", beta, "--iterations", "3", "--save-every", "1", "--num-generations", "4"];
        let a = format!("{algo}-a");
        run(&gpu, &options(&dir, &a, &extra)).unwrap_or_else(|e| panic!("{algo}: {e}"));
        let mut resumed = options(&dir, &format!("{algo}-b"), &extra);
        resumed.resume = Some(dir.join(&a).join("checkpoint-1"));
        run(&gpu, &resumed).unwrap();
        let bytes = |run: &str| std::fs::read(dir.join(run).join("policy/model.safetensors")).unwrap();
        assert!(bytes(&a) == bytes(&format!("{algo}-b")), "{algo}: resumed weights differ");
        let metrics = read_metrics(&dir.join(&a).join("metrics.jsonl"));
        assert!(metrics[2].kl_mean > 0.0, "{algo}: the policy moved away from the reference");
    }
    let mut as_grpo = options(&dir, "x", &["--algo", "grpo", "--iterations", "4", "--num-generations", "4"]);
    as_grpo.resume = Some(dir.join("rloo-a"));
    let err = run(&gpu, &as_grpo).unwrap_err().to_string();
    assert!(err.contains("--algo rloo, not grpo"), "{err}");
}

#[test]
fn resume_is_bit_exact_and_the_same_seed_repeats() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let dir = scratch_dir("train-resume");
    setup(&dir);
    let extra = ["--iterations", "4", "--save-every", "2", "--minibatches", "2", "--target-kl", "0.5"];
    run(&gpu, &options(&dir, "a", &extra)).unwrap();
    run(&gpu, &options(&dir, "b", &extra)).unwrap();
    let resume = dir.join("a/checkpoint-2");
    let mut resumed = options(&dir, "c", &extra);
    resumed.resume = Some(resume);
    run(&gpu, &resumed).unwrap();

    let bytes = |run: &str, file: &str| std::fs::read(dir.join(run).join(file)).unwrap();
    assert!(bytes("a", "policy/model.safetensors") == bytes("c", "policy/model.safetensors"), "resumed weights differ");
    assert!(bytes("a", "checkpoint-4/optimizer.safetensors") == bytes("c", "checkpoint-4/optimizer.safetensors"));
    assert!(
        bytes("a", "policy/model.safetensors") == bytes("b", "policy/model.safetensors"),
        "same seed, other weights"
    );
    let (a, b, c) = (
        read_metrics(&dir.join("a/metrics.jsonl")),
        read_metrics(&dir.join("b/metrics.jsonl")),
        read_metrics(&dir.join("c/metrics.jsonl")),
    );
    assert_eq!(a.iter().map(deterministic).collect::<Vec<_>>(), b.iter().map(deterministic).collect::<Vec<_>>());
    assert_eq!(c.len(), 2, "the resumed run logs iterations 3 and 4");
    assert_eq!(a[2..].iter().map(deterministic).collect::<Vec<_>>(), c.iter().map(deterministic).collect::<Vec<_>>());
    assert_ne!(a[2].beta, a[0].beta, "the adaptive controller moved β (and resume restored it)");

    // Resuming from the run directory takes its latest checkpoint; a different seed is refused.
    let mut wrong_seed = options(&dir, "d", &extra);
    wrong_seed.resume = Some(dir.join("a"));
    wrong_seed.seed = 5;
    let err = run(&gpu, &wrong_seed).unwrap_err().to_string();
    assert!(err.contains("--seed 0") && err.contains("checkpoint-4"), "{err}");
}

/// A PPO run on a device held to WebGPU's default limits (what a browser tab gets: among
/// them storage-binding offsets aligned to 256 bytes where lavapipe asks for 32, textures of
/// 8192 texels, 128 MiB bindings) runs, and runs as it does with the adapter's own limits.
#[test]
fn a_run_within_webgpus_default_limits_is_the_same_run() {
    let lower = ppo_wgpu::gpu::LowerLimits { webgpu_defaults: true, ..Default::default() };
    let (gpu, limited) = (suite_gpu(Gpu::new(None).unwrap()), suite_gpu(Gpu::with_lower_limits(None, lower).unwrap()));
    assert_eq!(limited.limits.min_storage_buffer_offset_alignment, 256);
    let dir = scratch_dir("train-webgpu-limits");
    setup(&dir);
    let extra = ["--iterations", "2", "--minibatches", "2"];
    run(&gpu, &options(&dir, "adapter", &extra)).unwrap();
    run(&limited, &options(&dir, "webgpu", &extra)).unwrap();
    let bytes = |run: &str| std::fs::read(dir.join(run).join("policy/model.safetensors")).unwrap();
    assert!(bytes("adapter") == bytes("webgpu"), "other weights within WebGPU's limits");
    let (a, w) = (read_metrics(&dir.join("adapter/metrics.jsonl")), read_metrics(&dir.join("webgpu/metrics.jsonl")));
    assert_eq!(a.iter().map(deterministic).collect::<Vec<_>>(), w.iter().map(deterministic).collect::<Vec<_>>());
}

/// Without subgroup operations (WebGPU's core, which has them only as an optional feature; GPUs
/// and drivers without them) every family runs one of its other variants, chosen by measuring
/// those, and a PPO run goes through: finite metrics every iteration, no KL to the reference
/// before the first update, and weights that move.
#[test]
fn a_run_without_subgroup_operations_trains() {
    let lower = ppo_wgpu::gpu::LowerLimits { no_subgroups: true, ..Default::default() };
    let gpu = suite_gpu(Gpu::with_lower_limits(None, lower).unwrap());
    assert!(!gpu.has_subgroups());
    let dir = scratch_dir("train-without-subgroups");
    let policy = setup(&dir);
    run(&gpu, &options(&dir, "out", &["--iterations", "2", "--minibatches", "2"])).unwrap();
    let metrics = read_metrics(&dir.join("out/metrics.jsonl"));
    assert_eq!(metrics.len(), 2);
    assert!(
        metrics.iter().flat_map(deterministic).all(f32::is_finite),
        "{:?}",
        metrics.iter().map(deterministic).collect::<Vec<_>>()
    );
    assert_eq!(metrics[0].kl_mean, 0.0, "the first rollout comes from the reference itself");
    let weights = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(weights(&dir.join("out/policy")) != weights(&policy), "the policy trained");
}

fn samples(n: usize) -> Vec<Sample> {
    (0..n).map(|i| Sample { prompt: format!("prompt {i}"), response: "eee".into() }).collect()
}

fn command_error(cmd: &str, n: usize, timeout_ms: u64) -> String {
    let mut c = RewardCommand::spawn(cmd, Duration::from_millis(timeout_ms)).unwrap();
    c.score(&samples(n)).unwrap_err().to_string()
}

#[test]
fn a_broken_reward_command_is_an_error_naming_the_sample() {
    let ok = RewardCommand::spawn(COUNT_E, Duration::from_secs(20)).unwrap().score(&samples(3)).unwrap();
    assert!(ok.iter().all(|&s| s == ok[0] && s > 3.0), "{ok:?}");
    let crash = command_error("exit 3", 2, 20_000);
    assert!(crash.contains("exited") && crash.contains("0 of 2"), "{crash}");
    let hang = command_error("exec sleep 20", 2, 300);
    assert!(hang.contains("no score for sample 0") && hang.contains("--reward-timeout"), "{hang}");
    let lie = command_error("while read -r l; do echo abc; done", 2, 20_000);
    assert!(lie.contains("\"abc\"") && lie.contains("sample 0 (prompt \"prompt 0\")"), "{lie}");
    let nan = command_error("while read -r l; do echo NaN; done", 2, 20_000);
    assert!(nan.contains("NaN for sample 0"), "{nan}");
    let short = command_error("read -r l; echo 1", 3, 20_000);
    assert!(short.contains("after answering 1 of 3"), "{short}");

    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let dir = scratch_dir("train-bad-reward");
    setup(&dir);
    let err =
        run(&gpu, &options(&dir, "out", &["--iterations", "2", "--reward-cmd", "exit 1"])).unwrap_err().to_string();
    assert!(err.contains("iteration 1") && err.contains("exited"), "{err}");
}

/// A reward model scores each sequence at its last real token, the same whether it reads the
/// policy's token ids or re-encodes the text with its own (here: equivalent) tokenizer; and
/// `train --reward-model` runs with it.
#[test]
fn a_reward_model_scores_at_the_last_token_and_trains() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let dir = scratch_dir("train-reward-model");
    let policy = setup(&dir);
    let mut ck = init_weights(&checkpoint::load(&policy).unwrap().config, Heads { value: false, reward: true }, 2);
    let mut rng = Rng::new(3);
    for (name, _, values) in ck.tensors.iter_mut() {
        if name == "score.weight" {
            values.iter_mut().for_each(|x| *x = rng.normal() as f32);
        }
    }
    let rm_dir = dir.join("rm");
    checkpoint::save(&rm_dir, &ck).unwrap();
    let tok_json = std::fs::read_to_string(policy.join("tokenizer.json")).unwrap();
    std::fs::write(rm_dir.join("tokenizer.json"), &tok_json).unwrap();
    let other = dir.join("rm-own-tokenizer");
    checkpoint::save(&other, &ck).unwrap();
    let pretty = serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&tok_json).unwrap()).unwrap();
    std::fs::write(other.join("tokenizer.json"), pretty).unwrap();

    let tok = Tokenizer::load(&policy.join("tokenizer.json")).unwrap();
    let texts = [("the cat", " sees a tree"), ("a dog", " was"), ("every film was good", " bad")];
    let prompts: Vec<Vec<u32>> = texts.iter().map(|(p, _)| tok.encode(p).unwrap()).collect();
    let generation = ppo_wgpu::generate::Generation {
        prompt_len: prompts.iter().map(Vec::len).max().unwrap(),
        prompts,
        responses: texts.iter().map(|(_, r)| tok.encode(r).unwrap()).collect(),
        steps: 4,
    };
    let longest = generation.responses.iter().map(Vec::len).max().unwrap();
    let seqs = Sequences::new(&generation, longest + 2, tok.eos_id());
    let samples: Vec<Sample> =
        texts.iter().map(|(p, r)| Sample { prompt: p.to_string(), response: r.to_string() }).collect();
    let by_ids =
        RewardModel::load(&gpu, &rm_dir, &policy.join("tokenizer.json")).unwrap().score(&seqs, &samples).unwrap();
    let by_text =
        RewardModel::load(&gpu, &other, &policy.join("tokenizer.json")).unwrap().score(&seqs, &samples).unwrap();
    let model = ppo_wgpu::model::load(&gpu, &rm_dir).unwrap();
    for (i, (p, r)) in texts.iter().enumerate() {
        let ids = tok.encode(&format!("{p}{r}")).unwrap();
        let want = ppo_wgpu::score::score(&model, &ids, 1.0).unwrap().reward.unwrap();
        assert!(
            (by_ids[i] - want).abs() < 1e-4 && (by_text[i] - want).abs() < 1e-4,
            "{i}: {by_ids:?} {by_text:?} vs {want}"
        );
    }

    let rm = rm_dir.to_str().unwrap();
    let report = run(&gpu, &options(&dir, "out", &["--iterations", "2", "--reward-model", rm])).unwrap();
    assert_eq!(report.metrics.len(), 2);
    // The critic-free algorithms run on the reward model too, RLOO with its KL penalty (β 0.05).
    for algo in ["grpo", "rloo"] {
        let report = run(&gpu, &options(&dir, algo, &["--iterations", "2", "--reward-model", rm, "--algo", algo]))
            .unwrap_or_else(|e| panic!("{algo}: {e}"));
        assert!(report.metrics.iter().all(|m| m.loss.is_finite() && m.vf_loss.is_none()), "{algo}");
        assert!(!checkpoint::load(&report.policy).unwrap().heads.value, "{algo} saves no value head");
    }
    let not_rm = run(&gpu, &options(&dir, "x", &["--iterations", "1", "--reward-model", policy.to_str().unwrap()]));
    assert!(not_rm.unwrap_err().to_string().contains("no score.weight head"));
}

#[test]
fn learning_rate_schedules() {
    let dir = scratch_dir("train-lr");
    let mut o = options(&dir, "out", &["--iterations", "10", "--lr", "1.0", "--warmup", "2"]);
    use ppo_wgpu::ppo::trainer::{LrSchedule, scheduled_lr};
    let lrs = |o: &TrainOptions| (0..10).map(|i| scheduled_lr(o, i)).collect::<Vec<f32>>();
    o.lr_schedule = LrSchedule::Constant;
    assert_eq!(lrs(&o), [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
    o.lr_schedule = LrSchedule::Linear;
    let linear = lrs(&o);
    assert_eq!(&linear[..4], &[0.5, 1.0, 1.0, 0.875]);
    assert!((linear[9] - 0.125).abs() < 1e-6, "{linear:?}");
    o.lr_schedule = LrSchedule::Cosine;
    let cosine = lrs(&o);
    assert!((cosine[2] - 1.0).abs() < 1e-6 && (cosine[6] - 0.5).abs() < 1e-6, "{cosine:?}");
    assert!(cosine.windows(2).skip(1).all(|w| w[1] <= w[0]), "{cosine:?}");
}

/// `--missing-eos-penalty` lowers the score of responses cut off before <|endoftext|>; a run
/// that blows up is an error naming the iteration and the last good checkpoint.
#[test]
fn missing_eos_penalty_and_divergence() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let dir = scratch_dir("train-penalty");
    setup(&dir);
    // A random model over ~280 tokens almost never draws the end token within 12 tokens.
    let constant = "while read -r l; do echo 1; done";
    let base = ["--iterations", "1", "--reward-cmd", constant];
    let plain = run(&gpu, &options(&dir, "plain", &base)).unwrap();
    let penalised =
        run(&gpu, &options(&dir, "penalised", &[&base[..], &["--missing-eos-penalty", "5"]].concat())).unwrap();
    assert_eq!(plain.metrics[0].score_mean, 1.0);
    assert!(penalised.metrics[0].score_mean < -3.0, "{:?}", penalised.metrics[0]);

    let err = run(&gpu, &options(&dir, "diverged", &["--iterations", "3", "--lr", "1e30", "--save-every", "1"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("training diverged: iteration") && err.contains("last good checkpoint"), "{err}");
}

/// `--config FILE`: a TOML or JSON table of train's options becomes flags placed before the
/// user's, which win; a boolean option (--scale-rewards) takes its value, a switch (--quiet) is
/// given or not, and an unknown name is an error that names it.
#[test]
fn config_files_become_flags() {
    use ppo_wgpu::ppo::algo::Algo;
    use ppo_wgpu::ppo::trainer::config_args;
    let dir = scratch_dir("train-config");
    let toml = dir.join("run.toml");
    std::fs::write(&toml, "algo = \"grpo\"\nscale_rewards = false\nquiet = true\nbatch-size = 24\nlr = 0.001\n")
        .unwrap();
    let mut args = vec!["train".to_string()];
    args.extend(config_args(&toml).unwrap());
    args.extend(
        ["--policy", "p", "--prompts", "x", "--out", "o", "--reward-cmd", "cat", "--lr", "0.002"].map(String::from),
    );
    let opts = Cli::parse_from(args).train;
    assert_eq!(opts.algo, Algo::Grpo);
    assert!(!opts.scale_rewards && opts.quiet);
    assert_eq!((opts.batch_size, opts.lr), (24, 0.002), "the command line wins over the file");
    assert_eq!((opts.num_generations(), opts.epochs(), opts.beta()), (8, 1, 0.0), "GRPO's defaults");

    let json = dir.join("run.json");
    std::fs::write(&json, r#"{"quiet": false, "scale_rewards": true, "iterations": 3}"#).unwrap();
    assert_eq!(config_args(&json).unwrap(), ["--iterations", "3", "--scale-rewards", "true"].map(String::from));
    std::fs::write(&json, r#"{"learning_rate": 0.1}"#).unwrap();
    let err = config_args(&json).unwrap_err().to_string();
    assert!(err.contains("learning_rate is not an option of train"), "{err}");
}

/// The trainer lets go of the buffers of shapes its last iteration did not use (`trim_pool`):
/// a run whose longest prompt changes every iteration, so that the rollout's and the update's
/// shapes change with it, ends holding little more than a run with the longest prompts
/// throughout, where it once held one set of buffers per length it met.
#[test]
fn a_run_whose_prompt_lengths_change_holds_the_buffers_of_its_last_iterations_only() {
    let dir = scratch_dir("train-pool");
    setup(&dir);
    let words = ["the", "cat", "sees", "a", "tree", "every", "dog", "was", "good", "the"].repeat(2);
    let lines =
        |lengths: &mut dyn Iterator<Item = usize>| lengths.map(|n| words[..n].join(" ") + "\n").collect::<String>();
    std::fs::write(dir.join("changing.txt"), lines(&mut (1..=20))).unwrap();
    std::fs::write(dir.join("longest.txt"), lines(&mut std::iter::repeat_n(20, 20))).unwrap();
    let held = |prompts: &str| {
        let gpu = suite_gpu(Gpu::new(None).unwrap()); // a device of its own: its pool holds only this run's buffers
        let prompts = dir.join(prompts);
        let extra = ["--prompts", prompts.to_str().unwrap(), "--batch-size", "2", "--iterations", "16"];
        run(&gpu, &options(&dir, "out-pool", &extra)).unwrap_or_else(|e| panic!("train: {e}"));
        gpu.tensor_bytes_allocated()
    };
    let (longest, changing) = (held("longest.txt"), held("changing.txt"));
    assert!(
        (changing as f64) < 1.5 * longest as f64,
        "{changing} bytes held, against {longest} with the longest prompts throughout"
    );
}
