//! From sampled tokens to the batch the update trains on, on the GPU (docs/design.md §1, §4):
//! one forward of the policy (log-probs at the training precision; values for PPO), one of the
//! frozen reference (its log-probs; skipped when β = 0), the per-token KL and rewards, the
//! advantages (PPO: GAE and whitening; GRPO and RLOO: against the completion's group), and the
//! packed loss inputs. The host sees the tokens and the scores going in and a handful of
//! statistics coming out; the per-token floats stay on the GPU, where the update reads them.

use super::algo::Algo;
use super::batch::{PpoBatch, RolloutBatch};
use crate::error::{Error, Result};
use crate::generate::Generation;
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::gae::{GaeKernel, gae};
use crate::kernels::group_advantages::{group_advantages, sequence_returns};
use crate::kernels::ppo::{INPUT_COLUMNS, logprob_entropy};
use crate::kernels::rewards::{KlEstimator, kl_rewards, masked_moments, masked_whiten};
use crate::kernels::rollout::{LossInputs, pack_loss_inputs, values_per_token};
use crate::model::{Batch, HeadWindow, Model};
use std::sync::Arc;

/// B rows of L = P + R positions: left padding, the prompt, the response up to and including
/// its first end-of-sequence token, right padding.
#[derive(Clone, Debug)]
pub struct Sequences {
    pub b: usize,
    pub l: usize,
    /// P: where every response starts.
    pub prompt_len: usize,
    pub input_ids: Vec<u32>,
    /// 1 on real tokens (prompt and response), 0 on padding.
    pub attention_mask: Vec<u32>,
    /// 1 on response tokens (the ones trained on).
    pub response_mask: Vec<f32>,
    pub prompts: Vec<Vec<u32>>,
    pub responses: Vec<Vec<u32>>,
    /// Whether each response ended with the end-of-sequence token.
    pub ended: Vec<bool>,
}

impl Sequences {
    /// Lays out a generation with room for `response_len` tokens per row (its max_new_tokens,
    /// so that every iteration has the same shapes).
    pub fn new(generation: &Generation, response_len: usize, eos: Option<u32>) -> Sequences {
        let (b, p) = (generation.prompts.len(), generation.prompt_len);
        let l = p + response_len;
        let mut input_ids = vec![eos.unwrap_or(0); b * l];
        let (mut attention_mask, mut response_mask) = (vec![0u32; b * l], vec![0f32; b * l]);
        for (row, (prompt, response)) in generation.prompts.iter().zip(&generation.responses).enumerate() {
            assert!(
                prompt.len() <= p && response.len() <= response_len,
                "row {row} does not fit the layout: a prompt of {} (P = {p}), a response of {} (R = {response_len})",
                prompt.len(),
                response.len()
            );
            let start = row * l + p - prompt.len();
            input_ids[start..row * l + p].copy_from_slice(prompt);
            attention_mask[start..row * l + p].iter_mut().for_each(|m| *m = 1);
            let r = row * l + p;
            input_ids[r..r + response.len()].copy_from_slice(response);
            attention_mask[r..r + response.len()].iter_mut().for_each(|m| *m = 1);
            response_mask[r..r + response.len()].iter_mut().for_each(|m| *m = 1.0);
        }
        let ended = (0..b).map(|row| generation.ended(row, eos)).collect();
        Sequences {
            b,
            l,
            prompt_len: p,
            input_ids,
            attention_mask,
            response_mask,
            prompts: generation.prompts.clone(),
            responses: generation.responses.clone(),
            ended,
        }
    }

    /// The sequences as a model batch (Hugging Face position ids from the mask).
    pub fn batch(&self, model: &Model) -> Result<Batch> {
        Batch::new(model.gpu(), &model.config, &self.input_ids, &self.attention_mask, self.b, self.l)
    }

    /// The positions whose hidden states the losses read: from the prompt's last position,
    /// which predicts the first response token, to the end. It depends on the layout alone, so
    /// that every iteration's tensors keep their shapes and the buffer pool serves them all
    /// (docs/design.md §7).
    pub fn head_window(&self) -> HeadWindow {
        let start = self.prompt_len.max(1) - 1;
        HeadWindow { start, len: self.l - start }
    }

    pub fn mean_response_len(&self) -> f32 {
        self.responses.iter().map(Vec::len).sum::<usize>() as f32 / self.b.max(1) as f32
    }
}

/// The hyperparameters from log-probs to advantages (docs/design.md §4; TRL's names).
#[derive(Clone, Copy, Debug)]
pub struct AdvantageConfig {
    pub algo: Algo,
    /// The sampling temperature: log-probs are those of softmax(logits/τ).
    pub temperature: f32,
    /// β, the KL coefficient: of the penalty in the rewards (PPO, RLOO), or of the KL term in
    /// GRPO's loss (its rewards carry none).
    pub beta: f32,
    /// The per-token KL estimator of the rewards (GRPO's KL is always k3).
    pub kl_estimator: KlEstimator,
    pub gamma: f32,
    pub lam: f32,
    /// G: completions per prompt, consecutive rows (GRPO, RLOO).
    pub num_generations: usize,
    /// GRPO: divide the centred scores by the group's standard deviation.
    pub scale_rewards: bool,
}

/// What the host learns about a rollout.
#[derive(Clone, Copy, Debug, Default)]
pub struct RolloutStats {
    /// Σ_t KL per sequence, averaged over the batch (TRL's `objective/kl`).
    pub kl_mean: f32,
    /// Mean entropy per response token.
    pub entropy_mean: f32,
    /// 1 − Var(returns − values)/Var(returns) over the response tokens (PPO).
    pub explained_variance: Option<f32>,
    /// Mean of the value head over the response tokens (PPO).
    pub value_mean: Option<f32>,
    /// Response tokens in the batch.
    pub tokens: f32,
}

/// A rollout ready for the update, with its per-token tensors (for `--dump-batch`).
pub struct Rollout {
    pub batch: PpoBatch,
    pub stats: RolloutStats,
    pub scores: Vec<f32>,
    algo: Algo,
    gpu: Arc<Gpu>,
    // The per-token tensors, [B, W] over `batch.window`.
    old_logprobs: Tensor,
    ref_logprobs: Tensor,
    old_values: Tensor,
    advantages: Tensor,
    returns: Tensor,
}

/// Runs the policy and reference forwards over `seqs` and computes the per-token KL and
/// rewards and the advantages of `cfg.algo` for `scores` [B] (on the GPU: a reward model's
/// forward may still be running), all in one submit; one small readback, which also brings
/// the scores to the host. Without a reference (β = 0) the KL is 0 and no reference forward runs.
pub fn prepare(
    policy: &Model,
    reference: Option<&Model>,
    seqs: &Sequences,
    scores: &Tensor,
    cfg: &AdvantageConfig,
) -> Result<Rollout> {
    let gpu = policy.gpu();
    let (b, l, v, vp) = (seqs.b, seqs.l, policy.config.vocab_size, policy.config.padded_vocab_size());
    if let Some(reference) = reference.filter(|r| r.config.vocab_size != v) {
        return Err(Error::Input(format!(
            "the reference model's vocabulary ({}) differs from the policy's ({v})",
            reference.config.vocab_size
        )));
    }
    if scores.len() != b {
        return Err(Error::Input(format!("{} scores for a batch of {b} sequences", scores.len())));
    }
    if policy.heads.value != cfg.algo.has_value_head() {
        return Err(Error::Input(format!(
            "{} needs a policy {} a value head",
            cfg.algo,
            if cfg.algo.has_value_head() { "with" } else { "without" }
        )));
    }
    let batch = seqs.batch(policy)?;
    // The heads run, and every per-token tensor below lives, at the window's W positions of
    // each row: from the last prompt position to the end.
    let window = seqs.head_window();
    let w = window.len;
    let tokens = gpu.upload_u32(&[b * w], &window.slice(&seqs.input_ids, l))?;
    let mask = gpu.upload(&[b, w], &window.slice(&seqs.response_mask, l))?;
    let f32s = |shape: &[usize]| gpu.tensor(shape, DType::F32);
    let (old_logprobs, entropy, ref_logprobs, ref_entropy) =
        (f32s(&[b, w])?, f32s(&[b, w])?, f32s(&[b, w])?, f32s(&[b, w])?);
    let (old_values, kl, rewards, advantages, returns) =
        (f32s(&[b, w])?, f32s(&[b, w])?, f32s(&[b, w])?, f32s(&[b, w])?, f32s(&[b, w])?);
    let inputs = f32s(&[b * w, INPUT_COLUMNS])?;
    // Moments of KL, entropy, raw advantages, returns and values, one 256-byte slot each; then
    // the scores.
    const SLOT: usize = 64;
    let stats = f32s(&[5 * SLOT + b])?;
    let slot = |k: usize| stats.view(gpu, k * SLOT, &[3]);

    let mut rec = Recorder::new(gpu);
    {
        let acts = policy.forward_window(&mut rec, &batch, window)?;
        let logits = acts.logits()?.reshape(&[b * w, vp])?;
        logprob_entropy(&mut rec, &old_logprobs, &entropy, &logits, &tokens, w, cfg.temperature)?;
        match &acts.values {
            Some(values) => values_per_token(&mut rec, &old_values, values)?,
            None => rec.zero(&old_values),
        }
    }
    match reference {
        Some(reference) => {
            let acts = reference.forward_window(&mut rec, &batch, window)?;
            let logits = acts.logits()?.reshape(&[b * w, vp])?;
            logprob_entropy(&mut rec, &ref_logprobs, &ref_entropy, &logits, &tokens, w, cfg.temperature)?;
        }
        None => rec.copy(&old_logprobs, &ref_logprobs),
    }
    // GRPO's KL lives in its loss, as k3; its rewards are the scores alone.
    let (reward_beta, estimator) =
        if cfg.algo.kl_in_loss() { (0.0, KlEstimator::K3) } else { (cfg.beta, cfg.kl_estimator) };
    kl_rewards(&mut rec, &kl, &rewards, &old_logprobs, &ref_logprobs, &mask, scores, reward_beta, estimator)?;
    rec.copy(scores, &stats.view(gpu, 5 * SLOT, &[b])?);
    masked_moments(&mut rec, &slot(0)?, &kl, &mask)?;
    masked_moments(&mut rec, &slot(1)?, &entropy, &mask)?;
    match cfg.algo.group_baseline(cfg.scale_rewards) {
        None => {
            gae(
                &mut rec,
                GaeKernel::PerSequence,
                &advantages,
                &returns,
                &rewards,
                &old_values,
                &mask,
                cfg.gamma,
                cfg.lam,
            )?;
            masked_moments(&mut rec, &slot(3)?, &returns, &mask)?;
            masked_moments(&mut rec, &slot(4)?, &old_values, &mask)?;
            masked_whiten(&mut rec, &advantages, &mask, &slot(2)?, true)?;
        }
        Some(baseline) => {
            // A completion's return: its score (GRPO), or its score plus its per-token KL
            // penalties (RLOO).
            let sequence_return = f32s(&[b])?;
            sequence_returns(&mut rec, &sequence_return, &rewards)?;
            group_advantages(&mut rec, &advantages, &sequence_return, &mask, cfg.num_generations, baseline)?;
            rec.zero(&returns);
        }
    }
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

    let s = gpu.download(&stats)?;
    let moments = |k: usize| (s[k * SLOT], s[k * SLOT + 1], s[k * SLOT + 2]);
    let ((kl_mean, _, count), (entropy_mean, _, _)) = (moments(0), moments(1));
    let ((_, adv_var, _), (_, ret_var, _), (value_mean, _, _)) = (moments(2), moments(3), moments(4));
    let critic = cfg.algo.has_value_head();
    let stats = RolloutStats {
        kl_mean: kl_mean * count / b as f32,
        entropy_mean,
        explained_variance: critic.then(|| if ret_var > 0.0 { 1.0 - adv_var / ret_var } else { f32::NAN }),
        value_mean: critic.then_some(value_mean),
        tokens: count,
    };
    let batch = PpoBatch {
        b,
        l,
        input_ids: seqs.input_ids.clone(),
        attention_mask: seqs.attention_mask.clone(),
        response_mask: seqs.response_mask.clone(),
        window,
        inputs,
    };
    Ok(Rollout {
        batch,
        stats,
        scores: s[5 * SLOT..].to_vec(),
        algo: cfg.algo,
        gpu: gpu.clone(),
        old_logprobs,
        ref_logprobs,
        old_values,
        advantages,
        returns,
    })
}

impl Rollout {
    /// The batch in the file format of docs/design.md §6 (downloads the per-token tensors;
    /// outside the head window, where nothing is trained, they are 0).
    pub fn to_file(&self) -> Result<RolloutBatch> {
        let (window, l) = (self.batch.window, self.batch.l);
        let get = |x: &Tensor| Ok::<_, Error>(window.expand(&self.gpu.download(x)?, l));
        let critic = self.algo.has_value_head();
        Ok(RolloutBatch {
            b: self.batch.b,
            l,
            input_ids: self.batch.input_ids.clone(),
            attention_mask: self.batch.attention_mask.clone(),
            response_mask: self.batch.response_mask.clone(),
            old_logprobs: get(&self.old_logprobs)?,
            old_values: critic.then(|| get(&self.old_values)).transpose()?,
            advantages: get(&self.advantages)?,
            returns: critic.then(|| get(&self.returns)).transpose()?,
            ref_logprobs: Some(get(&self.ref_logprobs)?),
            scores: Some(self.scores.clone()),
        })
    }
}
