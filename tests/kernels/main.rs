//! Kernel tests: every kernel against its CPU reference (`ppo_wgpu::reference`) on random
//! inputs, backward kernels also against finite differences, and every shader through naga.
//! One test binary, so that the GPU is opened once and the build links once.

#[path = "../support/suite_gpu.rs"]
mod suite_gpu;

mod common;

mod adamw;
mod advantages;
mod attention;
mod cross_entropy;
mod embedding;
mod f16_weights;
mod gelu;
mod gpu_layer;
mod kv_cache;
mod layernorm;
mod matmul;
mod padded_vocab;
mod ppo;
mod preference;
mod residual;
mod rollout;
mod sampling;
mod shaders;
mod variants;
mod wide_subgroups;
mod window;
