//! The shipped demo: the files in weights/ load and agree with their configs and tokenizer;
//! prepare-demo at a tiny size makes working models, deterministically; the default run,
//! cut to two iterations, completes.

use crate::common::scratch_dir;
use crate::suite_gpu::suite_gpu;
use ppo_wgpu::demo::prepare::{POLICY_DIR, PrepareOptions, REWARD_DIR};
use ppo_wgpu::demo::{DemoOptions, SHIPPED_WEIGHTS};
use ppo_wgpu::gpu::Gpu;
use ppo_wgpu::model::checkpoint::{self, TOKENIZER_FILE, WEIGHTS_FILE};
use ppo_wgpu::tokenizer::Tokenizer;
use std::path::Path;

fn check_model_dir(dir: &Path, reward: bool) {
    let ck = checkpoint::load(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let tok = Tokenizer::load(&dir.join(TOKENIZER_FILE)).unwrap();
    assert_eq!(tok.vocab_size(), ck.config.vocab_size, "{}: tokenizer and config disagree", dir.display());
    assert_eq!(tok.eos_id(), Some(ck.config.vocab_size as u32 - 1));
    assert_eq!(ck.heads.reward, reward, "{}", dir.display());
    let bytes = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(
        st.tensors().iter().all(|(_, t)| t.dtype() == safetensors::Dtype::F16),
        "{}: shipped in f16",
        dir.display()
    );
}

#[test]
fn the_shipped_weights_load_and_match_their_configs() {
    let weights = Path::new(SHIPPED_WEIGHTS);
    check_model_dir(&weights.join(POLICY_DIR), false);
    check_model_dir(&weights.join(REWARD_DIR), true);
    let total: u64 = [POLICY_DIR, REWARD_DIR]
        .iter()
        .flat_map(|d| std::fs::read_dir(weights.join(d)).unwrap())
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(total < 20 << 20, "weights/ must stay under 20 MB, is {total} bytes");
    let readme = std::fs::read_to_string(weights.join("README.md")).unwrap();
    assert!(readme.contains("held-out accuracy") && readme.contains("prepare-demo"), "{readme}");
}

#[test]
fn prepare_demo_at_a_tiny_size_is_deterministic_and_works() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let dir = scratch_dir("prepare-demo");
    let options = |name: &str| PrepareOptions {
        out: dir.join(name),
        work: Some(dir.join(format!("{name}-work"))),
        seed: 3,
        reviews: 120,
        pairs: 80,
        vocab_size: 300,
        sft_steps: 6,
        reward_epochs: 1,
        quiet: true,
    };
    let a = ppo_wgpu::demo::prepare::run(&gpu, &options("a")).unwrap();
    ppo_wgpu::demo::prepare::run(&gpu, &options("b")).unwrap();
    check_model_dir(&a.policy, false);
    check_model_dir(&a.reward, true);
    for sub in [POLICY_DIR, REWARD_DIR] {
        for file in [WEIGHTS_FILE, TOKENIZER_FILE, "config.json"] {
            let (x, y) =
                (std::fs::read(dir.join("a").join(sub).join(file)), std::fs::read(dir.join("b").join(sub).join(file)));
            assert!(x.unwrap() == y.unwrap(), "{sub}/{file} differs between two runs with the same seed");
        }
    }
    assert!(a.reward_accuracy >= 0.0 && a.timings.len() == 5);
}

#[test]
fn the_default_run_cut_to_two_iterations_completes() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let dir = scratch_dir("demo-run");
    let mut opts = DemoOptions::defaults();
    opts.out = dir.join("demo");
    opts.iterations = 2;
    opts.quiet = true;
    let first = ppo_wgpu::demo::run(&gpu, &opts).unwrap();
    assert_eq!(first.out, dir.join("demo"));
    for file in
        ["metrics.jsonl", "samples.jsonl", "metrics.svg", "policy/model.safetensors", "checkpoint-2/trainer_state.json"]
    {
        assert!(first.out.join(file).is_file(), "{file} missing");
    }
    let svg = std::fs::read_to_string(first.out.join("metrics.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "the plot has lines");
    assert!(first.first_score.is_finite() && first.last_kl.is_finite());
    // A second run does not overwrite the first.
    let second = ppo_wgpu::demo::run(&gpu, &opts).unwrap();
    assert_eq!(second.out, dir.join("demo-2"));
}
