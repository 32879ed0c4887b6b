//! Helpers shared by the model tests.

use ppo_wgpu::model::{GptConfig, Heads, checkpoint, init::init_weights};
use ppo_wgpu::tokenizer::Tokenizer;
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

/// The committed PyTorch fixtures (tests/fixtures/make_*_fixture.py).
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A fresh empty directory under the target dir.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An F32 tensor of a fixture file.
pub fn read_f32(st: &SafeTensors, name: &str) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(st.tensor(name).unwrap_or_else(|e| panic!("fixture tensor {name}: {e}")).data())
}

/// max |got − want| / max |want|: the relative error of a whole tensor, as llm.c's test_gpt2
/// compares gradients.
pub fn tensor_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "tensor lengths differ");
    let scale = want.iter().fold(0.0f64, |m, &w| m.max((w as f64).abs())).max(1e-12);
    got.iter().zip(want).fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w as f64).abs())) / scale
}

/// A small model for command-level tests in `model_dir`: a byte-level BPE tokenizer of
/// `vocab_size` tokens trained on `corpus` and a GPT-2 of 2 layers,
/// 32 channels, 2 heads and 32 positions initialised with `seed`.
pub fn tiny_model(corpus: &Path, model_dir: &Path, vocab_size: usize, seed: u64) {
    let tok = Tokenizer::train_byte_level_bpe(corpus, vocab_size, &model_dir.join("tokenizer.json")).unwrap();
    let config = GptConfig {
        vocab_size: tok.vocab_size(),
        n_positions: 32,
        n_embd: 32,
        n_layer: 2,
        n_head: 2,
        layer_norm_epsilon: 1e-5,
    };
    checkpoint::save(model_dir, &init_weights(&config, Heads::default(), seed)).unwrap();
}
