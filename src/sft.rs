//! `ppo-wgpu sft`: supervised fine-tuning with token cross-entropy (docs/design.md §1).
//!
//! Data is JSONL: `{"prompt": …, "response": …}` trains on the response tokens (and the
//! `<|endoftext|>` that ends them), `{"text": …}` on every token. Each step runs forward,
//! cross-entropy, backward and AdamW in one submit and reads back only the per-token losses.

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::cross_entropy::{IGNORE, cross_entropy_backward, cross_entropy_forward};
use crate::model::checkpoint::{self, TOKENIZER_FILE, write_atomically};
use crate::model::optimizer::{OPTIMIZER_FILE, Optimizer, OptimizerArgs, learning_rate};
use crate::model::{Activations, Batch, Model, Params};
use crate::progress;
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// One training sequence: token ids and which of them are predicted (trained on).
#[derive(Clone, Debug)]
pub struct Example {
    pub ids: Vec<u32>,
    /// `trained[j]`: token j is a target (predicted from position j − 1).
    pub trained: Vec<bool>,
}

/// One line of SFT data.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Record {
    PromptResponse { prompt: String, response: String },
    Text { text: String },
}

/// Reads JSONL examples, tokenizing with `tok`; sequences longer than `max_len` are cut.
pub fn read_examples(path: &Path, tok: &Tokenizer, max_len: usize) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let eos = tok.eos_id();
    let mut examples = Vec::new();
    for (line_no, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{}:{}", path.display(), line_no + 1);
        let record: Record = serde_json::from_str(line).map_err(|e| {
            Error::Input(format!("{}: expected {{\"prompt\", \"response\"}} or {{\"text\"}} strings: {e}", at()))
        })?;
        let (mut ids, mut trained) = match record {
            Record::PromptResponse { prompt, response } => {
                let (p, r) = (tok.encode(&prompt)?, tok.encode(&response)?);
                let trained = [vec![false; p.len()], vec![true; r.len()]].concat();
                ([p, r].concat(), trained)
            }
            Record::Text { text } => {
                let ids = tok.encode(&text)?;
                let n = ids.len();
                (ids, vec![true; n])
            }
        };
        if let Some(eos) = eos {
            ids.push(eos);
            trained.push(true);
        }
        ids.truncate(max_len);
        trained.truncate(max_len);
        if let Some(first) = trained.first_mut() {
            *first = false; // nothing predicts the first token
        }
        if trained.iter().any(|&t| t) {
            examples.push(Example { ids, trained });
        }
    }
    if examples.is_empty() {
        return Err(Error::Input(format!("{}: no examples with tokens to train on", path.display())));
    }
    Ok(examples)
}

/// Right-padded ids, mask and targets [B, T] for a batch of examples.
fn collate(examples: &[&Example], t: usize) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let b = examples.len();
    let (mut ids, mut mask, mut targets) = (vec![0; b * t], vec![0; b * t], vec![IGNORE; b * t]);
    for (row, ex) in examples.iter().enumerate() {
        for (j, &id) in ex.ids.iter().enumerate() {
            ids[row * t + j] = id;
            mask[row * t + j] = 1;
            if j > 0 && ex.trained[j] {
                targets[row * t + j - 1] = id; // position j − 1 predicts token j
            }
        }
    }
    (ids, mask, targets)
}

/// The options of `ppo-wgpu sft` (also its command-line arguments).
#[derive(Clone, Debug, clap::Args)]
pub struct SftOptions {
    /// Starting model directory (with tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// JSONL training data: {"prompt", "response"} or {"text"} per line.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Output directory: the final model, checkpoint-N/ directories, metrics.jsonl.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Tokens per sequence, at most the model's n_positions (the default); longer examples
    /// are cut.
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Peak learning rate (after warmup; cosine decay to a tenth of it).
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f32,
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    #[command(flatten)]
    pub optimizer: OptimizerArgs,
    /// Fraction of the examples held out for the evaluation loss.
    #[arg(long, default_value_t = 0.1)]
    pub eval_fraction: f32,
    /// Evaluate every N steps (and at the end; 0: only at the end).
    #[arg(long, default_value_t = 50)]
    pub eval_every: usize,
    /// Save a checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue a run from a checkpoint-N it wrote (or from its --out, taking the latest).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// What a run did: the losses before and after, for the caller (and the tests) to see.
#[derive(Clone, Debug)]
pub struct SftReport {
    pub first_eval_loss: f32,
    pub final_eval_loss: f32,
    pub final_train_loss: f32,
    pub steps: usize,
}

/// A batch for a language-modelling step: the sequences, the targets, and the per-token
/// loss buffers the step writes.
pub struct LmBatch {
    pub batch: Batch,
    /// u32 [B·T]: the token position j predicts, or IGNORE where nothing is trained.
    pub targets: Tensor,
    /// [B·T]: ∂L/∂loss for L = the mean over the trained tokens: 1/count there, else 0.
    pub dloss: Tensor,
    /// [B·T]: the per-token cross-entropy (0 where not trained), written by the step.
    pub loss: Tensor,
    /// [B·T]: the log-sum-exp of each row of logits, kept for the backward.
    pub lse: Tensor,
    /// Trained tokens.
    pub count: usize,
}

impl LmBatch {
    /// ids and mask [B, T]; targets [B·T] (IGNORE where not trained).
    pub fn new(model: &Model, ids: &[u32], mask: &[u32], targets: &[u32], b: usize, t: usize) -> Result<LmBatch> {
        let gpu = model.gpu();
        let count = targets.iter().filter(|&&x| x != IGNORE).count();
        let dloss: Vec<f32> =
            targets.iter().map(|&x| if x == IGNORE { 0.0 } else { 1.0 / count.max(1) as f32 }).collect();
        Ok(LmBatch {
            batch: Batch::new(gpu, &model.config, ids, mask, b, t)?,
            targets: gpu.upload_u32(&[b * t], targets)?,
            dloss: gpu.upload(&[b * t], &dloss)?,
            loss: gpu.tensor(&[b * t], DType::F32)?,
            lse: gpu.tensor(&[b * t], DType::F32)?,
            count,
        })
    }

    /// The mean loss of the trained tokens, after the recorded work has run (a readback).
    pub fn mean_loss(&self, gpu: &Gpu) -> Result<f32> {
        Ok((gpu.download(&self.loss)?.iter().map(|&l| l as f64).sum::<f64>() / self.count.max(1) as f64) as f32)
    }
}

/// Records the forward and the cross-entropy of `lm` (into `lm.loss`); returns the activations.
pub fn record_loss(rec: &mut Recorder, model: &Model, lm: &LmBatch) -> Result<Activations> {
    let acts = model.forward(rec, &lm.batch)?;
    let logits = acts.logits()?.reshape(&[lm.batch.b * lm.batch.t, model.config.padded_vocab_size()])?;
    cross_entropy_forward(rec, &lm.loss, &lm.lse, &logits, &lm.targets, 1.0)?;
    Ok(acts)
}

/// Records one training step on `lm`: forward, cross-entropy, its gradient through the whole
/// model into `grads`, clipping and AdamW at `lr` — one encoder, nothing read back.
pub fn record_step(
    rec: &mut Recorder,
    model: &Model,
    opt: &mut Optimizer,
    grads: &Params,
    lm: &LmBatch,
    lr: f32,
) -> Result<()> {
    let acts = record_loss(rec, model, lm)?;
    let logits = acts.logits()?.reshape(&[lm.batch.b * lm.batch.t, model.config.padded_vocab_size()])?;
    rec.zero(&grads.flat);
    cross_entropy_backward(rec, &logits, &lm.dloss, &lm.lse, &lm.targets, 1.0)?;
    model.backward(rec, &lm.batch, &acts, None, None, grads)?;
    opt.update(rec, model, &grads.flat, lr)
}

struct Trainer {
    gpu: Arc<Gpu>,
    model: Model,
    seq_len: usize,
    batch_size: usize,
}

impl Trainer {
    /// `examples` as a language-modelling batch of the trainer's sequence length.
    fn lm_batch(&self, examples: &[&Example]) -> Result<LmBatch> {
        let (ids, mask, targets) = collate(examples, self.seq_len);
        LmBatch::new(&self.model, &ids, &mask, &targets, examples.len(), self.seq_len)
    }

    /// Mean loss over the trained tokens of `examples`, in batches.
    fn eval_loss(&self, examples: &[Example]) -> Result<f32> {
        let (mut sum, mut count) = (0.0f64, 0usize);
        for chunk in examples.chunks(self.batch_size) {
            let refs: Vec<&Example> = chunk.iter().collect();
            let lm = self.lm_batch(&refs)?;
            let mut rec = Recorder::new(&self.gpu);
            record_loss(&mut rec, &self.model, &lm)?;
            rec.submit();
            sum += lm.mean_loss(&self.gpu)? as f64 * lm.count as f64;
            count += lm.count;
        }
        Ok((sum / count.max(1) as f64) as f32)
    }
}

const STATE_FILE: &str = "trainer_state.json";

/// Runs SFT as `opts` says; writes checkpoints (weights, tokenizer, optimizer state, step) to
/// `opts.out/checkpoint-N` every `save_every` steps and at the end, the final model to
/// `opts.out`, and `metrics.jsonl` beside it.
pub fn run(gpu: &Arc<Gpu>, opts: &SftOptions) -> Result<SftReport> {
    let resume_dir = opts.resume.as_deref().map(|d| checkpoint::to_resume(d, STATE_FILE)).transpose()?;
    let start_dir = resume_dir.as_deref().unwrap_or(&opts.model);
    let ck = checkpoint::load(start_dir)?;
    let tokenizer_path = opts.model.join(TOKENIZER_FILE);
    let tok = Tokenizer::load(&tokenizer_path)?;
    if tok.vocab_size() > ck.config.vocab_size {
        return Err(Error::Checkpoint(format!(
            "{}: {} tokens, but the model's vocab_size is {}",
            tokenizer_path.display(),
            tok.vocab_size(),
            ck.config.vocab_size
        )));
    }
    let seq_len = opts.seq_len.unwrap_or(ck.config.n_positions);
    if seq_len < 2 || seq_len > ck.config.n_positions {
        return Err(Error::Input(format!(
            "--seq-len {} must be in 2..={} (n_positions)",
            seq_len, ck.config.n_positions
        )));
    }
    if opts.batch_size == 0 || opts.steps == 0 {
        return Err(Error::Input("--batch-size and --steps must be positive".into()));
    }
    let mut examples = read_examples(&opts.data, &tok, seq_len)?;
    let mut rng = Rng::new(opts.seed);
    rng.shuffle(&mut examples);
    let n_eval = ((examples.len() as f32 * opts.eval_fraction).ceil() as usize)
        .clamp(1, examples.len().saturating_sub(1).max(1));
    let eval_set = examples.split_off(examples.len() - n_eval);
    let train_set = if examples.is_empty() { eval_set.clone() } else { examples };

    let model = Model::upload(gpu, &ck)?;
    let mut rec = Recorder::new(gpu);
    let mut opt = opts.optimizer.build(&model, &mut rec, opts.lr)?;
    let grads = model.zeros_like_params(&mut rec)?;
    rec.submit();
    if opts.resume.is_some() {
        opt.load(&model, start_dir)?;
    }
    let trainer = Trainer { gpu: gpu.clone(), model, seq_len, batch_size: opts.batch_size };
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let metrics_path = opts.out.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;

    // A checkpoint (everything to resume) is a directory of its own, written as a whole; the
    // final model also goes to `out` itself, as a plain Hugging Face directory.
    let tokenizer_bytes = std::fs::read(&tokenizer_path).map_err(|e| Error::io(&tokenizer_path, e))?;
    let save = |trainer: &Trainer, opt: &Optimizer, step: usize| -> Result<()> {
        let ck = trainer.model.download()?;
        let mut files = checkpoint::model_files(&ck)?;
        files.push((TOKENIZER_FILE, tokenizer_bytes.clone()));
        if step == opts.steps {
            for (name, bytes) in &files {
                write_atomically(&opts.out.join(name), bytes)?;
            }
        }
        files.push((OPTIMIZER_FILE, opt.state_bytes(&trainer.model)?));
        files.push((STATE_FILE, json!({ "step": step }).to_string().into_bytes()));
        checkpoint::write_dir_atomically(&opts.out.join(format!("checkpoint-{step}")), &files)
    };

    let first_step = opt.step as usize;
    if first_step >= opts.steps {
        return Err(Error::Input(format!(
            "{} is at step {first_step}: --steps {} leaves nothing to train (give the total number of steps)",
            start_dir.display(),
            opts.steps
        )));
    }
    let first_eval_loss = trainer.eval_loss(&eval_set)?;
    let mut eval_loss = first_eval_loss;
    let mut train_loss = f32::NAN;
    let started = Instant::now();
    let mut tokens = 0usize;
    let mut cursor = (first_step * opts.batch_size) % train_set.len();
    let bar = progress::bar(opts.steps as u64, "sft", opts.quiet);
    bar.set_position(first_step as u64);
    for step in first_step..opts.steps {
        let examples: Vec<&Example> =
            (0..opts.batch_size).map(|i| &train_set[(cursor + i) % train_set.len()]).collect();
        cursor = (cursor + opts.batch_size) % train_set.len();
        let lr = learning_rate(opts.lr, step, opts.warmup, opts.steps, 0.1);

        // One submit: forward, loss, backward, clip, AdamW; then one readback of the losses.
        // Buffers the last step did not use go first (an evaluation's last, shorter batch).
        gpu.trim_pool();
        let iteration = gpu.iteration();
        let phase = gpu.phase("training step");
        let lm = trainer.lm_batch(&examples)?;
        let mut rec = Recorder::new(gpu);
        record_step(&mut rec, &trainer.model, &mut opt, &grads, &lm, lr)?;
        rec.submit();
        train_loss = lm.mean_loss(gpu)?;
        tokens += examples.iter().map(|e| e.ids.len()).sum::<usize>();
        drop((phase, iteration));

        let done = step + 1;
        let evaluate = done == opts.steps || (opts.eval_every > 0 && done % opts.eval_every == 0);
        if evaluate {
            let _phase = gpu.phase("evaluation");
            eval_loss = trainer.eval_loss(&eval_set)?;
        }
        let tok_per_s = tokens as f64 / started.elapsed().as_secs_f64();
        let mut line = json!({ "step": done, "train_loss": train_loss, "lr": lr, "tokens_per_s": tok_per_s });
        if evaluate {
            line["eval_loss"] = json!(eval_loss);
        }
        writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
        bar.set_message(format!("loss {train_loss:.4} eval {eval_loss:.4} lr {lr:.1e} {tok_per_s:.0} tok/s"));
        bar.inc(1);
        if evaluate {
            progress::say(
                &bar,
                opts.quiet,
                &format!("step {done}/{}: train loss {train_loss:.4}, held-out loss {eval_loss:.4}", opts.steps),
            );
        }
        if done == opts.steps || (opts.save_every > 0 && done % opts.save_every == 0) {
            let _phase = gpu.phase("checkpoint");
            save(&trainer, &opt, done)?;
        }
    }
    bar.finish_and_clear();
    Ok(SftReport {
        first_eval_loss,
        final_eval_loss: eval_loss,
        final_train_loss: train_loss,
        steps: opts.steps - first_step,
    })
}
