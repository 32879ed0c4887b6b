//! Fresh weights for a new model, initialised as GPT-2 was (and as Hugging Face's
//! `GPT2PreTrainedModel._init_weights` does): normal(0, 0.02) for embeddings and linear weights,
//! with the residual projections (attn.c_proj, mlp.c_proj) scaled by 1/sqrt(2·n_layer); zero
//! biases; LayerNorm gains 1. Value and reward heads start at zero (as TRL's value head is
//! near zero), so a new head predicts 0 until trained.

use super::checkpoint::Checkpoint;
use super::config::{GptConfig, Heads};
use crate::rng::Rng;

pub fn init_weights(config: &GptConfig, heads: Heads, seed: u64) -> Checkpoint {
    let mut rng = Rng::new(seed);
    let residual_scale = 1.0 / (2.0 * config.n_layer as f64).sqrt();
    let tensors = config
        .param_specs(heads)
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if name.starts_with("v_head") || name.starts_with("score") || name.ends_with(".bias")
            {
                vec![0.0; n]
            } else if name.contains("ln_") {
                vec![1.0; n] // LayerNorm gains (their biases were caught above)
            } else {
                let std = if name.ends_with("c_proj.weight") { 0.02 * residual_scale } else { 0.02 };
                (0..n).map(|_| (rng.normal() * std) as f32).collect()
            };
            (name, shape, values)
        })
        .collect();
    Checkpoint { config: config.clone(), heads, tensors }
}

/// Adds zero-initialised heads the checkpoint lacks (a value head for PPO, say), keeping every
/// existing tensor.
pub fn with_heads(ck: Checkpoint, heads: Heads) -> Checkpoint {
    let want = Heads { value: ck.heads.value || heads.value, reward: ck.heads.reward || heads.reward };
    if want == ck.heads {
        return ck;
    }
    let mut old = ck.tensors.into_iter();
    let tensors = ck
        .config
        .param_specs(want)
        .into_iter()
        .map(|(name, shape)| match old.as_slice().first() {
            Some((n, _, _)) if *n == name => old.next().unwrap(),
            _ => {
                let n = shape.iter().product();
                (name, shape, vec![0.0; n])
            }
        })
        .collect();
    Checkpoint { config: ck.config, heads: want, tensors }
}
