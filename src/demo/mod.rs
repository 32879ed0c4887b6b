//! The out-of-the-box demo: `cargo run --release` with no arguments runs PPO on the shipped
//! models (`weights/`, made by `prepare-demo`): a small policy that writes movie reviews of
//! mixed sentiment learns what a reward model — trained on preference pairs labelled by a
//! hidden rule — says people prefer. It prints completions before and after with their scores,
//! one progress line per iteration, and where it wrote the metrics, samples, plot and policy.

pub mod prepare;
pub mod reviews;

use crate::error::{Error, Result};
use crate::generate::{GenerateOptions, Sampling, generate};
use crate::gpu::Gpu;
use crate::model::Model;
use crate::model::checkpoint::TOKENIZER_FILE;
use crate::ppo::reward::{RewardModel, samples};
use crate::ppo::rollout::Sequences;
use crate::ppo::trainer::{self, METRICS_FILE, PLOT_FILE, SAMPLES_FILE, TrainOptions};
use crate::tokenizer::Tokenizer;
use clap::Parser;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where `cargo run` finds the shipped weights: the crate's own `weights/`.
pub const SHIPPED_WEIGHTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/weights");

/// The options of the default run (`ppo-wgpu demo`; also what `cargo run` with no arguments runs).
#[derive(Clone, Debug, clap::Args)]
pub struct DemoOptions {
    /// The shipped models: policy/ and reward/ (made by prepare-demo).
    #[arg(long, value_name = "DIR", default_value = SHIPPED_WEIGHTS)]
    pub weights: PathBuf,
    /// Output directory; when it exists, the next free DIR-2, DIR-3, … is used (see --overwrite).
    #[arg(long, value_name = "DIR", default_value = "runs/demo")]
    pub out: PathBuf,
    /// Write into --out even if it exists.
    #[arg(long)]
    pub overwrite: bool,
    /// PPO iterations.
    #[arg(long, default_value_t = 30)]
    pub iterations: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// No per-iteration lines.
    #[arg(long)]
    pub quiet: bool,
}

/// The PPO settings of the demo, as `ppo-wgpu train` flags (printed, so that the run can be
/// repeated or varied by hand).
pub fn train_flags(o: &DemoOptions, out: &Path, prompts: &Path) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    let settings = [
        ("--policy", path(&o.weights.join(prepare::POLICY_DIR))),
        ("--reward-model", path(&o.weights.join(prepare::REWARD_DIR))),
        ("--prompts", path(prompts)),
        ("--out", path(out)),
        ("--iterations", o.iterations.to_string()),
        ("--seed", o.seed.to_string()),
        ("--batch-size", "32".into()),
        ("--response-length", RESPONSE_LENGTH.to_string()),
        ("--temperature", "1.0".into()),
        ("--epochs", "2".into()),
        ("--minibatches", "1".into()),
        ("--lr", "2e-4".into()),
        ("--beta", "0.2".into()),
        ("--sample-every", "10".into()),
    ];
    let mut flags: Vec<String> = settings.into_iter().flat_map(|(k, v)| [k.to_string(), v]).collect();
    if o.quiet {
        flags.push("--quiet".into());
    }
    flags
}

/// New tokens per response, in training and in the before/after samples.
const RESPONSE_LENGTH: usize = 24;

#[derive(Parser)]
struct DemoCli {
    #[command(flatten)]
    demo: DemoOptions,
}

impl DemoOptions {
    /// The defaults: what `cargo run` with no arguments runs.
    pub fn defaults() -> DemoOptions {
        DemoCli::parse_from(["demo"]).demo
    }
}

#[derive(Parser)]
struct TrainCli {
    #[command(flatten)]
    train: TrainOptions,
}

/// `dir`, or the first of dir-2, dir-3, … that does not exist.
fn fresh_dir(dir: &Path, overwrite: bool) -> PathBuf {
    if overwrite || !dir.exists() {
        return dir.to_path_buf();
    }
    (2..).map(|i| PathBuf::from(format!("{}-{i}", dir.display()))).find(|d| !d.exists()).expect("a free name")
}

/// Samples one completion per prompt (fixed seed) and scores it with the reward model.
fn show_samples(
    policy: &Model,
    reward: &RewardModel,
    tok: &Tokenizer,
    prompts: &[String],
    seed: u64,
) -> Result<Vec<(String, f32)>> {
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p)).collect::<Result<_>>()?;
    let opts = GenerateOptions {
        max_new_tokens: RESPONSE_LENGTH,
        sampling: Sampling { temperature: 1.0, top_k: 0, top_p: 1.0 },
        seed: seed ^ 0xDE40,
        first_sample: 0,
        eos: tok.eos_id(),
        check_every: 8,
        kv_format: None,
        weight_format: None,
    };
    let generation = generate(policy, &ids, &opts)?;
    let seqs = Sequences::new(&generation, opts.max_new_tokens, tok.eos_id());
    let samples = samples(&generation, tok)?;
    let scores = reward.score(&seqs, &samples)?;
    Ok(samples.into_iter().zip(scores).map(|(s, score)| (format!("{}{}", s.prompt, s.response), score)).collect())
}

fn print_samples(title: &str, samples: &[(String, f32)]) {
    let mean = samples.iter().map(|s| s.1).sum::<f32>() / samples.len().max(1) as f32;
    println!("{title} (mean reward {mean:.2}):");
    for (text, score) in samples {
        println!("  [{score:+.2}] {text}");
    }
}

/// What the demo produced.
pub struct DemoReport {
    pub out: PathBuf,
    pub first_score: f32,
    pub last_score: f32,
    pub last_kl: f32,
}

/// Runs the demo.
pub fn run(gpu: &Arc<Gpu>, opts: &DemoOptions) -> Result<DemoReport> {
    let (policy_dir, reward_dir) = (opts.weights.join(prepare::POLICY_DIR), opts.weights.join(prepare::REWARD_DIR));
    if !policy_dir.join(TOKENIZER_FILE).is_file() || !reward_dir.is_dir() {
        return Err(Error::Input(format!(
            "{}: no shipped demo models (policy/, reward/); make them with `ppo-wgpu prepare-demo --out {}`",
            opts.weights.display(),
            opts.weights.display()
        )));
    }
    println!("adapter: {} (CPU: {})", gpu.describe(), crate::gpu::cpu_model());
    let out = fresh_dir(&opts.out, opts.overwrite);
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    println!("output:  {}", out.display());
    let prompts_path = out.join("prompts.txt");
    crate::model::checkpoint::write_atomically(&prompts_path, (reviews::OPENINGS.join("\n") + "\n").as_bytes())?;
    let flags = train_flags(opts, &out, &prompts_path);
    println!("the same run by hand: ppo-wgpu train {}\n", flags.join(" "));

    let tok = Tokenizer::load(&policy_dir.join(TOKENIZER_FILE))?;
    let reward = RewardModel::load(gpu, &reward_dir, &policy_dir.join(TOKENIZER_FILE))?;
    let shown: Vec<String> = reviews::OPENINGS[..6].iter().map(|s| s.to_string()).collect();
    let phase = gpu.phase("samples before and after");
    let before = show_samples(&crate::model::load(gpu, &policy_dir)?, &reward, &tok, &shown, opts.seed)?;
    print_samples("before PPO", &before);
    println!();

    let args = std::iter::once("train".to_string()).chain(flags);
    let train = TrainCli::try_parse_from(args).map_err(|e| Error::Input(format!("demo settings: {e}")))?.train;
    drop(phase);
    let report = trainer::run(gpu, &train)?;
    let _phase = gpu.phase("samples before and after");

    let after = show_samples(&crate::model::load(gpu, &report.policy)?, &reward, &tok, &shown, opts.seed)?;
    println!();
    print_samples("after PPO", &after);
    let (first, last) = (report.metrics.first(), report.metrics.last());
    let first_score = first.map_or(f32::NAN, |m| m.score_mean);
    let (last_score, last_kl) = last.map_or((f32::NAN, f32::NAN), |m| (m.score_mean, m.kl_mean));
    println!("\nmean reward per rollout {first_score:.2} -> {last_score:.2}, KL to the base policy {last_kl:.2}");
    println!("wrote {}", out.join(METRICS_FILE).display());
    println!("      {}", out.join(SAMPLES_FILE).display());
    println!("      {} (score, KL and entropy per iteration)", out.join(PLOT_FILE).display());
    println!("      {} (the trained policy, a Hugging Face GPT-2 directory)", report.policy.display());
    Ok(DemoReport { out, first_score, last_score, last_kl })
}
