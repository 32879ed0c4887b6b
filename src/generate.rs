//! `ppo-wgpu generate`: sampling continuations with temperature, top-k and top-p.
//!
//! This is the simple version: every new token reruns the forward over the whole sequence and
//! reads back one row of logits. The KV-cached sampler that stays on the GPU belongs to the PPO
//! rollout.

use crate::error::{Error, Result};
use crate::gpu::Recorder;
use crate::model::{Batch, Model};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    /// Softmax temperature; 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1 = all).
    pub top_p: f32,
}

/// Picks a token from one row of logits.
pub fn sample(logits: &[f32], s: Sampling, rng: &mut Rng) -> u32 {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if s.temperature <= 0.0 {
        return order[0] as u32;
    }
    if s.top_k > 0 {
        order.truncate(s.top_k);
    }
    let max = logits[order[0]] as f64;
    let weights: Vec<f64> = order.iter().map(|&i| ((logits[i] as f64 - max) / s.temperature as f64).exp()).collect();
    let total: f64 = weights.iter().sum();
    // Nucleus: the shortest prefix (most likely first) with probability ≥ top_p.
    let mut kept = 0;
    let mut mass = 0.0;
    while kept < order.len() && (kept == 0 || mass < s.top_p as f64 * total) {
        mass += weights[kept];
        kept += 1;
    }
    let mut r = rng.uniform() * mass;
    for (i, w) in weights[..kept].iter().enumerate() {
        if r < *w {
            return order[i] as u32;
        }
        r -= w;
    }
    order[kept - 1] as u32
}

/// Appends up to `max_new_tokens` sampled tokens to `prompt`, stopping after `eos`. The context
/// is the last n_positions tokens.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    max_new_tokens: usize,
    s: Sampling,
    eos: Option<u32>,
    seed: u64,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::Input("generate needs a prompt of at least one token".into()));
    }
    let gpu = model.gpu();
    let (v, max_t) = (model.config.vocab_size, model.config.n_positions);
    let mut rng = Rng::new(seed);
    let mut ids = prompt.to_vec();
    for _ in 0..max_new_tokens {
        let context = &ids[ids.len().saturating_sub(max_t)..];
        let t = context.len();
        let batch = Batch::new(gpu, &model.config, context, &vec![1; t], 1, t)?;
        let mut rec = Recorder::new(gpu);
        let acts = model.forward(&mut rec, &batch)?;
        rec.submit();
        let last = gpu.download_range(&acts.logits, (t - 1) * v, v)?;
        let next = sample(&last, s, &mut rng);
        ids.push(next);
        if Some(next) == eos {
            break;
        }
    }
    Ok(ids)
}
