//! AdamW over a model's parameters with global gradient-norm clipping, all on the GPU.
//!
//! Weight decay applies to the matrices (embeddings and linear weights) and not to biases or
//! LayerNorm parameters, as in GPT-2 training (llm.c, nanoGPT).

use super::checkpoint::{f32_entry, safetensors_bytes};
use super::gpt::{Model, ParamSlot};
use crate::error::{Error, Result};
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::adamw::{AdamW, NORM_PARTIALS, adamw_update, grad_norm};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// The optimizer settings `sft`, `reward-train` and `train` share (command-line arguments).
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct OptimizerArgs {
    /// AdamW weight decay on the matrices (embeddings and linear weights).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Clip the global gradient norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f32,
}

impl Default for OptimizerArgs {
    fn default() -> Self {
        OptimizerArgs { weight_decay: 0.0, max_grad_norm: 1.0 }
    }
}

impl OptimizerArgs {
    /// AdamW for `model` at learning rate `lr` with these settings (its state zeroed in `rec`).
    pub fn build(&self, model: &Model, rec: &mut Recorder, lr: f32) -> Result<Optimizer> {
        let hp = AdamW { lr, weight_decay: self.weight_decay, ..AdamW::default() };
        Optimizer::new(model, rec, hp, self.max_grad_norm)
    }
}

pub struct Optimizer {
    pub hp: AdamW,
    /// Clip the global gradient norm to this (≤ 0: no clipping).
    pub max_grad_norm: f32,
    /// Updates taken so far (AdamW's t after the next update is step + 1).
    pub step: u32,
    m: Tensor,
    v: Tensor,
    partial: Tensor,
    /// [‖g‖, clip scale] of the last update.
    norm_scale: Tensor,
}

impl Optimizer {
    pub fn new(model: &Model, rec: &mut Recorder, hp: AdamW, max_grad_norm: f32) -> Result<Optimizer> {
        let gpu = model.gpu();
        let n = model.layout.total;
        let (m, v) = (gpu.tensor(&[n], DType::F32)?, gpu.tensor(&[n], DType::F32)?);
        let (partial, norm_scale) = (gpu.tensor(&[NORM_PARTIALS], DType::F32)?, gpu.tensor(&[2], DType::F32)?);
        for t in [&m, &v, &norm_scale] {
            rec.zero(t);
        }
        Ok(Optimizer { hp, max_grad_norm, step: 0, m, v, partial, norm_scale })
    }

    /// Records one update of `model` from the gradient buffer `grads` (laid out like the
    /// parameters) at learning rate `lr`: the global norm, the clip scale, then AdamW.
    ///
    /// AdamW runs once per run of neighbouring parameters with the same weight decay, padding
    /// included: with no decay (the default) that is the whole flat buffer in one dispatch
    /// where a dispatch per tensor cost ~50 for the tiny model. The padding is zero in the
    /// parameters, gradients and moments alike, and an AdamW step keeps it zero.
    pub fn update(&mut self, rec: &mut Recorder, model: &Model, grads: &Tensor, lr: f32) -> Result<()> {
        self.step += 1;
        let gpu = model.gpu().clone();
        grad_norm(rec, &self.norm_scale, &self.partial, grads, self.max_grad_norm)?;
        let slots = &model.layout.slots;
        let decay = |slot: &ParamSlot| if slot.spec.kind.decays() { self.hp.weight_decay } else { 0.0 };
        let mut first = 0;
        for run in slots.chunk_by(|a, b| decay(a) == decay(b)) {
            let start = run[0].offset;
            first += run.len();
            let end = slots.get(first).map_or(model.layout.total, |next| next.offset);
            let hp = AdamW { lr, weight_decay: decay(&run[0]), ..self.hp };
            let view = |t: &Tensor| t.view(&gpu, start, &[end - start]);
            let p = view(&model.params.flat)?;
            adamw_update(rec, &p, &view(&self.m)?, &view(&self.v)?, &view(grads)?, &self.norm_scale, &hp, self.step)?;
        }
        Ok(())
    }

    /// The bytes of `optimizer.safetensors`: the moments and the step.
    pub fn state_bytes(&self, model: &Model) -> Result<Vec<u8>> {
        let gpu = model.gpu();
        let (m, v) = (gpu.download(&self.m)?, gpu.download(&self.v)?);
        let step = [self.step as f32];
        let n = m.len();
        let entries = vec![
            f32_entry("exp_avg", vec![n], &m),
            f32_entry("exp_avg_sq", vec![n], &v),
            f32_entry("step", vec![1], &step),
        ];
        safetensors_bytes(entries, None, OPTIMIZER_FILE)
    }

    /// The [‖g‖, clip scale] tensor of the last update (stays on the GPU).
    pub fn norm_scale(&self) -> &Tensor {
        &self.norm_scale
    }

    /// Restores `dir/optimizer.safetensors` (as `state_bytes` wrote it), for a model with the
    /// same parameter layout.
    pub fn load(&mut self, model: &Model, dir: &Path) -> Result<()> {
        let path = dir.join(OPTIMIZER_FILE);
        let origin = path.display().to_string();
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::Checkpoint(format!("{origin}: {e}")))?;
        let read = |name: &str, n: usize| -> Result<Vec<f32>> {
            let t = st.tensor(name).map_err(|e| Error::Checkpoint(format!("{origin}: tensor {name}: {e}")))?;
            if t.dtype() != Dtype::F32 || t.shape() != [n] {
                return Err(Error::Checkpoint(format!(
                    "{origin}: tensor {name} is {:?} {:?}, expected F32 [{n}] for this model",
                    t.dtype(),
                    t.shape()
                )));
            }
            Ok(bytemuck::pod_collect_to_vec(t.data()))
        };
        let n = model.layout.total;
        let gpu = model.gpu();
        gpu.write(&self.m, &read("exp_avg", n)?)?;
        gpu.write(&self.v, &read("exp_avg_sq", n)?)?;
        self.step = read("step", 1)?[0] as u32;
        Ok(())
    }
}

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Learning rate at `step` (0-based) of `total`: linear warmup over `warmup` steps, then cosine
/// decay to `min_ratio`·lr (llm.c's schedule).
pub fn learning_rate(lr: f32, step: usize, warmup: usize, total: usize, min_ratio: f32) -> f32 {
    if step < warmup {
        return lr * (step + 1) as f32 / warmup as f32;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f32 / span as f32).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f32::consts::PI * progress).cos());
    lr * (min_ratio + (1.0 - min_ratio) * cosine)
}
