//! `ppo-wgpu prepare-demo`: makes every shipped file of `weights/` from nothing, with the
//! project's own commands, deterministically (same seed, same adapter, same bytes):
//!
//! 1. the review task's data (`reviews.rs`): an SFT corpus, preference pairs, prompts;
//! 2. `tokenizer-train` on the corpus;
//! 3. `init` a small GPT-2 and `sft` it on the corpus: the base policy, which writes reviews
//!    of mixed sentiment;
//! 4. `reward-train` a copy of the base policy on the preference pairs: the reward model;
//! 5. both written in f16 as Hugging Face directories (`policy/`, `reward/`), with a README
//!    recording how they were made, how long it took and the reward model's held-out accuracy.

use super::reviews;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::checkpoint::{self, TOKENIZER_FILE, write_atomically, write_dir_atomically};
use crate::model::optimizer::OptimizerArgs;
use crate::model::{GptConfig, Heads, init::init_weights};
use crate::reward_train::{self, RewardTrainOptions};
use crate::sft::{self, SftOptions};
use crate::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The shipped demo model: small enough that PPO on a 2-core CPU without a GPU takes minutes.
pub fn demo_config(vocab_size: usize) -> GptConfig {
    GptConfig { vocab_size, n_positions: 48, n_embd: 64, n_layer: 2, n_head: 4, layer_norm_epsilon: 1e-5 }
}

/// The options of `ppo-wgpu prepare-demo` (also its command-line arguments).
#[derive(Clone, Debug, clap::Args)]
pub struct PrepareOptions {
    /// Where the shipped directories go (policy/, reward/, README.md).
    #[arg(long, value_name = "DIR", default_value = "weights")]
    pub out: PathBuf,
    /// Keep the data and intermediate checkpoints here (default: a temporary directory, removed).
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Reviews in the SFT corpus.
    #[arg(long, default_value_t = 3000)]
    pub reviews: usize,
    /// Preference pairs for the reward model.
    #[arg(long, default_value_t = 5000)]
    pub pairs: usize,
    /// Tokenizer vocabulary (bytes and <|endoftext|> included).
    #[arg(long, default_value_t = 320)]
    pub vocab_size: usize,
    /// SFT steps (batch 32).
    #[arg(long, default_value_t = 600)]
    pub sft_steps: usize,
    /// Reward-model epochs over the pairs (batch 32).
    #[arg(long, default_value_t = 3)]
    pub reward_epochs: usize,
    /// No progress bars or per-stage lines.
    #[arg(long)]
    pub quiet: bool,
}

/// What a preparation produced.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub policy: PathBuf,
    pub reward: PathBuf,
    pub sft_eval_loss: f32,
    pub reward_accuracy: f32,
    /// (stage, seconds).
    pub timings: Vec<(&'static str, f64)>,
}

pub const POLICY_DIR: &str = "policy";
pub const REWARD_DIR: &str = "reward";

fn write_lines(path: &Path, lines: &[String]) -> Result<()> {
    write_atomically(path, (lines.join("\n") + "\n").as_bytes())
}

/// Runs every stage; see the module comment.
pub fn run(gpu: &Arc<Gpu>, opts: &PrepareOptions) -> Result<Prepared> {
    if opts.reviews < 10 || opts.pairs < 10 || opts.sft_steps == 0 || opts.reward_epochs == 0 {
        return Err(Error::Input("prepare-demo needs at least 10 reviews and pairs, and some steps".into()));
    }
    let temporary = opts.work.is_none();
    let work = opts
        .work
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("ppo-wgpu-prepare-{}", std::process::id())));
    std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
    let say = |line: String| {
        if !opts.quiet {
            eprintln!("{line}");
        }
    };
    let mut timings = Vec::new();
    let mut clock = Instant::now();
    let mut lap = |stage: &'static str, timings: &mut Vec<(&'static str, f64)>| {
        timings.push((stage, clock.elapsed().as_secs_f64()));
        clock = Instant::now();
    };

    // 1. Data.
    let corpus = reviews::corpus(opts.seed, opts.reviews);
    write_lines(&work.join("corpus.txt"), &corpus)?;
    let sft_data: Vec<String> = corpus.iter().map(|t| serde_json::json!({ "text": t }).to_string()).collect();
    write_lines(&work.join("sft.jsonl"), &sft_data)?;
    let pairs = reviews::preference_pairs(opts.seed ^ 0x5041_4952, opts.pairs);
    let pair_lines: Vec<String> = pairs.iter().map(|p| serde_json::to_string(p).expect("strings serialise")).collect();
    write_lines(&work.join("pairs.jsonl"), &pair_lines)?;
    write_lines(&work.join("prompts.txt"), &reviews::OPENINGS.map(String::from))?;
    say(format!("prepare-demo: {} reviews, {} preference pairs in {}", corpus.len(), pairs.len(), work.display()));
    lap("data", &mut timings);

    // 2. Tokenizer; 3. base policy.
    let base = work.join("base");
    let tok = Tokenizer::train_byte_level_bpe(&work.join("corpus.txt"), opts.vocab_size, &base.join(TOKENIZER_FILE))?;
    let config = demo_config(tok.vocab_size());
    checkpoint::save(&base, &init_weights(&config, Heads::default(), opts.seed))?;
    lap("tokenizer-train + init", &mut timings);
    let sft_out = work.join("sft");
    let sft_opts = SftOptions {
        model: base.clone(),
        data: work.join("sft.jsonl"),
        out: sft_out.clone(),
        steps: opts.sft_steps,
        batch_size: 32,
        seq_len: Some(config.n_positions),
        lr: 3e-3,
        warmup: opts.sft_steps / 20,
        optimizer: OptimizerArgs::default(),
        eval_fraction: 0.05,
        eval_every: 0,
        save_every: 0,
        seed: opts.seed,
        resume: None,
        quiet: opts.quiet,
    };
    let sft_report = sft::run(gpu, &sft_opts)?;
    say(format!("  sft: held-out loss {:.3} -> {:.3}", sft_report.first_eval_loss, sft_report.final_eval_loss));
    lap("sft", &mut timings);

    // 4. Reward model, from the base policy.
    let reward_out = work.join("reward");
    let rm_opts = RewardTrainOptions {
        base: sft_out.clone(),
        pairs: work.join("pairs.jsonl"),
        out: reward_out.clone(),
        epochs: opts.reward_epochs,
        batch_size: 32,
        lr: 1e-3,
        warmup: 0,
        optimizer: OptimizerArgs::default(),
        max_length: None,
        eval_fraction: 0.1,
        seed: opts.seed,
        quiet: opts.quiet,
    };
    let reports = reward_train::run(gpu, &rm_opts)?;
    let accuracy = reports.last().map_or(0.0, |r| r.eval_accuracy);
    say(format!("  reward model: held-out accuracy {accuracy:.3}"));
    lap("reward-train", &mut timings);

    // 5. The shipped directories, in f16.
    let tokenizer_bytes = std::fs::read(base.join(TOKENIZER_FILE)).map_err(|e| Error::io(&base, e))?;
    let (policy, reward) = (opts.out.join(POLICY_DIR), opts.out.join(REWARD_DIR));
    for (from, to) in [(&sft_out, &policy), (&reward_out, &reward)] {
        let mut files = checkpoint::model_files_as(&checkpoint::load(from)?, true)?;
        files.push((TOKENIZER_FILE, tokenizer_bytes.clone()));
        write_dir_atomically(to, &files)?;
    }
    lap("write f16", &mut timings);
    let prepared =
        Prepared { policy, reward, sft_eval_loss: sft_report.final_eval_loss, reward_accuracy: accuracy, timings };
    write_atomically(&opts.out.join("README.md"), readme(gpu, opts, &config, &prepared, pairs.len()).as_bytes())?;
    if temporary {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(prepared)
}

fn readme(gpu: &Gpu, opts: &PrepareOptions, config: &GptConfig, p: &Prepared, n_pairs: usize) -> String {
    let total: f64 = p.timings.iter().map(|t| t.1).sum();
    let stages: Vec<String> = p.timings.iter().map(|(s, t)| format!("| {s} | {t:.1} s |")).collect();
    let cpu = crate::gpu::cpu_model();
    format!(
        "# weights/

The models the default run (`cargo run --release`) trains with, each a Hugging Face GPT-2
directory (`config.json`, `model.safetensors` in f16, `tokenizer.json`), made by the project's
own commands from data the project generates (`src/demo/reviews.rs`: short movie reviews, and
preference pairs labelled by a hidden rule — the more positive review wins, then the more fluent).

| directory | what | made by |
| --- | --- | --- |
| `policy/` | the base policy: writes reviews of mixed sentiment | `tokenizer-train` + `init` + `sft` ({sft} steps on {reviews} reviews; held-out loss {loss:.3}) |
| `reward/` | the reward model (`score.weight` head) | `reward-train` on {pairs} preference pairs, {epochs} epochs; **held-out accuracy {acc:.3}** |

Model: {layers} layers, n_embd {embd}, {heads} heads, vocabulary {vocab}, {positions} positions.

Regenerate everything, deterministically (same seed and adapter, same bytes):

    cargo run --release -- prepare-demo --out weights --seed {seed}

## The recorded run

On {adapter}, CPU {cpu}:

| stage | time |
| --- | --- |
{stages}
| total | {total:.1} s |
",
        sft = opts.sft_steps,
        reviews = opts.reviews,
        loss = p.sft_eval_loss,
        pairs = n_pairs,
        epochs = opts.reward_epochs,
        acc = p.reward_accuracy,
        layers = config.n_layer,
        embd = config.n_embd,
        heads = config.n_head,
        vocab = config.vocab_size,
        positions = config.n_positions,
        seed = opts.seed,
        adapter = gpu.describe(),
        stages = stages.join("\n"),
    )
}
