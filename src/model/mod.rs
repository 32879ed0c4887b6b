//! The GPT-2 model: configuration, checkpoints, parameters on the GPU, forward and backward.

pub mod checkpoint;
pub mod config;
pub mod gpt;
pub mod init;
pub mod kv_cache;
pub mod optimizer;

pub use checkpoint::Checkpoint;
pub use config::{GptConfig, Heads, ParamKind, ParamSpec};
pub use gpt::{Activations, Batch, HeadWindow, Model, Params};

use crate::error::Result;
use crate::gpu::Gpu;
use std::path::Path;
use std::sync::Arc;

/// Loads a model directory onto the GPU.
pub fn load(gpu: &Arc<Gpu>, dir: &Path) -> Result<Model> {
    Model::upload(gpu, &checkpoint::load(dir)?)
}
