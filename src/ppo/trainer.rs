//! `ppo-wgpu train`: the RLHF loop of docs/design.md §1 and §4. Each iteration samples responses to a
//! batch of prompts on the GPU, scores them (reward model or reward command), computes the KL
//! to the frozen reference and the advantages — PPO: KL-penalised rewards, GAE and whitening;
//! GRPO and RLOO (`--algo`): each completion against the other completions of its prompt — and
//! runs the update for epochs of minibatches.
//!
//! Everything random is a function of (seed, iteration), so a run resumed from a checkpoint
//! draws exactly what an unbroken run would: the prompt order, the sampling streams and the
//! minibatch shuffles. A checkpoint holds the policy with its value head, the optimizer state,
//! the KL controller's β and the iteration; each is written as a whole directory.

use super::algo::{Algo, parse_loss_type};
use super::metrics::{Metrics, plot, read_metrics, rewrite_metrics};
use super::reward::{RewardCommand, RewardModel, RewardSource, check_scores, samples};
use super::rollout::{AdvantageConfig, Sequences, prepare};
use super::update::{LossArgs, UpdateOptions, ppo_update};
use crate::error::{Error, Result};
use crate::generate::{GenerateOptions, Sampling, generate};
use crate::gpu::{Gpu, Recorder};
use crate::kernels::padded_vocab::check_temperature;
use crate::kernels::ppo::{LossType, STAT_NAMES};
use crate::kernels::residual::accumulate;
use crate::kernels::rewards::KlEstimator;
use crate::model::checkpoint::{self, TOKENIZER_FILE, write_dir_atomically};
use crate::model::init::with_heads;
use crate::model::optimizer::{OPTIMIZER_FILE, Optimizer, OptimizerArgs};
use crate::model::{Heads, Model};
use crate::progress;
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the learning rate moves over the iterations (after the warmup).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    Constant,
    /// Linear decay to 0 at the last iteration (TRL's default).
    Linear,
    /// Cosine decay to 0.
    Cosine,
}

/// The options of `ppo-wgpu train` (also its command-line arguments; defaults are TRL's
/// PPOConfig's, GRPOConfig's or RLOOConfig's where it has the setting; those that differ by
/// algorithm are read through the methods below).
#[derive(Clone, Debug, clap::Args)]
pub struct TrainOptions {
    /// The algorithm: ppo (value head, GAE), or the critic-free grpo and rloo (groups of
    /// --num-generations completions per prompt, no value head).
    #[arg(long, value_enum, default_value_t = Algo::Ppo)]
    pub algo: Algo,
    /// Starting policy: a GPT-2 directory with tokenizer.json (for PPO a value head is added,
    /// zero-initialised, if it has none; GRPO and RLOO drop one).
    #[arg(long, value_name = "DIR")]
    pub policy: PathBuf,
    /// Prompts: a text file with one prompt per line, or JSONL with {"prompt": …} per line.
    #[arg(long, value_name = "FILE")]
    pub prompts: PathBuf,
    /// Reward model directory (a GPT-2 with a score.weight head, as reward-train writes).
    #[arg(long, value_name = "DIR", conflicts_with = "reward_cmd", required_unless_present = "reward_cmd")]
    pub reward_model: Option<PathBuf>,
    /// Reward program, run once through the shell: it reads {"prompt", "response"} JSON lines on
    /// stdin and answers one number per line on stdout.
    #[arg(long, value_name = "CMD")]
    pub reward_cmd: Option<String>,
    /// Seconds to wait for the reward command's scores of one batch.
    #[arg(long, default_value_t = 60.0)]
    pub reward_timeout: f64,
    /// Reference model for the KL penalty (default: the starting policy).
    #[arg(long = "ref", value_name = "DIR")]
    pub reference: Option<PathBuf>,
    /// Output directory: checkpoint-N/ directories, the final policy/, metrics.jsonl, samples.jsonl.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 100)]
    pub iterations: usize,
    /// Responses per iteration: batch_size / num_generations prompts, each sampled
    /// num_generations times.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// G, completions per prompt (a group) [default: 1 for ppo, 8 for grpo, 2 for rloo].
    #[arg(long)]
    pub num_generations: Option<usize>,
    /// GRPO: divide each group's centred scores by its standard deviation (false: Dr. GRPO's
    /// unscaled advantages).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub scale_rewards: bool,
    /// How the per-token losses average: grpo (each sequence's mean, then over sequences) or
    /// dapo (over all tokens) [default: grpo for grpo, dapo (a token mean) for ppo and rloo].
    #[arg(long, value_parser = parse_loss_type)]
    pub loss_type: Option<LossType>,
    /// New tokens per response (responses end earlier at <|endoftext|>).
    #[arg(long, default_value_t = 53)]
    pub response_length: usize,
    /// Prompts longer than this many tokens keep their last ones.
    #[arg(long, default_value_t = 64)]
    pub max_prompt_length: usize,
    /// Sampling temperature τ of the rollouts (log-probs are those of softmax(logits/τ))
    /// [default: 0.7 for ppo, 1 for grpo and rloo].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample among the most likely tokens holding probability p.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Epochs over each rollout batch [default: 4 for ppo, 1 for grpo and rloo].
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub minibatches: usize,
    /// Micro-batches per minibatch whose gradients add up before one optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// AdamW learning rate (peak, after the warmup).
    #[arg(long, default_value_t = 3e-6)]
    pub lr: f32,
    #[arg(long, value_enum, default_value_t = LrSchedule::Linear)]
    pub lr_schedule: LrSchedule,
    /// Iterations of linear warmup.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    #[command(flatten)]
    pub optimizer: OptimizerArgs,
    #[command(flatten)]
    pub loss: LossArgs,
    /// γ, the discount.
    #[arg(long, default_value_t = 1.0)]
    pub gamma: f32,
    /// λ of GAE.
    #[arg(long, default_value_t = 0.95)]
    pub lam: f32,
    /// β, the KL coefficient: of the per-token penalty in the rewards (ppo, rloo; the starting
    /// value when --target-kl is set), or of the k3 KL term in the loss (grpo); 0 needs no
    /// reference model [default: 0.05 for ppo and rloo, 0 for grpo].
    #[arg(long)]
    pub beta: Option<f32>,
    /// Per-token KL estimator of the reward penalty: k1 = logp − logp_ref, k3 = (ρ − 1) − log ρ.
    #[arg(long, value_parser = parse_kl_estimator, default_value = "k1")]
    pub kl_estimator: KlEstimator,
    /// Adapt β towards this KL per sequence (Ziegler et al.'s controller); fixed β without it.
    #[arg(long)]
    pub target_kl: Option<f32>,
    /// Horizon of the adaptive KL controller, in samples.
    #[arg(long, default_value_t = 10000.0)]
    pub kl_horizon: f32,
    /// Subtract this from the score of a response that did not end with <|endoftext|>.
    #[arg(long)]
    pub missing_eos_penalty: Option<f32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Save a checkpoint every N iterations (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    /// Print and append to samples.jsonl a few samples every N iterations and at the last (0: never).
    #[arg(long, default_value_t = 10)]
    pub sample_every: usize,
    /// Continue a run from a checkpoint-N directory (or from the run's --out, taking its latest).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Write the first iteration's rollout batch (docs/design.md §6 format) to this file.
    #[arg(long, value_name = "FILE")]
    pub dump_batch: Option<PathBuf>,
    /// During generation, check every N tokens whether all responses have ended (0: never).
    #[arg(long, default_value_t = 16)]
    pub stop_check_every: usize,
    /// No per-iteration lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Read options from a TOML or JSON file of `name = value` (names as the flags, `_` or `-`);
    /// flags on the command line win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl TrainOptions {
    /// The defaults that depend on the algorithm, resolved.
    pub fn epochs(&self) -> usize {
        self.epochs.unwrap_or(self.algo.default_epochs())
    }

    pub fn beta(&self) -> f32 {
        self.beta.unwrap_or(self.algo.default_beta())
    }

    pub fn temperature(&self) -> f32 {
        self.temperature.unwrap_or(self.algo.default_temperature())
    }

    pub fn num_generations(&self) -> usize {
        self.num_generations.unwrap_or(self.algo.default_num_generations())
    }

    pub fn loss_type(&self) -> LossType {
        self.loss_type.unwrap_or(self.algo.default_loss_type())
    }

    /// Whether the run needs the reference model: for a KL penalty or term (β > 0, or the
    /// adaptive controller's).
    pub fn needs_reference(&self) -> bool {
        self.beta() != 0.0 || self.target_kl.is_some()
    }
}

/// The options in a `--config` file as command-line arguments (`--name value`; a switch such as
/// `quiet = true` as `--quiet`), to be placed before the user's own so that those win. TOML when
/// the file ends in .toml, else JSON; a flat table of strings, numbers and booleans, named as
/// `train`'s options.
pub fn config_args(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |e: String| Error::Input(format!("{}: {e}", path.display()));
    let table: serde_json::Map<String, serde_json::Value> = if path.extension().is_some_and(|e| e == "toml") {
        let value: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        serde_json::to_value(value).map_err(|e| bad(e.to_string()))?.as_object().cloned().unwrap_or_default()
    } else {
        serde_json::from_str(&text).map_err(|e| bad(format!("expected a JSON object of options: {e}")))?
    };
    let train = <TrainOptions as clap::Args>::augment_args(clap::Command::new("train"));
    let mut args = Vec::new();
    for (key, value) in table {
        let name = key.replace('_', "-");
        let Some(arg) = train.get_arguments().find(|a| a.get_long() == Some(name.as_str())) else {
            return Err(bad(format!("{key} is not an option of train (see ppo-wgpu train --help)")));
        };
        let flag = format!("--{name}");
        match value {
            // A switch is given or not; an option that takes a boolean (--scale-rewards) takes it.
            serde_json::Value::Bool(b) if !arg.get_action().takes_values() => {
                if b {
                    args.push(flag);
                }
            }
            serde_json::Value::Bool(b) => args.extend([flag, b.to_string()]),
            serde_json::Value::Null => {}
            serde_json::Value::String(s) => args.extend([flag, s]),
            serde_json::Value::Number(n) => args.extend([flag, n.to_string()]),
            other => return Err(bad(format!("option {key} = {other}: expected a string, number or boolean"))),
        }
    }
    Ok(args)
}

fn parse_kl_estimator(s: &str) -> std::result::Result<KlEstimator, String> {
    match s {
        "k1" => Ok(KlEstimator::K1),
        "k3" => Ok(KlEstimator::K3),
        _ => Err(format!("expected k1 or k3, got {s:?}")),
    }
}

/// What a checkpoint holds besides the weights and the optimizer (trainer_state.json).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainerState {
    /// The algorithm of the run (checkpoints from before there was a choice are PPO's).
    #[serde(default)]
    pub algo: Algo,
    /// Iterations completed.
    pub iteration: usize,
    /// The KL coefficient after them.
    pub beta: f64,
    pub seed: u64,
    /// Prompts drawn so far (the position in the seeded prompt order).
    pub prompts_seen: usize,
}

pub const STATE_FILE: &str = "trainer_state.json";
pub use super::metrics::{METRICS_FILE, PLOT_FILE, SAMPLES_FILE};

/// Reads prompts: JSONL lines {"prompt": …} or plain lines; blank lines are skipped.
pub fn read_prompts(path: &Path) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Line {
        prompt: String,
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        if line.trim_start().starts_with('{') {
            let parsed: Line = serde_json::from_str(line).map_err(|e| {
                Error::Input(format!("{}:{}: expected {{\"prompt\": \"…\"}}: {e}", path.display(), i + 1))
            })?;
            prompts.push(parsed.prompt);
        } else {
            prompts.push(line.to_string());
        }
    }
    if prompts.is_empty() {
        return Err(Error::Input(format!("{}: no prompts (one per line, or JSONL {{\"prompt\": …}})", path.display())));
    }
    Ok(prompts)
}

/// The learning rate at iteration `it` of `total`.
pub fn scheduled_lr(opts: &TrainOptions, it: usize) -> f32 {
    if it < opts.warmup {
        return opts.lr * (it + 1) as f32 / opts.warmup as f32;
    }
    let span = opts.iterations.saturating_sub(opts.warmup).max(1);
    let progress = ((it - opts.warmup) as f32 / span as f32).min(1.0);
    match opts.lr_schedule {
        LrSchedule::Constant => opts.lr,
        LrSchedule::Linear => opts.lr * (1.0 - progress),
        LrSchedule::Cosine => opts.lr * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos()),
    }
}

/// The adaptive KL controller (Ziegler et al. 2019): β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon).
pub fn adapt_beta(beta: f64, kl: f64, target: f64, n: f64, horizon: f64) -> f64 {
    let error = (kl / target - 1.0).clamp(-0.2, 0.2);
    beta * (1.0 + error * n / horizon)
}

/// Prompts for global sample indices start .. start + n: the prompt list is walked in a new
/// seeded order every pass.
fn prompt_indices(count: usize, seed: u64, start: usize, n: usize) -> Vec<usize> {
    let mut pass_order: Option<(usize, Vec<usize>)> = None;
    (start..start + n)
        .map(|g| {
            let pass = g / count;
            if pass_order.as_ref().is_none_or(|(p, _)| *p != pass) {
                let mut order: Vec<usize> = (0..count).collect();
                Rng::derived(seed, 0x5052_4f4d_5054 ^ pass as u64).shuffle(&mut order);
                pass_order = Some((pass, order));
            }
            pass_order.as_ref().unwrap().1[g % count]
        })
        .collect()
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub metrics: Vec<Metrics>,
    /// The final policy directory.
    pub policy: PathBuf,
}

/// Runs PPO as `opts` says.
pub fn run(gpu: &Arc<Gpu>, opts: &TrainOptions) -> Result<TrainReport> {
    validate(opts)?;
    let tokenizer_path = opts.policy.join(TOKENIZER_FILE);
    let tok = Tokenizer::load(&tokenizer_path)?;
    let eos = tok.eos_id();
    let resume_dir = opts.resume.as_deref().map(|d| checkpoint::to_resume(d, STATE_FILE)).transpose()?;

    // The policy (with a value head for PPO), the frozen reference (when there is a KL), the reward.
    let start_ck = checkpoint::load(resume_dir.as_deref().unwrap_or(&opts.policy))?;
    let heads = Heads { value: opts.algo.has_value_head(), reward: false };
    let policy = Model::upload(gpu, &with_heads(start_ck, heads))?;
    let reference = if opts.needs_reference() {
        Some(crate::model::load(gpu, opts.reference.as_deref().unwrap_or(&opts.policy))?)
    } else {
        None
    };
    if let Some(reference) = reference.as_ref().filter(|r| r.config.vocab_size != policy.config.vocab_size) {
        return Err(Error::Input(format!(
            "the reference model's vocab_size {} differs from the policy's {}",
            reference.config.vocab_size, policy.config.vocab_size
        )));
    }
    let mut reward = match (&opts.reward_model, &opts.reward_cmd) {
        (Some(dir), _) => RewardSource::Model(Box::new(RewardModel::load(gpu, dir, &tokenizer_path)?)),
        (None, Some(cmd)) => {
            RewardSource::Command(RewardCommand::spawn(cmd, Duration::from_secs_f64(opts.reward_timeout))?)
        }
        (None, None) => return Err(Error::Input("train needs --reward-model DIR or --reward-cmd CMD".into())),
    };

    // Prompts, cut to fit n_positions with the responses.
    let room = policy.config.n_positions.min(reference.as_ref().map_or(usize::MAX, |r| r.config.n_positions));
    if opts.response_length >= room {
        return Err(Error::Input(format!(
            "--response-length {} leaves no room for a prompt in n_positions {room}",
            opts.response_length
        )));
    }
    let max_prompt = opts.max_prompt_length.min(room - opts.response_length);
    let texts = read_prompts(&opts.prompts)?;
    let mut prompts = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let ids = tok.encode(text)?;
        if ids.is_empty() {
            return Err(Error::Input(format!("{}: prompt {} encodes to no tokens", opts.prompts.display(), i + 1)));
        }
        prompts.push(ids[ids.len().saturating_sub(max_prompt)..].to_vec());
    }

    let mut rec = Recorder::new(gpu);
    let mut opt = opts.optimizer.build(&policy, &mut rec, opts.lr)?;
    rec.submit();
    let mut state =
        TrainerState { algo: opts.algo, iteration: 0, beta: opts.beta() as f64, seed: opts.seed, prompts_seen: 0 };
    if let Some(dir) = &resume_dir {
        opt.load(&policy, dir)?;
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        state = serde_json::from_str(&text).map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))?;
        if state.seed != opts.seed {
            return Err(Error::Input(format!(
                "{} was made with --seed {}, not {}: resume with the run's seed",
                dir.display(),
                state.seed,
                opts.seed
            )));
        }
        if state.algo != opts.algo {
            return Err(Error::Input(format!(
                "{} was made with --algo {}, not {}: resume with the run's algorithm",
                dir.display(),
                state.algo,
                opts.algo
            )));
        }
    }

    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let metrics_path = opts.out.join(METRICS_FILE);
    let mut history = read_metrics(&metrics_path, state.iteration)?;
    rewrite_metrics(&metrics_path, &history)?;
    let mut metrics_file = append(&metrics_path)?;
    let samples_path = opts.out.join(SAMPLES_FILE);
    let tokenizer_bytes = std::fs::read(&tokenizer_path).map_err(|e| Error::io(&tokenizer_path, e))?;
    let mut last_checkpoint = resume_dir.clone();

    let save = |policy: &Model, opt: &Optimizer, state: &TrainerState, dir: &Path| -> Result<()> {
        let mut files = checkpoint::model_files(&policy.download()?)?;
        files.push((TOKENIZER_FILE, tokenizer_bytes.clone()));
        files.push((OPTIMIZER_FILE, opt.state_bytes(policy)?));
        files.push((STATE_FILE, serde_json::to_vec_pretty(state).expect("the state serialises")));
        write_dir_atomically(dir, &files)
    };

    let sampling = Sampling { temperature: opts.temperature(), top_k: opts.top_k, top_p: opts.top_p };
    let b = opts.batch_size;
    // Each prompt of an iteration is sampled G times, in consecutive rows (a group).
    let group = opts.num_generations();
    let prompts_per_iteration = b / group;
    let bar = progress::bar(opts.iterations as u64, "train", opts.quiet);
    bar.set_position(state.iteration as u64);
    for it in state.iteration..opts.iterations {
        // Buffers of shapes the last iteration did not use go (the longest prompt changes the
        // rollout's shapes from one iteration to the next).
        gpu.trim_pool();
        let iteration = gpu.iteration();
        let started = Instant::now();
        let rollout_phase = gpu.phase("rollout: generation");
        let rows: Vec<Vec<u32>> =
            prompt_indices(prompts.len(), opts.seed, it * prompts_per_iteration, prompts_per_iteration)
                .into_iter()
                .flat_map(|i| std::iter::repeat_n(prompts[i].clone(), group))
                .collect();
        let gen_opts = GenerateOptions {
            max_new_tokens: opts.response_length,
            sampling,
            seed: opts.seed,
            first_sample: it * b,
            eos,
            check_every: opts.stop_check_every,
            kv_format: None,
            weight_format: None,
        };
        let generation = generate(&policy, &rows, &gen_opts)?;
        let seqs = Sequences::new(&generation, opts.response_length, eos);
        let time_rollout = rollout_phase.finish();

        // The scores stay on the GPU (a reward model's forward runs with the rollout's, below);
        // they come back with the rollout's statistics.
        let scoring = gpu.phase("scoring");
        let samples = samples(&generation, &tok)?;
        let mut rec = Recorder::new(gpu);
        let scores = reward.record_scores(&mut rec, &seqs, &samples).map_err(|e| at_iteration(e, it + 1))?;
        if let Some(penalty) = opts.missing_eos_penalty {
            let penalties: Vec<f32> = seqs.ended.iter().map(|&ended| if ended { 0.0 } else { -penalty }).collect();
            accumulate(&mut rec, &scores, &gpu.upload(&[b], &penalties)?)?;
        }
        rec.submit();
        let time_score = scoring.finish();

        let forwards = gpu.phase("policy and reference forwards, advantages");
        let beta = state.beta as f32;
        let adv = AdvantageConfig {
            algo: opts.algo,
            temperature: opts.temperature(),
            beta,
            kl_estimator: opts.kl_estimator,
            gamma: opts.gamma,
            lam: opts.lam,
            num_generations: group,
            scale_rewards: opts.scale_rewards,
        };
        let rollout = prepare(&policy, reference.as_ref(), &seqs, &scores, &adv)?;
        let scores = rollout.scores.clone();
        check_scores(&scores, &samples, reward.name()).map_err(|e| at_iteration(e, it + 1))?;
        let mut time_update = forwards.finish();
        if let (Some(path), true) = (&opts.dump_batch, it == state.iteration) {
            rollout.to_file()?.save(path)?;
        }
        let updating = gpu.phase("update");
        let lr = scheduled_lr(opts, it);
        let update_opts = UpdateOptions {
            algo: opts.algo,
            epochs: opts.epochs(),
            minibatches: opts.minibatches,
            lr,
            loss: opts.loss.config(opts.algo, adv.temperature, beta, opts.loss_type()),
            grad_accum: opts.grad_accum,
            seed: Some(Rng::derived(opts.seed, 0x4d49_4e49 ^ it as u64).next_u64()),
        };
        let (stats, _) = ppo_update(&policy, &mut opt, &rollout.batch, &update_opts, false)?;
        if let Some(k) = stats.means.iter().position(|x| !x.is_finite()) {
            return Err(Error::Diverged(format!(
                "iteration {}: {} is {} (gradient norm {}); last good checkpoint: {}",
                it + 1,
                STAT_NAMES[k],
                stats.means[k],
                stats.grad_norm,
                last_checkpoint.as_ref().map_or("none yet".into(), |p| p.display().to_string())
            )));
        }
        if !stats.grad_norm.is_finite() {
            return Err(Error::Diverged(format!(
                "iteration {}: the gradient norm is {}; last good checkpoint: {}",
                it + 1,
                stats.grad_norm,
                last_checkpoint.as_ref().map_or("none yet".into(), |p| p.display().to_string())
            )));
        }
        // (time_update_s: the forwards and advantages, and the update)
        time_update += updating.finish();

        if let Some(target) = opts.target_kl {
            state.beta =
                adapt_beta(state.beta, rollout.stats.kl_mean as f64, target as f64, b as f64, opts.kl_horizon as f64);
        }
        state.iteration = it + 1;
        state.prompts_seen = (it + 1) * prompts_per_iteration;

        let n = b as f32;
        let score_mean = scores.iter().sum::<f32>() / n;
        let score_std = (scores.iter().map(|s| (s - score_mean).powi(2)).sum::<f32>() / (n - 1.0).max(1.0)).sqrt();
        let critic = opts.algo.has_value_head();
        let m = Metrics {
            iteration: it + 1,
            algo: opts.algo,
            score_mean,
            score_std,
            frac_reward_zero_std: (group > 1).then(|| frac_zero_std(&scores, group)),
            kl_mean: rollout.stats.kl_mean,
            beta,
            lr,
            loss: stats.get("loss"),
            pg_loss: stats.get("pg_loss"),
            vf_loss: critic.then(|| stats.get("vf_loss")),
            entropy: rollout.stats.entropy_mean,
            approx_kl: stats.get("approx_kl"),
            clipfrac: stats.get("clipfrac"),
            vf_clipfrac: critic.then(|| stats.get("vf_clipfrac")),
            ratio_mean: stats.get("ratio"),
            explained_variance: rollout.stats.explained_variance,
            value_mean: rollout.stats.value_mean,
            response_len_mean: seqs.mean_response_len(),
            tokens_per_s: rollout.stats.tokens / started.elapsed().as_secs_f32(),
            time_rollout_s: time_rollout,
            time_score_s: time_score,
            time_update_s: time_update,
        };
        writeln!(metrics_file, "{}", serde_json::to_string(&m).expect("metrics serialise"))
            .map_err(|e| Error::io(&metrics_path, e))?;
        bar.set_message(format!("score {:.3}  kl {:.3}  {:.0} tok/s", m.score_mean, m.kl_mean, m.tokens_per_s));
        bar.inc(1);
        progress::say(&bar, opts.quiet, &progress_line(&m, opts.iterations));
        if opts.sample_every > 0 && ((it + 1) % opts.sample_every == 0 || it + 1 == opts.iterations) {
            let mut file = append(&samples_path)?;
            for (i, s) in samples.iter().enumerate().take(4) {
                let line = serde_json::json!({
                    "iteration": it + 1, "prompt": s.prompt, "response": s.response, "score": scores[i]
                });
                writeln!(file, "{line}").map_err(|e| Error::io(&samples_path, e))?;
                progress::say(&bar, opts.quiet, &format!("  [{:.3}] {}|{}", scores[i], s.prompt, s.response));
            }
        }
        history.push(m);
        let done = it + 1;
        if done == opts.iterations || (opts.save_every > 0 && done % opts.save_every == 0) {
            let dir = opts.out.join(format!("checkpoint-{done}"));
            drop(iteration); // the counts per iteration leave checkpoints out
            let _phase = gpu.phase("checkpoint");
            save(&policy, &opt, &state, &dir)?;
            plot(&history, &opts.out.join(PLOT_FILE))?;
            last_checkpoint = Some(dir);
        }
    }
    bar.finish_and_clear();

    // The final policy as a plain Hugging Face directory (the value head rides along under
    // TRL's names; transformers' GPT2LMHeadModel ignores it).
    let policy_dir = opts.out.join("policy");
    let mut files = checkpoint::model_files(&policy.download()?)?;
    files.push((TOKENIZER_FILE, tokenizer_bytes.clone()));
    write_dir_atomically(&policy_dir, &files)?;
    Ok(TrainReport { metrics: history, policy: policy_dir })
}

/// The fraction of the groups of `group` consecutive scores that all tie (TRL's
/// frac_reward_zero_std: groups that teach GRPO nothing).
fn frac_zero_std(scores: &[f32], group: usize) -> f32 {
    let groups = scores.chunks(group);
    let n = groups.len().max(1) as f32;
    groups.filter(|g| g.iter().all(|s| *s == g[0])).count() as f32 / n
}

fn validate(opts: &TrainOptions) -> Result<()> {
    let group = opts.num_generations();
    let critic_free = !opts.algo.has_value_head();
    let checks = [
        (opts.batch_size > 0, "--batch-size must be positive"),
        (group > 0 && opts.batch_size.is_multiple_of(group), "--batch-size must be a multiple of --num-generations"),
        (
            !critic_free || group >= 2,
            "--num-generations must be at least 2 for grpo and rloo (each completion is compared with its group)",
        ),
        (opts.epochs() > 0, "--epochs must be positive"),
        (opts.scale_rewards || opts.algo == Algo::Grpo, "--scale-rewards applies to grpo's advantages only"),
        (opts.beta() >= 0.0, "--beta must not be negative"),
        (opts.response_length > 0, "--response-length must be positive"),
        (opts.max_prompt_length > 0, "--max-prompt-length must be positive"),
        (opts.reward_timeout > 0.0, "--reward-timeout must be positive"),
        (opts.kl_horizon > 0.0, "--kl-horizon must be positive"),
        (opts.target_kl.is_none_or(|t| t > 0.0), "--target-kl must be positive"),
    ];
    for (ok, msg) in checks {
        if !ok {
            return Err(Error::Input(msg.into()));
        }
    }
    // The log-probs are those of softmax(logits/τ): greedy rollouts (τ = 0) have none.
    check_temperature(opts.temperature(), "--temperature")?;
    Sampling { temperature: opts.temperature(), top_k: opts.top_k, top_p: opts.top_p }.validate()
}

fn at_iteration(e: Error, it: usize) -> Error {
    match e {
        Error::Reward(msg) => Error::Reward(format!("iteration {it}: {msg}")),
        other => other,
    }
}

fn append(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))
}

/// `iter 12/100  score 0.412 ±0.210  kl 0.031  β 0.050  pg -0.012  vf 0.084  H 2.31  1890 tok/s  (rollout 1.2s, score 0.1s, update 2.4s)`
/// (GRPO and RLOO show the fraction of tied groups, `tied 0.25`, where PPO shows `vf`).
fn progress_line(m: &Metrics, total: usize) -> String {
    let middle = match (m.vf_loss, m.frac_reward_zero_std) {
        (Some(vf), _) => format!("vf {vf:.4}"),
        (None, Some(tied)) => format!("tied {tied:.2}"),
        (None, None) => String::new(),
    };
    format!(
        "iter {}/{total}  score {:.3} ±{:.3}  kl {:.4}  β {:.3}  pg {:.4}  {middle}  H {:.2}  {:.0} tok/s  (rollout {:.1}s, score {:.1}s, update {:.1}s)",
        m.iteration,
        m.score_mean,
        m.score_std,
        m.kl_mean,
        m.beta,
        m.pg_loss,
        m.entropy,
        m.tokens_per_s,
        m.time_rollout_s,
        m.time_score_s,
        m.time_update_s
    )
}
