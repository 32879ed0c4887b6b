//! reward-train on separable preference pairs: the held-out accuracy gets high, and the result
//! is a reward model that `score` and `train --reward-model` read.

use crate::common::scratch_dir;
use crate::suite_gpu::suite_gpu;
use ppo_wgpu::gpu::Gpu;
use ppo_wgpu::model::checkpoint;
use ppo_wgpu::model::optimizer::OptimizerArgs;
use ppo_wgpu::reward_train::{RewardTrainOptions, run};
use ppo_wgpu::rng::Rng;
use ppo_wgpu::tokenizer::Tokenizer;
use std::path::Path;

fn setup(dir: &Path) {
    let mut rng = Rng::new(50);
    let pick = |rng: &mut Rng, xs: &[&str]| xs[rng.below(xs.len() as u32) as usize].to_string();
    let (subj, good, bad, obj) = (
        ["the cat", "the dog", "a bird", "the film"],
        ["good", "great", "fine"],
        ["bad", "awful", "poor"],
        ["the ball", "a tree", "the sea"],
    );
    let mut corpus = Vec::new();
    let mut pairs = Vec::new();
    for _ in 0..240 {
        let prompt = pick(&mut rng, &subj);
        let chosen = format!(" was {} with {}.", pick(&mut rng, &good), pick(&mut rng, &obj));
        let rejected = format!(" was {} with {}.", pick(&mut rng, &bad), pick(&mut rng, &obj));
        corpus.push(format!("{prompt}{chosen}\n{prompt}{rejected}"));
        pairs.push(serde_json::json!({ "prompt": prompt, "chosen": chosen, "rejected": rejected }).to_string());
    }
    std::fs::write(dir.join("corpus.txt"), corpus.join("\n")).unwrap();
    std::fs::write(dir.join("pairs.jsonl"), pairs.join("\n")).unwrap();
    crate::common::tiny_model(&dir.join("corpus.txt"), &dir.join("base"), 300, 4);
}

fn options(dir: &Path, pairs: &str) -> RewardTrainOptions {
    RewardTrainOptions {
        base: dir.join("base"),
        pairs: dir.join(pairs),
        out: dir.join("rm"),
        epochs: 3,
        batch_size: 16,
        lr: 3e-3,
        warmup: 0,
        optimizer: OptimizerArgs::default(),
        max_length: None,
        eval_fraction: 0.2,
        seed: 0,
        quiet: true,
    }
}

#[test]
fn reward_train_separates_preference_pairs() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let dir = scratch_dir("reward-train");
    setup(&dir);
    let reports = run(&gpu, &options(&dir, "pairs.jsonl")).unwrap();
    let last = reports.last().unwrap();
    assert!(last.eval_accuracy >= 0.9, "held-out accuracy {reports:?}");
    assert!(last.eval_loss < reports[0].train_loss, "the loss falls: {reports:?}");

    let rm = checkpoint::load(&dir.join("rm")).unwrap();
    assert!(rm.heads.reward && !rm.heads.value);
    let config = std::fs::read_to_string(dir.join("rm/config.json")).unwrap();
    assert!(config.contains("GPT2ForSequenceClassification") && config.contains("\"num_labels\": 1"), "{config}");
    let model = ppo_wgpu::model::load(&gpu, &dir.join("rm")).unwrap();
    let tok = Tokenizer::load(&dir.join("rm/tokenizer.json")).unwrap();
    let reward = |text: &str| {
        let mut ids = tok.encode(text).unwrap();
        ids.extend(tok.eos_id());
        ppo_wgpu::score::score(&model, &ids, 1.0).unwrap().reward.unwrap()
    };
    assert!(reward("the dog was great with a tree.") > reward("the dog was awful with a tree."));
}

#[test]
fn reward_train_names_a_bad_line() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let dir = scratch_dir("reward-train-bad");
    setup(&dir);
    std::fs::write(
        dir.join("bad.jsonl"),
        "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{\"prompt\": \"a\"}\n",
    )
    .unwrap();
    let err = run(&gpu, &options(&dir, "bad.jsonl")).unwrap_err().to_string();
    assert!(err.contains("bad.jsonl:2") && err.contains("chosen"), "{err}");
}
