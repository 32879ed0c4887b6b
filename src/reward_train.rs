//! `ppo-wgpu reward-train`: a reward model from preference pairs (docs/design.md §4): a GPT-2 with a
//! `score.weight` head (GPT2ForSequenceClassification's layout) trained with the
//! Bradley–Terry loss L = mean −log σ(r_chosen − r_rejected), each sequence scored at its last
//! real token — where `train --reward-model` reads it.
//!
//! Data is JSONL `{"prompt", "chosen", "rejected"}`. Each step scores the chosen and rejected
//! sequences of a batch of pairs in one forward, computes the loss and its gradient on the GPU
//! (`bradley_terry`), and runs the backward through the score head (the LM head receives a
//! zero gradient) and AdamW, in one submit; the pairs' losses come back for the metrics.

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder};
use crate::kernels::preference::bradley_terry;
use crate::model::checkpoint::{self, TOKENIZER_FILE, write_dir_atomically};
use crate::model::init::with_heads;
use crate::model::optimizer::{OptimizerArgs, learning_rate};
use crate::model::{Batch, Heads, Model, Params};
use crate::progress;
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The options of `ppo-wgpu reward-train` (also its command-line arguments).
#[derive(Clone, Debug, clap::Args)]
pub struct RewardTrainOptions {
    /// Starting model directory (with tokenizer.json); a zero score head is added.
    #[arg(long, value_name = "DIR")]
    pub base: PathBuf,
    /// JSONL preference pairs: {"prompt", "chosen", "rejected"} per line.
    #[arg(long, value_name = "FILE")]
    pub pairs: PathBuf,
    /// Output model directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Pairs per step.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Peak AdamW learning rate (after the warmup; cosine decay to a tenth of it).
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f32,
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    #[command(flatten)]
    pub optimizer: OptimizerArgs,
    /// Tokens per sequence at most (longer ones keep their last tokens); n_positions by default.
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Fraction of the pairs held out for the accuracy.
    #[arg(long, default_value_t = 0.1)]
    pub eval_fraction: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// No per-epoch lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// One preference pair, tokenized: prompt + chosen and prompt + rejected (each with
/// <|endoftext|> when the tokenizer has it).
#[derive(Clone, Debug)]
pub struct Pair {
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

/// Reads JSONL pairs; sequences longer than `max_len` keep their last tokens.
pub fn read_pairs(path: &Path, tok: &Tokenizer, max_len: usize) -> Result<Vec<Pair>> {
    #[derive(Deserialize)]
    struct Line {
        prompt: String,
        chosen: String,
        rejected: String,
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let encode = |prompt: &str, response: &str| -> Result<Vec<u32>> {
        let mut ids = tok.encode(&format!("{prompt}{response}"))?;
        ids.extend(tok.eos_id());
        Ok(ids[ids.len().saturating_sub(max_len)..].to_vec())
    };
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let l: Line = serde_json::from_str(line).map_err(|e| {
            Error::Input(format!(
                "{}:{}: expected {{\"prompt\", \"chosen\", \"rejected\"}} strings: {e}",
                path.display(),
                i + 1
            ))
        })?;
        let pair = Pair { chosen: encode(&l.prompt, &l.chosen)?, rejected: encode(&l.prompt, &l.rejected)? };
        if pair.chosen.is_empty() || pair.rejected.is_empty() {
            return Err(Error::Input(format!("{}:{}: an empty sequence", path.display(), i + 1)));
        }
        pairs.push(pair);
    }
    if pairs.len() < 2 {
        return Err(Error::Input(format!("{}: need at least 2 pairs (one to train on, one held out)", path.display())));
    }
    Ok(pairs)
}

/// Loss and accuracy of one epoch.
#[derive(Clone, Copy, Debug)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f32,
    pub eval_loss: f32,
    pub eval_accuracy: f32,
}

/// A batch of pairs as 2N right-padded rows of T tokens (chosen, rejected, chosen, …).
fn collate(gpu: &Arc<Gpu>, model: &Model, pairs: &[&Pair], t: usize) -> Result<Batch> {
    let rows = 2 * pairs.len();
    let (mut ids, mut mask) = (vec![0u32; rows * t], vec![0u32; rows * t]);
    for (i, seq) in pairs.iter().flat_map(|p| [&p.chosen, &p.rejected]).enumerate() {
        ids[i * t..i * t + seq.len()].copy_from_slice(seq);
        mask[i * t..i * t + seq.len()].iter_mut().for_each(|m| *m = 1);
    }
    Batch::new(gpu, &model.config, &ids, &mask, rows, t)
}

/// Records the loss (and, with `grads`, the backward) of a batch; returns its pair statistics
/// tensor [N, 2] (loss, correct).
fn record(rec: &mut Recorder, model: &Model, batch: &Batch, grads: Option<&Params>) -> Result<crate::gpu::Tensor> {
    let gpu = model.gpu();
    let (drewards, stats) = (gpu.tensor(&[batch.b, batch.t], DType::F32)?, gpu.tensor(&[batch.b / 2, 2], DType::F32)?);
    // No language-modelling loss: no LM head, forward or backward.
    let acts = model.forward_without_logits(rec, batch)?;
    let rewards = acts.rewards.as_ref().expect("the model has a score head");
    bradley_terry(rec, &drewards, &stats, rewards, &batch.mask)?;
    if let Some(grads) = grads {
        model.backward(rec, batch, &acts, None, Some(&drewards), grads)?;
    }
    Ok(stats)
}

/// Mean (loss, accuracy) over `pairs`.
fn evaluate(model: &Model, pairs: &[Pair], batch_size: usize, t: usize) -> Result<(f32, f32)> {
    let gpu = model.gpu();
    let (mut loss, mut correct) = (0.0f64, 0.0f64);
    for chunk in pairs.chunks(batch_size) {
        let refs: Vec<&Pair> = chunk.iter().collect();
        let mut rec = Recorder::new(gpu);
        let stats = record(&mut rec, model, &collate(gpu, model, &refs, t)?, None)?;
        rec.submit();
        for s in gpu.download(&stats)?.chunks(2) {
            loss += s[0] as f64;
            correct += s[1] as f64;
        }
    }
    let n = pairs.len().max(1) as f64;
    Ok(((loss / n) as f32, (correct / n) as f32))
}

/// Trains a reward model as `opts` says and writes it to `opts.out`.
pub fn run(gpu: &Arc<Gpu>, opts: &RewardTrainOptions) -> Result<Vec<EpochReport>> {
    if opts.epochs == 0 || opts.batch_size == 0 {
        return Err(Error::Input("--epochs and --batch-size must be positive".into()));
    }
    let tokenizer_path = opts.base.join(TOKENIZER_FILE);
    let tok = Tokenizer::load(&tokenizer_path)?;
    let ck = with_heads(checkpoint::load(&opts.base)?, Heads { value: false, reward: true });
    let max_len = opts.max_length.unwrap_or(ck.config.n_positions);
    if max_len < 1 || max_len > ck.config.n_positions {
        return Err(Error::Input(format!("--max-length {max_len} must be in 1..={}", ck.config.n_positions)));
    }
    let mut pairs = read_pairs(&opts.pairs, &tok, max_len)?;
    Rng::new(opts.seed).shuffle(&mut pairs);
    let n_eval = ((pairs.len() as f32 * opts.eval_fraction).ceil() as usize).clamp(1, pairs.len() - 1);
    let eval_set = pairs.split_off(pairs.len() - n_eval);
    let t = pairs.iter().chain(&eval_set).map(|p| p.chosen.len().max(p.rejected.len())).max().unwrap_or(1);

    let model = Model::upload(gpu, &ck)?;
    let mut rec = Recorder::new(gpu);
    let mut opt = opts.optimizer.build(&model, &mut rec, opts.lr)?;
    let grads = model.zeros_like_params(&mut rec)?;
    rec.submit();

    let steps_per_epoch = pairs.len().div_ceil(opts.batch_size);
    let total = steps_per_epoch * opts.epochs;
    let mut rng = Rng::new(opts.seed ^ 0x5245_5741_5244);
    let mut reports = Vec::new();
    let bar = progress::bar(total as u64, "reward-train", opts.quiet);
    for epoch in 0..opts.epochs {
        rng.shuffle(&mut pairs);
        let (mut train_loss, mut seen) = (0.0f64, 0usize);
        for (k, chunk) in pairs.chunks(opts.batch_size).enumerate() {
            let refs: Vec<&Pair> = chunk.iter().collect();
            let lr = learning_rate(opts.lr, epoch * steps_per_epoch + k, opts.warmup, total, 0.1);
            gpu.trim_pool(); // buffers the last step did not use go (an epoch's last, shorter batch)
            let (_iteration, _phase) = (gpu.iteration(), gpu.phase("training step"));
            let mut rec = Recorder::new(gpu);
            rec.zero(&grads.flat);
            let stats = record(&mut rec, &model, &collate(gpu, &model, &refs, t)?, Some(&grads))?;
            opt.update(&mut rec, &model, &grads.flat, lr)?;
            rec.submit();
            train_loss += gpu.download(&stats)?.chunks(2).map(|s| s[0] as f64).sum::<f64>();
            seen += chunk.len();
            bar.set_message(format!("epoch {} loss {:.4}", epoch + 1, train_loss / seen as f64));
            bar.inc(1);
        }
        let (eval_loss, eval_accuracy) = {
            let _phase = gpu.phase("evaluation");
            evaluate(&model, &eval_set, opts.batch_size, t)?
        };
        let report =
            EpochReport { epoch: epoch + 1, train_loss: (train_loss / seen as f64) as f32, eval_loss, eval_accuracy };
        if !report.train_loss.is_finite() {
            return Err(Error::Diverged(format!(
                "reward-train epoch {}: the loss is {}",
                epoch + 1,
                report.train_loss
            )));
        }
        let line = format!(
            "epoch {}/{}  train loss {:.4}  held-out loss {:.4}  accuracy {:.3} ({} pairs)",
            report.epoch,
            opts.epochs,
            report.train_loss,
            eval_loss,
            eval_accuracy,
            eval_set.len()
        );
        progress::say(&bar, opts.quiet, &line);
        reports.push(report);
    }
    bar.finish_and_clear();
    let mut files = checkpoint::model_files(&model.download()?)?;
    files.push((TOKENIZER_FILE, std::fs::read(&tokenizer_path).map_err(|e| Error::io(&tokenizer_path, e))?));
    write_dir_atomically(&opts.out, &files)?;
    Ok(reports)
}
