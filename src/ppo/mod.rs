//! The PPO layer: the rollout batch, the update, (to come) rollouts and the trainer loop.

pub mod batch;
pub mod update;
