//! `ppo-wgpu score`: per-token log-probabilities, values and the reward of one sequence
//! (docs/design.md §6).

use crate::error::{Error, Result};
use crate::gpu::{DType, Recorder};
use crate::kernels::cross_entropy::{IGNORE, cross_entropy_forward};
use crate::kernels::padded_vocab::check_temperature;
use crate::model::{Batch, Model};
use serde_json::{Value, json};

#[derive(Debug)]
pub struct Score {
    pub ids: Vec<u32>,
    /// `logprobs[j]` = log softmax(z_{j−1}/τ)[ids[j]]; None for the first token.
    pub logprobs: Vec<Option<f32>>,
    /// The value head at every position, when the model has one.
    pub values: Option<Vec<f32>>,
    /// The reward head at the last token, when the model has one.
    pub reward: Option<f32>,
}

impl Score {
    /// The JSON object `ppo-wgpu score` prints.
    pub fn to_json(&self) -> Value {
        let mut v = json!({ "ids": self.ids, "logprobs": self.logprobs });
        if let Some(values) = &self.values {
            v["values"] = json!(values);
        }
        if let Some(reward) = self.reward {
            v["reward"] = json!(reward);
        }
        v
    }
}

/// Scores `ids` (one unpadded sequence) with `model` at `temperature`.
pub fn score(model: &Model, ids: &[u32], temperature: f32) -> Result<Score> {
    if ids.is_empty() {
        return Err(Error::Input("score needs at least one token".into()));
    }
    check_temperature(temperature, "temperature")?;
    let gpu = model.gpu();
    let t = ids.len();
    let batch = Batch::new(gpu, &model.config, ids, &vec![1; t], 1, t)?;
    // Row j of the logits predicts token j + 1: its target is ids[j + 1].
    let targets: Vec<u32> = (0..t).map(|j| ids.get(j + 1).copied().unwrap_or(IGNORE)).collect();
    let targets = gpu.upload_u32(&[t], &targets)?;
    let (loss, lse) = (gpu.tensor(&[t], DType::F32)?, gpu.tensor(&[t], DType::F32)?);
    let mut rec = Recorder::new(gpu);
    let acts = model.forward(&mut rec, &batch)?;
    cross_entropy_forward(
        &mut rec,
        &loss,
        &lse,
        &acts.logits()?.reshape(&[t, model.config.padded_vocab_size()])?,
        &targets,
        temperature,
    )?;
    rec.submit();
    let loss = gpu.download(&loss)?;
    let logprobs = std::iter::once(None).chain(loss[..t - 1].iter().map(|l| Some(-l))).collect();
    let values = acts.values.as_ref().map(|v| gpu.download(v)).transpose()?;
    let reward = acts.rewards.as_ref().map(|r| gpu.download(r)).transpose()?.map(|r| r[t - 1]);
    Ok(Score { ids: ids.to_vec(), logprobs, values, reward })
}
