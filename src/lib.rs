//! ppo-wgpu: RLHF with PPO for GPT-style language models, as hand-written WGSL compute kernels
//! dispatched through wgpu.
//!
//! Layers, bottom up (see docs/design.md): `shaders/*.wgsl` → [`gpu`] (device, pipelines, tensors,
//! recorder) → [`kernels`] (one module per kernel family) → model → PPO → CLI. Every kernel has
//! a plain CPU reference in [`reference`].

pub mod demo;
pub mod error;
pub mod generate;
pub mod gpu;
pub mod kernels;
pub mod model;
pub mod ppo;
pub mod progress;
pub mod reference;
pub mod reward_train;
pub mod rng;
pub mod score;
pub mod selfcheck;
pub mod sft;
pub mod tokenizer;

pub use error::{Error, Result};
