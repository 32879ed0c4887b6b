//! `ppo-wgpu update`: the PPO update of DESIGN.md §4 on one rollout batch — epochs of
//! minibatches, each one forward, the fused loss, one backward, clipping and AdamW, all in one
//! submit, with only the eight loss statistics read back.

use super::batch::RolloutBatch;
use crate::error::{Error, Result, ensure_shape};
use crate::gpu::{DType, Recorder};
use crate::kernels::ppo::{INPUT_COLUMNS, PpoLossConfig, PpoMinibatch, STAT_NAMES, ppo_loss_fused, ppo_stats_reduce};
use crate::model::checkpoint::{saved_name, write_atomically};
use crate::model::optimizer::Optimizer;
use crate::model::{Batch, Model};
use crate::rng::Rng;
use safetensors::{Dtype, tensor::TensorView};
use std::path::Path;

/// The options of one PPO update (also command-line arguments).
#[derive(Clone, Debug, clap::Args)]
pub struct UpdateOptions {
    #[arg(long, default_value_t = 4)]
    pub epochs: usize,
    #[arg(long, default_value_t = 1)]
    pub minibatches: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f32,
    #[command(flatten)]
    pub loss: PpoLossConfig,
    /// Shuffle the rows into minibatches each epoch with this seed; in row order without one.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Mean of each `STAT_NAMES` statistic over all minibatches of the update.
#[derive(Clone, Debug, Default)]
pub struct UpdateStats {
    pub means: [f32; 8],
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
        let mut entries: Vec<(String, Vec<usize>, Vec<u8>)> =
            self.grads.iter().map(|(n, s, v)| (saved_name(n), s.clone(), bytemuck::cast_slice(v).to_vec())).collect();
        for name in ["loss", "pg_loss", "vf_loss", "entropy", "approx_kl", "clipfrac"] {
            let k = STAT_NAMES.iter().position(|n| *n == name).unwrap();
            entries.push((name.to_string(), vec![1], self.stats[k].to_le_bytes().to_vec()));
        }
        let views: Vec<(String, TensorView)> = entries
            .iter()
            .map(|(n, s, b)| {
                TensorView::new(Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| Error::Checkpoint(format!("{n}: {e}")))
            })
            .collect::<Result<_>>()?;
        let bytes =
            safetensors::serialize(views, None).map_err(|e| Error::Checkpoint(format!("gradient dump: {e}")))?;
        write_atomically(path, &bytes)
    }
}

/// Runs the update on `model` (which needs a value head) with `opt`. Returns the statistics and,
/// when `dump` is set, the first minibatch's gradients.
pub fn ppo_update(
    model: &Model,
    opt: &mut Optimizer,
    batch: &RolloutBatch,
    opts: &UpdateOptions,
    dump: bool,
) -> Result<(UpdateStats, Option<GradDump>)> {
    let gpu = model.gpu().clone();
    let (b, l, v) = (batch.b, batch.l, model.config.vocab_size);
    ensure_shape(model.heads.value, || "the PPO update needs a model with a value head (v_head.summary.*)".into())?;
    if opts.minibatches == 0 || opts.minibatches > b || opts.epochs == 0 {
        return Err(Error::Input(format!("--minibatches must be in 1..={b} (the batch's rows) and --epochs positive")));
    }
    let mut rec = Recorder::new(&gpu);
    let grads = model.zeros_like_params(&mut rec)?;
    rec.submit();
    let mut rng = opts.seed.map(Rng::new);
    let mut stats = UpdateStats::default();
    let mut dumped = None;
    for epoch in 0..opts.epochs {
        let mut order: Vec<usize> = (0..b).collect();
        if let Some(rng) = rng.as_mut() {
            for i in (1..b).rev() {
                order.swap(i, rng.below(i as u32 + 1) as usize);
            }
        }
        for m in 0..opts.minibatches {
            let rows = &order[m * b / opts.minibatches..(m + 1) * b / opts.minibatches];
            let n = rows.len();
            let ids = batch.gather(&batch.input_ids, rows);
            let inputs = batch.loss_inputs(rows);
            // Trained tokens: masked-in positions after the first of each row.
            let count = (0..n * l).filter(|&i| i % l > 0 && inputs[i * INPUT_COLUMNS] != 0.0).count();
            let mb_batch = Batch::new(&gpu, &model.config, &ids, &batch.gather(&batch.attention_mask, rows), n, l)?;
            let tokens = gpu.upload_u32(&[n * l], &ids)?;
            let inputs = gpu.upload(&[n * l, INPUT_COLUMNS], &inputs)?;
            let (dvalues, token_stats, mb_stats) = (
                gpu.tensor(&[n * l], DType::F32)?,
                gpu.tensor(&[n * l, 8], DType::F32)?,
                gpu.tensor(&[8], DType::F32)?,
            );

            let mut rec = Recorder::new(&gpu);
            let acts = model.forward(&mut rec, &mb_batch)?;
            let logits = acts.logits.reshape(&[n * l, v])?;
            let values = acts.values.as_ref().expect("a value head was checked above").reshape(&[n * l])?;
            let mb = PpoMinibatch { logits: &logits, tokens: &tokens, inputs: &inputs, values: &values, seq: l, count };
            ppo_loss_fused(&mut rec, &mb, &opts.loss, &dvalues, &token_stats)?;
            ppo_stats_reduce(&mut rec, &mb_stats, &token_stats)?;
            rec.zero(&grads.flat);
            model.backward(&mut rec, &mb_batch, &acts, Some(&dvalues.reshape(&[n, l])?), None, &grads)?;
            if dump && epoch == 0 && m == 0 {
                rec.submit();
                let flat = gpu.download(&grads.flat)?;
                let grads = model
                    .layout
                    .slots
                    .iter()
                    .map(|(name, shape, offset)| {
                        (name.clone(), shape.clone(), flat[*offset..offset + shape.iter().product::<usize>()].to_vec())
                    })
                    .collect();
                let s = gpu.download(&mb_stats)?;
                dumped = Some(GradDump { grads, stats: s.try_into().expect("eight statistics") });
                rec = Recorder::new(&gpu);
            }
            opt.update(&mut rec, model, &grads.flat, opts.lr)?;
            rec.submit();
            let s = gpu.download(&mb_stats)?;
            for (mean, x) in stats.means.iter_mut().zip(s) {
                *mean += x;
            }
            stats.minibatches += 1;
        }
    }
    for mean in stats.means.iter_mut() {
        *mean /= stats.minibatches as f32;
    }
    Ok((stats, dumped))
}
