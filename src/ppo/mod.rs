//! The PPO layer: the algorithms (PPO, GRPO, RLOO), the rollout batch, rollouts from generation
//! to advantages, rewards, the update, and the trainer loop.

pub mod algo;
pub mod batch;
pub mod metrics;
pub mod reward;
pub mod rollout;
pub mod trainer;
pub mod update;
