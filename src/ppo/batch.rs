//! The rollout batch file (docs/design.md §6): what `train --dump-batch` writes and `update` reads.
//! B rows of L positions: left padding, prompt, response, right padding.

use super::algo::Algo;
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::ppo::INPUT_COLUMNS;
use crate::kernels::rollout::{LossInputs, pack_loss_inputs};
use crate::model::HeadWindow;
use crate::model::checkpoint::{f32_entry, safetensors_bytes, write_atomically};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::path::Path;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct RolloutBatch {
    pub b: usize,
    pub l: usize,
    pub input_ids: Vec<u32>,
    /// 1 on real tokens, 0 on padding.
    pub attention_mask: Vec<u32>,
    /// 1 where position j holds a response token that is trained on.
    pub response_mask: Vec<f32>,
    /// Per token j, from the hidden state at j − 1.
    pub old_logprobs: Vec<f32>,
    /// PPO's (absent from a critic-free batch).
    pub old_values: Option<Vec<f32>>,
    /// Used as given (already whitened for PPO; GRPO's and RLOO's per-completion advantage on
    /// each of its tokens).
    pub advantages: Vec<f32>,
    /// PPO's (absent from a critic-free batch).
    pub returns: Option<Vec<f32>>,
    /// Needed by GRPO's KL term; for inspection otherwise.
    pub ref_logprobs: Option<Vec<f32>>,
    pub scores: Option<Vec<f32>>,
}

fn tensor<'a>(st: &'a SafeTensors, origin: &str, name: &str) -> Result<TensorView<'a>> {
    st.tensor(name).map_err(|_| Error::Data(format!("{origin}: missing tensor {name}")))
}

/// Reads a tensor of `shape` as f32 from F32, or from integer types (I32, I64) when `ints_ok`.
fn read_f32(st: &SafeTensors, origin: &str, name: &str, shape: &[usize], ints_ok: bool) -> Result<Vec<f32>> {
    let t = tensor(st, origin, name)?;
    if t.shape() != shape {
        return Err(Error::Data(format!("{origin}: tensor {name} has shape {:?}, expected {shape:?}", t.shape())));
    }
    Ok(match t.dtype() {
        Dtype::F32 => bytemuck::pod_collect_to_vec(t.data()),
        Dtype::I32 if ints_ok => {
            bytemuck::pod_collect_to_vec::<u8, i32>(t.data()).into_iter().map(|x| x as f32).collect()
        }
        Dtype::I64 if ints_ok => {
            bytemuck::pod_collect_to_vec::<u8, i64>(t.data()).into_iter().map(|x| x as f32).collect()
        }
        other => {
            let want = if ints_ok { "I32, I64 or F32" } else { "F32" };
            return Err(Error::Data(format!("{origin}: tensor {name} has dtype {other:?}, expected {want}")));
        }
    })
}

impl RolloutBatch {
    pub fn load(path: &Path) -> Result<RolloutBatch> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let origin = path.display().to_string();
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::Data(format!("{origin}: not a valid safetensors file: {e}")))?;
        let ids = tensor(&st, &origin, "input_ids")?;
        let (b, l) = match ids.shape() {
            [b, l] if *b > 0 && *l > 0 => (*b, *l),
            s => {
                return Err(Error::Data(format!("{origin}: input_ids has shape {s:?}, expected [B, L] with B, L ≥ 1")));
            }
        };
        let input_ids = match ids.dtype() {
            Dtype::I32 => {
                bytemuck::pod_collect_to_vec::<u8, i32>(ids.data()).into_iter().map(|x| x as i64).collect::<Vec<_>>()
            }
            Dtype::I64 => bytemuck::pod_collect_to_vec::<u8, i64>(ids.data()),
            other => {
                return Err(Error::Data(format!("{origin}: input_ids has dtype {other:?}, expected I32 or I64")));
            }
        };
        if let Some(bad) = input_ids.iter().find(|&&x| x < 0 || x > u32::MAX as i64) {
            return Err(Error::Data(format!("{origin}: input_ids holds {bad}, not a token id")));
        }
        let shape = [b, l];
        let attention_mask =
            read_f32(&st, &origin, "attention_mask", &shape, true)?.into_iter().map(|m| (m != 0.0) as u32).collect();
        let optional = |name: &str, shape: &[usize]| match st.tensor(name) {
            Ok(_) => read_f32(&st, &origin, name, shape, false).map(Some),
            Err(_) => Ok(None),
        };
        Ok(RolloutBatch {
            b,
            l,
            input_ids: input_ids.into_iter().map(|x| x as u32).collect(),
            attention_mask,
            response_mask: read_f32(&st, &origin, "response_mask", &shape, false)?,
            old_logprobs: read_f32(&st, &origin, "old_logprobs", &shape, false)?,
            old_values: optional("old_values", &shape)?,
            advantages: read_f32(&st, &origin, "advantages", &shape, false)?,
            returns: optional("returns", &shape)?,
            ref_logprobs: optional("ref_logprobs", &shape)?,
            scores: optional("scores", &[b])?,
        })
    }

    /// Writes the batch file (through a temporary file).
    pub fn save(&self, path: &Path) -> Result<()> {
        let ids: Vec<i32> = self.input_ids.iter().map(|&x| x as i32).collect();
        let mask: Vec<i32> = self.attention_mask.iter().map(|&x| x as i32).collect();
        let shape = vec![self.b, self.l];
        let mut entries = vec![
            ("input_ids".to_string(), Dtype::I32, shape.clone(), bytemuck::cast_slice(&ids)),
            ("attention_mask".to_string(), Dtype::I32, shape.clone(), bytemuck::cast_slice(&mask)),
            f32_entry("response_mask", shape.clone(), &self.response_mask),
            f32_entry("old_logprobs", shape.clone(), &self.old_logprobs),
            f32_entry("advantages", shape.clone(), &self.advantages),
        ];
        for (name, x) in
            [("old_values", &self.old_values), ("returns", &self.returns), ("ref_logprobs", &self.ref_logprobs)]
        {
            if let Some(x) = x {
                entries.push(f32_entry(name, shape.clone(), x));
            }
        }
        if let Some(s) = &self.scores {
            entries.push(f32_entry("scores", vec![self.b], s));
        }
        write_atomically(path, &safetensors_bytes(entries, None, "rollout batch")?)
    }

    /// Checks that the batch has what `algo`'s update reads: PPO's old values and returns, and
    /// the reference log-probs when a KL term is inside the loss.
    pub fn check_for(&self, algo: Algo, kl_in_loss: bool, origin: &Path) -> Result<()> {
        let mut missing = Vec::new();
        if algo.has_value_head() {
            if self.old_values.is_none() {
                missing.push("old_values");
            }
            if self.returns.is_none() {
                missing.push("returns");
            }
        }
        if kl_in_loss && self.ref_logprobs.is_none() {
            missing.push("ref_logprobs");
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::Data(format!(
            "{}: the {algo} update needs tensor(s) {} [B, L] (docs/design.md §6)",
            origin.display(),
            missing.join(", ")
        )))
    }
}

/// A rollout batch as the PPO update reads it: the tokens and masks on the host (the update
/// gathers minibatch rows of them and groups embedding gradients by token), and the per-token
/// floats packed on the GPU as the loss kernels' input block, over the positions of the head
/// window only, where the model's heads run (a rollout's `Sequences::head_window`; for a batch
/// file, `HeadWindow::trained` of its response mask).
pub struct PpoBatch {
    pub b: usize,
    pub l: usize,
    pub input_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
    pub response_mask: Vec<f32>,
    /// The positions of each row that the losses read, W = window.len of them.
    pub window: HeadWindow,
    /// [B·W, 8]: the loss kernels' per-token inputs (`kernels::ppo::INPUT_COLUMNS`) at the
    /// window's positions.
    pub inputs: Tensor,
}

impl PpoBatch {
    /// Uploads a batch read from a file and packs its inputs on the GPU (what it lacks is 0).
    pub fn upload(gpu: &Arc<Gpu>, batch: &RolloutBatch) -> Result<PpoBatch> {
        let window = HeadWindow::trained(&batch.response_mask, batch.l);
        let shape = [batch.b, window.len];
        let up = |x: &[f32]| gpu.upload(&shape, &window.slice(x, batch.l));
        let zeros = vec![0.0; batch.b * batch.l];
        let up_or_zeros = |x: &Option<Vec<f32>>| up(x.as_deref().unwrap_or(&zeros));
        let (mask, old_logprobs, advantages) =
            (up(&batch.response_mask)?, up(&batch.old_logprobs)?, up(&batch.advantages)?);
        let (old_values, returns, ref_logprobs) =
            (up_or_zeros(&batch.old_values)?, up_or_zeros(&batch.returns)?, up_or_zeros(&batch.ref_logprobs)?);
        let inputs = gpu.tensor(&[batch.b * window.len, INPUT_COLUMNS], DType::F32)?;
        let mut rec = Recorder::new(gpu);
        let x = LossInputs {
            mask: &mask,
            old_logprobs: &old_logprobs,
            old_values: &old_values,
            advantages: &advantages,
            returns: &returns,
            ref_logprobs: &ref_logprobs,
        };
        pack_loss_inputs(&mut rec, &inputs, &x)?;
        rec.submit();
        Ok(PpoBatch {
            b: batch.b,
            l: batch.l,
            input_ids: batch.input_ids.clone(),
            attention_mask: batch.attention_mask.clone(),
            response_mask: batch.response_mask.clone(),
            window,
            inputs,
        })
    }

    /// `field`'s values for `rows`, concatenated.
    pub fn gather<T: Copy>(&self, field: &[T], rows: &[usize]) -> Vec<T> {
        rows.iter().flat_map(|&r| field[r * self.l..(r + 1) * self.l].iter().copied()).collect()
    }

    /// Tokens the loss trains on in `rows`: response positions after the first of each row.
    pub fn trained_tokens(&self, rows: &[usize]) -> usize {
        rows.iter().map(|&r| (1..self.l).filter(|&j| self.response_mask[r * self.l + j] != 0.0).count()).sum()
    }
}
