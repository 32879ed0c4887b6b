//! `ppo-wgpu update`: the update of docs/design.md §4 on one rollout batch — epochs of
//! minibatches, each one forward, the fused loss (PPO's form with the value loss, or the
//! critic-free form of GRPO and RLOO), one backward, clipping and AdamW, one submit per
//! minibatch, with the eight loss statistics read back once at the end.

use super::algo::{Algo, parse_loss_type};
use super::batch::{PpoBatch, RolloutBatch};
use crate::error::{Error, Result, ensure_shape};
use crate::gpu::Gpu;
use crate::gpu::{DType, Recorder};
use crate::kernels::adamw::AdamW;
use crate::kernels::ppo::{
    INPUT_COLUMNS, LossType, PpoLossConfig, PpoMinibatch, STAT_NAMES, ppo_loss_fused, ppo_stats_reduce,
};
use crate::kernels::residual::accumulate;
use crate::kernels::rollout::gather_rows;
use crate::model::Heads;
use crate::model::checkpoint::{self, TOKENIZER_FILE, f32_entry, safetensors_bytes, saved_name, write_atomically};
use crate::model::init::with_heads;
use crate::model::optimizer::Optimizer;
use crate::model::{Batch, Model};
use crate::rng::Rng;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

/// The options of one update.
#[derive(Clone, Debug)]
pub struct UpdateOptions {
    /// PPO needs a model with a value head; GRPO and RLOO a model without one.
    pub algo: Algo,
    pub epochs: usize,
    pub minibatches: usize,
    /// AdamW learning rate.
    pub lr: f32,
    pub loss: PpoLossConfig,
    /// Micro-batches per minibatch whose gradients add up before one optimizer step (less
    /// memory, the same update).
    pub grad_accum: usize,
    /// Shuffle the rows into minibatches each epoch with this seed; in row order without one.
    pub seed: Option<u64>,
}

/// The loss coefficients as command-line arguments, shared by `update` and `train` (TRL's names
/// and defaults).
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct LossArgs {
    /// ε of the clipped surrogate.
    #[arg(long, default_value_t = 0.2)]
    pub cliprange: f32,
    /// ε_v of the clipped value loss.
    #[arg(long, default_value_t = 0.2)]
    pub cliprange_value: f32,
    /// c1, the value loss coefficient.
    #[arg(long, default_value_t = 0.1)]
    pub vf_coef: f32,
    /// c2, the entropy bonus coefficient.
    #[arg(long, default_value_t = 0.0)]
    pub ent_coef: f32,
}

impl LossArgs {
    /// The loss configuration of `algo` at sampling temperature τ, with the KL coefficient β
    /// (inside the loss for GRPO only) and the loss type.
    pub fn config(&self, algo: Algo, temperature: f32, beta: f32, loss_type: LossType) -> PpoLossConfig {
        PpoLossConfig {
            temperature,
            cliprange: self.cliprange,
            cliprange_value: self.cliprange_value,
            vf_coef: if algo.has_value_head() { self.vf_coef } else { 0.0 },
            ent_coef: self.ent_coef,
            kl_coef: if algo.kl_in_loss() { beta } else { 0.0 },
            loss_type,
        }
    }
}

/// `ppo-wgpu update`: its command-line arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct UpdateArgs {
    /// Policy model directory (for PPO a zero value head is added if it has none; for GRPO and
    /// RLOO a value head is dropped).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// The loss: ppo (with the value loss), or the critic-free grpo and rloo.
    #[arg(long, value_enum, default_value_t = Algo::Ppo)]
    pub algo: Algo,
    /// Rollout batch (safetensors; see docs/design.md §6).
    #[arg(long, value_name = "FILE")]
    pub batch: PathBuf,
    /// Output model directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub epochs: usize,
    #[arg(long, default_value_t = 1)]
    pub minibatches: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f32,
    /// The sampling temperature of the rollout: log-probs are those of softmax(logits/τ).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[command(flatten)]
    pub loss: LossArgs,
    /// β of GRPO's k3 KL term inside the loss (the batch then needs ref_logprobs) [default: 0].
    #[arg(long)]
    pub beta: Option<f32>,
    /// How the per-token losses average: grpo (each sequence's mean, then over sequences) or
    /// dapo (over all tokens) [default: grpo for GRPO, dapo (a token mean) otherwise].
    #[arg(long, value_parser = parse_loss_type)]
    pub loss_type: Option<LossType>,
    /// Split each minibatch into this many micro-batches whose gradients add up before one
    /// optimizer step (less memory, the same update).
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Shuffle the rows into minibatches each epoch with this seed; in row order without one.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Clip the global gradient norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f32,
    /// Write the first minibatch's gradients (before clipping) and loss scalars here.
    #[arg(long, value_name = "FILE")]
    pub dump_grads: Option<PathBuf>,
}

impl UpdateArgs {
    pub fn options(&self) -> UpdateOptions {
        let beta = self.beta.unwrap_or(0.0);
        let loss_type = self.loss_type.unwrap_or(self.algo.default_loss_type());
        UpdateOptions {
            algo: self.algo,
            epochs: self.epochs,
            minibatches: self.minibatches,
            lr: self.lr,
            loss: self.loss.config(self.algo, self.temperature, beta, loss_type),
            grad_accum: self.grad_accum,
            seed: self.seed,
        }
    }
}

/// Runs `ppo-wgpu update`: the update on a batch file, the new checkpoint (with the tokenizer,
/// when the model has one) in `args.out`, the gradient dump when asked. Returns the statistics.
pub fn run(gpu: &Arc<Gpu>, args: &UpdateArgs) -> Result<UpdateStats> {
    if args.beta.is_some() && !args.algo.kl_in_loss() {
        return Err(Error::Input(format!(
            "--beta weighs GRPO's KL term in the loss; the {} update has none (its KL penalty is in the batch's advantages)",
            args.algo
        )));
    }
    let opts = args.options();
    let ck = with_heads(checkpoint::load(&args.model)?, Heads { value: args.algo.has_value_head(), reward: false });
    let policy = Model::upload(gpu, &ck)?;
    let file = RolloutBatch::load(&args.batch)?;
    file.check_for(args.algo, opts.loss.kl_coef != 0.0, &args.batch)?;
    let batch = PpoBatch::upload(gpu, &file)?;
    let phase = gpu.phase("update");
    let mut rec = Recorder::new(gpu);
    let mut opt = Optimizer::new(&policy, &mut rec, AdamW { lr: opts.lr, ..AdamW::default() }, args.max_grad_norm)?;
    rec.submit();
    let (stats, dump) = ppo_update(&policy, &mut opt, &batch, &opts, args.dump_grads.is_some())?;
    drop(phase);
    let _phase = gpu.phase("saving");
    if let (Some(path), Some(dump)) = (&args.dump_grads, dump) {
        dump.save(path)?;
    }
    checkpoint::save(&args.out, &policy.download()?)?;
    let tokenizer = args.model.join(TOKENIZER_FILE);
    if tokenizer.is_file() {
        checkpoint::copy_tokenizer(&tokenizer, &args.out)?;
    }
    Ok(stats)
}

/// Mean of each `STAT_NAMES` statistic over all minibatches of the update.
#[derive(Clone, Debug, Default)]
pub struct UpdateStats {
    pub means: [f32; 8],
    /// Mean global gradient norm (before clipping) of the optimizer steps.
    pub grad_norm: f32,
    pub minibatches: usize,
}

impl UpdateStats {
    pub fn get(&self, name: &str) -> f32 {
        self.means[STAT_NAMES.iter().position(|n| *n == name).expect("a statistic name")]
    }
}

/// The gradient of L for every parameter (before clipping) and the loss statistics, for the
/// first minibatch of the first epoch.
pub struct GradDump {
    pub grads: Vec<(String, Vec<usize>, Vec<f32>)>,
    pub stats: [f32; 8],
}

impl GradDump {
    /// Writes the gradients under their checkpoint names and the scalars loss, pg_loss, vf_loss,
    /// entropy, approx_kl, clipfrac as F32 [1] tensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        let stats: Vec<(&str, [f32; 1])> = ["loss", "pg_loss", "vf_loss", "entropy", "approx_kl", "clipfrac"]
            .into_iter()
            .map(|name| (name, [self.stats[STAT_NAMES.iter().position(|n| *n == name).expect("a statistic")]]))
            .collect();
        let mut entries: Vec<_> = self.grads.iter().map(|(n, s, v)| f32_entry(saved_name(n), s.clone(), v)).collect();
        entries.extend(stats.iter().map(|(name, x)| f32_entry(*name, vec![1], x)));
        let bytes = safetensors_bytes(entries, None, "gradient dump")?;
        write_atomically(path, &bytes)
    }
}

/// Runs the update on `model` (with a value head for PPO, without for GRPO and RLOO) with
/// `opt`: `opts.epochs` passes over the batch in `opts.minibatches` minibatches, each split
/// into `opts.grad_accum` micro-batches
/// whose gradients add up before one optimizer step. Everything is recorded into one encoder
/// per minibatch; the statistics stay on the GPU until one readback at the end. Returns their
/// means and, when `dump` is set, the first minibatch's gradients.
pub fn ppo_update(
    model: &Model,
    opt: &mut Optimizer,
    batch: &PpoBatch,
    opts: &UpdateOptions,
    dump: bool,
) -> Result<(UpdateStats, Option<GradDump>)> {
    let gpu = model.gpu().clone();
    let (b, l, vp) = (batch.b, batch.l, model.config.padded_vocab_size());
    // The heads and the losses run at the window's W positions of each row.
    let (window, w) = (batch.window, batch.window.len);
    ensure_shape(model.heads.value == opts.algo.has_value_head(), || {
        let want = if opts.algo.has_value_head() { "with" } else { "without" };
        format!("the {} update needs a model {want} a value head (v_head.summary.*)", opts.algo)
    })?;
    if opts.minibatches == 0 || opts.minibatches > b || opts.epochs == 0 {
        return Err(Error::Input(format!("--minibatches must be in 1..={b} (the batch's rows) and --epochs positive")));
    }
    let smallest = b / opts.minibatches;
    if opts.grad_accum == 0 || opts.grad_accum > smallest {
        return Err(Error::Input(format!(
            "--grad-accum {} must be in 1..={smallest} (the rows of a minibatch)",
            opts.grad_accum
        )));
    }
    let updates = opts.epochs * opts.minibatches;
    // Each minibatch's eight statistics and its gradient norm land in their own 256-byte slots
    // (a view there meets every adapter's offset alignment); one download reads them all at
    // the end.
    const SLOT: usize = 64;
    let all_stats = gpu.tensor(&[2 * updates * SLOT], DType::F32)?;
    let mut rec = Recorder::new(&gpu);
    let grads = model.zeros_like_params(&mut rec)?;
    rec.submit();
    let mut rng = opts.seed.map(Rng::new);
    let mut dumped = None;
    for epoch in 0..opts.epochs {
        let mut order: Vec<usize> = (0..b).collect();
        if let Some(rng) = rng.as_mut() {
            rng.shuffle(&mut order);
        }
        for m in 0..opts.minibatches {
            let k = epoch * opts.minibatches + m;
            let minibatch = &order[m * b / opts.minibatches..(m + 1) * b / opts.minibatches];
            // The loss is a mean over the whole minibatch's trained tokens, so micro-batch
            // gradients add up to the minibatch's.
            let count = batch.trained_tokens(minibatch);
            let sequences = minibatch.len();
            let mut rec = Recorder::new(&gpu);
            rec.zero(&grads.flat);
            let mb_stats = all_stats.view(&gpu, 2 * k * SLOT, &[8])?;
            rec.zero(&mb_stats);
            for a in 0..opts.grad_accum {
                let rows =
                    &minibatch[a * minibatch.len() / opts.grad_accum..(a + 1) * minibatch.len() / opts.grad_accum];
                let n = rows.len();
                let ids = batch.gather(&batch.input_ids, rows);
                let mb_batch = Batch::new(&gpu, &model.config, &ids, &batch.gather(&batch.attention_mask, rows), n, l)?;
                let tokens = gpu.upload_u32(&[n * w], &window.slice(&ids, l))?;
                let row_ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
                let inputs = gpu.tensor(&[n * w, INPUT_COLUMNS], DType::F32)?;
                gather_rows(
                    &mut rec,
                    &inputs,
                    &batch.inputs.reshape(&[b, w * INPUT_COLUMNS])?,
                    &gpu.upload_u32(&[n], &row_ids)?,
                )?;
                let (token_stats, micro_stats) = (gpu.tensor(&[n * w, 8], DType::F32)?, gpu.tensor(&[8], DType::F32)?);
                let acts = model.forward_window(&mut rec, &mb_batch, window)?;
                let logits = acts.logits()?.reshape(&[n * w, vp])?;
                // PPO's value head, and the gradient of its output.
                let values = acts.values.as_ref().map(|x| x.reshape(&[n * w])).transpose()?;
                let dvalues = values.as_ref().map(|_| gpu.tensor(&[n, w], DType::F32)).transpose()?;
                let mb = PpoMinibatch {
                    logits: &logits,
                    tokens: &tokens,
                    inputs: &inputs,
                    values: values.as_ref(),
                    seq: w,
                    count,
                    sequences,
                };
                let flat_dvalues = dvalues.as_ref().map(|d| d.reshape(&[n * w])).transpose()?;
                ppo_loss_fused(&mut rec, &mb, &opts.loss, flat_dvalues.as_ref(), &token_stats)?;
                ppo_stats_reduce(&mut rec, &micro_stats, &token_stats)?;
                accumulate(&mut rec, &mb_stats, &micro_stats)?;
                model.backward(&mut rec, &mb_batch, &acts, dvalues.as_ref(), None, &grads)?;
            }
            if dump && k == 0 {
                rec.submit();
                let grads = model.layout.unflatten(&gpu.download(&grads.flat)?);
                let s = gpu.download(&mb_stats)?;
                dumped = Some(GradDump { grads, stats: s.try_into().expect("eight statistics") });
                rec = Recorder::new(&gpu);
            }
            opt.update(&mut rec, model, &grads.flat, opts.lr)?;
            rec.copy(opt.norm_scale(), &all_stats.view(&gpu, (2 * k + 1) * SLOT, &[2])?);
            rec.submit();
        }
    }
    let all = gpu.download(&all_stats)?;
    let mut stats = UpdateStats { minibatches: updates, ..UpdateStats::default() };
    for k in 0..updates {
        for (mean, x) in stats.means.iter_mut().zip(&all[2 * k * SLOT..2 * k * SLOT + 8]) {
            *mean += x / updates as f32;
        }
        stats.grad_norm += all[(2 * k + 1) * SLOT] / updates as f32;
    }
    Ok((stats, dumped))
}
