use crate::common::*;
use crate::suite_gpu::suite_gpu;
use ppo_wgpu::gpu::Gpu;
use ppo_wgpu::model::optimizer::OptimizerArgs;
use ppo_wgpu::rng::Rng;
use ppo_wgpu::sft::{SftOptions, run};
use ppo_wgpu::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

/// A corpus of simple sentences from a tiny grammar, as JSONL {"text"} lines, plus a trained
/// tokenizer and a freshly initialised small model in `dir/model`.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let mut rng = Rng::new(9);
    let pick = |rng: &mut Rng, xs: &[&str]| xs[rng.below(xs.len() as u32) as usize].to_string();
    let (subj, verb, obj) = (
        ["the cat", "the dog", "a bird", "my friend"],
        ["sees", "likes", "chases", "finds"],
        ["the ball", "a tree", "the house", "a fish"],
    );
    let sentences: Vec<String> = (0..400)
        .map(|_| format!("{} {} {}.", pick(&mut rng, &subj), pick(&mut rng, &verb), pick(&mut rng, &obj)))
        .collect();
    std::fs::write(dir.join("corpus.txt"), sentences.join("\n")).unwrap();
    let data: Vec<String> = sentences.iter().map(|s| serde_json::json!({ "text": s }).to_string()).collect();
    std::fs::write(dir.join("data.jsonl"), data.join("\n")).unwrap();
    let model_dir = dir.join("model");
    tiny_model(&dir.join("corpus.txt"), &model_dir, 280, 1);
    (model_dir, dir.join("data.jsonl"))
}

fn options(model: PathBuf, data: PathBuf, out: PathBuf, steps: usize) -> SftOptions {
    SftOptions {
        model,
        data,
        out,
        steps,
        batch_size: 16,
        seq_len: Some(24),
        lr: 3e-3,
        warmup: 5,
        optimizer: OptimizerArgs::default(),
        eval_fraction: 0.1,
        eval_every: 0,
        save_every: 20,
        seed: 0,
        resume: None,
        quiet: true,
    }
}

#[test]
fn sft_lowers_held_out_loss_and_resumes() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let dir = scratch_dir("sft");
    let (model_dir, data) = setup(&dir);
    let out = dir.join("out");
    let report = run(&gpu, &options(model_dir.clone(), data.clone(), out.clone(), 80)).unwrap();
    // From a random init (≈ log V ≈ 5.6) the grammar is learned quickly.
    assert!(report.first_eval_loss > 5.0, "{report:?}");
    assert!(report.final_eval_loss < 0.5 * report.first_eval_loss, "held-out loss did not fall enough: {report:?}");
    for file in ["config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl"] {
        assert!(out.join(file).is_file(), "{file} missing from the output");
    }
    for file in ["config.json", "model.safetensors", "tokenizer.json", "optimizer.safetensors", "trainer_state.json"] {
        assert!(out.join("checkpoint-80").join(file).is_file(), "{file} missing from checkpoint-80");
    }
    assert!(out.join("checkpoint-20").is_dir() && out.join("checkpoint-60").is_dir(), "--save-every 20");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 80);

    // Resume from the step-80 checkpoint to 90: ten more steps, continuing the same run.
    let mut more = options(model_dir, data, out.clone(), 90);
    more.resume = Some(out.clone());
    let resumed = run(&gpu, &more).unwrap();
    assert_eq!(resumed.steps, 10);
    assert!((resumed.first_eval_loss - report.final_eval_loss).abs() < 1e-3, "{resumed:?} vs {report:?}");
    assert!(resumed.final_eval_loss <= resumed.first_eval_loss * 1.05, "{resumed:?}");

    // Resuming a step-90 checkpoint with --steps 50 is an error, not an underflow.
    let mut fewer = options(dir.join("model"), dir.join("data.jsonl"), out.clone(), 50);
    fewer.resume = Some(out);
    let err = run(&gpu, &fewer).unwrap_err().to_string();
    assert!(err.contains("at step 90") && err.contains("--steps 50"), "{err}");
}

/// With a tokenizer that has no <|endoftext|>, an empty example is skipped, not a panic.
#[test]
fn an_empty_example_without_an_end_token_is_skipped() {
    let dir = scratch_dir("sft-no-eos");
    let (model_dir, _) = setup(&dir);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir.join("tokenizer.json")).unwrap()).unwrap();
    json["added_tokens"] = serde_json::json!([]);
    json["model"]["vocab"].as_object_mut().unwrap().remove("<|endoftext|>");
    std::fs::write(dir.join("no-eos.json"), json.to_string()).unwrap();
    let tok = Tokenizer::load(&dir.join("no-eos.json")).unwrap();
    assert!(tok.eos_id().is_none());
    std::fs::write(dir.join("empty.jsonl"), "{\"text\": \"\"}\n{\"text\": \"the cat sees a tree.\"}\n").unwrap();
    let examples = ppo_wgpu::sft::read_examples(&dir.join("empty.jsonl"), &tok, 24).unwrap();
    assert_eq!(examples.len(), 1);
}

#[test]
fn sft_rejects_bad_data_with_the_line_number() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let dir = scratch_dir("sft-bad");
    let (model_dir, _) = setup(&dir);
    std::fs::write(dir.join("bad.jsonl"), "{\"text\": \"fine\"}\n{\"prompt\": 3}\n").unwrap();
    let err = run(&gpu, &options(model_dir.clone(), dir.join("bad.jsonl"), dir.join("o"), 1)).unwrap_err().to_string();
    assert!(err.contains("bad.jsonl:2") && err.contains("prompt"), "{err}");
    let mut too_long = options(model_dir, dir.join("data.jsonl"), dir.join("o"), 1);
    too_long.seq_len = Some(33);
    assert!(run(&gpu, &too_long).unwrap_err().to_string().contains("n_positions"));
}

/// A {"prompt", "response"} example trains on the response and its end token only.
#[test]
fn sft_trains_on_the_response_not_the_prompt() {
    let dir = scratch_dir("sft-masking");
    let (model_dir, _) = setup(&dir);
    let tok = Tokenizer::load(&model_dir.join("tokenizer.json")).unwrap();
    std::fs::write(dir.join("pr.jsonl"), "{\"prompt\": \"the cat\", \"response\": \" sees a tree.\"}\n").unwrap();
    let ex = &ppo_wgpu::sft::read_examples(&dir.join("pr.jsonl"), &tok, 24).unwrap()[0];
    let (p, r) = (tok.encode("the cat").unwrap().len(), tok.encode(" sees a tree.").unwrap().len());
    assert_eq!(ex.ids.len(), p + r + 1);
    assert_eq!(ex.ids.last().copied(), tok.eos_id());
    let want: Vec<bool> = (0..p + r + 1).map(|j| j >= p).collect();
    assert_eq!(ex.trained, want);
}
