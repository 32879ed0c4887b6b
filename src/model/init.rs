//! Fresh weights for a new model, initialised as GPT-2 was (and as Hugging Face's
//! `GPT2PreTrainedModel._init_weights` does): normal(0, 0.02) for embeddings and linear weights,
//! with the residual projections (attn.c_proj, mlp.c_proj) scaled by 1/sqrt(2·n_layer); zero
//! biases; LayerNorm gains 1. Value and reward heads start at zero (as TRL's value head is
//! near zero), so a new head predicts 0 until trained.

use super::checkpoint::Checkpoint;
use super::config::{GptConfig, Heads, ParamKind};
use crate::rng::Rng;

pub fn init_weights(config: &GptConfig, heads: Heads, seed: u64) -> Checkpoint {
    let mut rng = Rng::new(seed);
    let residual_scale = 1.0 / (2.0 * config.n_layer as f64).sqrt();
    let tensors = config
        .param_specs(heads)
        .into_iter()
        .map(|spec| {
            let n = spec.len();
            let normal = |rng: &mut Rng, std: f64| (0..n).map(|_| (rng.normal() * std) as f32).collect();
            let values: Vec<f32> = match spec.kind {
                ParamKind::Embedding | ParamKind::Linear => normal(&mut rng, 0.02),
                ParamKind::ResidualProjection => normal(&mut rng, 0.02 * residual_scale),
                ParamKind::LayerNormGain => vec![1.0; n],
                ParamKind::Bias | ParamKind::Head => vec![0.0; n],
            };
            (spec.name, spec.shape, values)
        })
        .collect();
    Checkpoint { config: config.clone(), heads, tensors }
}

/// The checkpoint with exactly `heads`: zero-initialised heads for those it lacks (a value head
/// for PPO, say), the heads not asked for dropped (a value head for GRPO), every other tensor
/// kept as it is.
pub fn with_heads(ck: Checkpoint, heads: Heads) -> Checkpoint {
    if heads == ck.heads {
        return ck;
    }
    let mut old: std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> =
        ck.tensors.into_iter().map(|(n, shape, values)| (n, (shape, values))).collect();
    let tensors = ck
        .config
        .param_specs(heads)
        .into_iter()
        .map(|spec| match old.remove(&spec.name) {
            Some((shape, values)) => (spec.name, shape, values),
            None => {
                let n = spec.len();
                (spec.name, spec.shape, vec![0.0; n])
            }
        })
        .collect();
    Checkpoint { config: ck.config, heads, tensors }
}
