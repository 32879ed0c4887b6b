//! Helpers shared by the model tests.

use safetensors::SafeTensors;
use std::path::PathBuf;

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
