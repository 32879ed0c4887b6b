//! The three algorithms `train` and `update` run on one engine (docs/design.md §4): PPO, with a
//! value head and GAE; GRPO and RLOO, critic-free, whose advantages compare each completion
//! with the other completions of its prompt. Their defaults follow TRL's PPOTrainer,
//! GRPOTrainer and RLOOTrainer where those define them.

use crate::kernels::group_advantages::GroupBaseline;
use crate::kernels::ppo::LossType;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algo {
    /// PPO with a value head: GAE on KL-penalised per-token rewards, clipped surrogate and value loss.
    #[default]
    Ppo,
    /// GRPO: group-normalised scores, the k3 KL to the reference inside the loss, no value head.
    Grpo,
    /// RLOO: KL-penalised returns minus the leave-one-out mean of the group, no value head.
    Rloo,
}

impl Algo {
    /// Whether the policy carries, trains and saves a value head.
    pub fn has_value_head(self) -> bool {
        self == Algo::Ppo
    }

    /// Epochs over each rollout batch: PPO's num_ppo_epochs 4; GRPO's and RLOO's
    /// num_iterations 1 (one gradient step per sample, where the ratio is 1).
    pub fn default_epochs(self) -> usize {
        if self == Algo::Ppo { 4 } else { 1 }
    }

    /// β: PPO's and RLOO's 0.05 (the KL penalty in the rewards); GRPO's 0 (no KL term, and so
    /// no reference model).
    pub fn default_beta(self) -> f32 {
        if self == Algo::Grpo { 0.0 } else { 0.05 }
    }

    /// Completions per prompt: 1 for PPO, GRPO's 8, RLOO's 2.
    pub fn default_num_generations(self) -> usize {
        match self {
            Algo::Ppo => 1,
            Algo::Grpo => 8,
            Algo::Rloo => 2,
        }
    }

    /// Sampling temperature: PPO's 0.7, GRPO's and RLOO's 1.0.
    pub fn default_temperature(self) -> f32 {
        if self == Algo::Ppo { 0.7 } else { 1.0 }
    }

    /// How the per-token losses average: GRPO's per-sequence mean (its loss type `grpo`); a
    /// token mean for PPO and RLOO.
    pub fn default_loss_type(self) -> LossType {
        if self == Algo::Grpo { LossType::Sequence } else { LossType::Token }
    }

    /// The group baseline of a critic-free method (None for PPO); `scale_rewards` divides
    /// GRPO's centred scores by the group's standard deviation.
    pub fn group_baseline(self, scale_rewards: bool) -> Option<GroupBaseline> {
        match self {
            Algo::Ppo => None,
            Algo::Grpo if scale_rewards => Some(GroupBaseline::MeanStd),
            Algo::Grpo => Some(GroupBaseline::Mean),
            Algo::Rloo => Some(GroupBaseline::LeaveOneOut),
        }
    }

    /// Whether β weighs a KL term inside the loss (GRPO) rather than a penalty in the rewards.
    pub fn kl_in_loss(self) -> bool {
        self == Algo::Grpo
    }
}

impl std::fmt::Display for Algo {
    /// The name `--algo` takes.
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Algo::Ppo => "ppo",
            Algo::Grpo => "grpo",
            Algo::Rloo => "rloo",
        })
    }
}

/// `--loss-type grpo|dapo`, TRL's names.
pub fn parse_loss_type(s: &str) -> Result<LossType, String> {
    match s {
        "grpo" => Ok(LossType::Sequence),
        "dapo" | "token" => Ok(LossType::Token),
        _ => Err(format!("expected grpo (per-sequence mean) or dapo (token mean), got {s:?}")),
    }
}
