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
        .map(|spec| match old.as_slice().first() {
            Some((n, _, _)) if *n == spec.name => old.next().unwrap(),
            _ => {
                let n = spec.len();
                (spec.name, spec.shape, vec![0.0; n])
            }
        })
        .collect();
    Checkpoint { config: ck.config, heads: want, tensors }
}
