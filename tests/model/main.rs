//! Model-level tests: checkpoint I/O (both Hugging Face name forms, f16/bf16, the errors a bad
//! checkpoint gives), and the whole model on the GPU against the CPU reference.

#[path = "../support/suite_gpu.rs"]
mod suite_gpu;

mod budgets;
mod checkpoint;
mod cli;
mod common;
mod demo;
mod forward_backward;
mod generation;
mod hf_fixture;
mod memory;
mod optimizer;
mod ppo_fixture;
mod reward_train;
mod rollout;
mod score_and_tokenizer;
mod sft_generate;
mod train;
