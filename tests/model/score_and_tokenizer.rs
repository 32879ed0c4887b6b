use crate::common::*;
use crate::suite_gpu::suite_gpu;
use ppo_wgpu::gpu::Gpu;
use ppo_wgpu::model;
use ppo_wgpu::score::score;
use ppo_wgpu::tokenizer::{EOS_TOKEN, Tokenizer};
use safetensors::SafeTensors;
use std::path::Path;

#[test]
fn score_gives_pytorch_log_probabilities() {
    // Row 2 of the fixture batch has no padding: score it alone.
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let model = model::load(&gpu, &Path::new(FIXTURES).join("gpt2-tiny")).unwrap();
    let bytes = std::fs::read(Path::new(FIXTURES).join("gpt2-tiny-expected.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let ids: Vec<i32> = bytemuck::pod_collect_to_vec(expected.tensor("input_ids").unwrap().data());
    let want: Vec<f32> = bytemuck::pod_collect_to_vec(expected.tensor("token_logprobs").unwrap().data());
    let (t, row) = (16, 2);
    let ids: Vec<u32> = ids[row * t..(row + 1) * t].iter().map(|&x| x as u32).collect();
    let s = score(&model, &ids, 1.0).unwrap();
    assert_eq!(s.logprobs[0], None);
    for j in 1..t {
        let (got, want) = (s.logprobs[j].unwrap(), want[row * (t - 1) + j - 1]);
        assert!((got - want).abs() < 2e-4, "logprobs[{j}] = {got}, PyTorch {want}");
    }
    assert!(s.values.is_none() && s.reward.is_none(), "the fixture has neither head");
    let json = s.to_json();
    assert!(
        json.get("values").is_none() && json["logprobs"][0].is_null() && json["ids"].as_array().unwrap().len() == t
    );

    // A higher temperature flattens the distribution: log-probabilities move towards −log V.
    let hot = score(&model, &ids, 3.0).unwrap();
    let spread =
        |s: &ppo_wgpu::score::Score| s.logprobs[1..].iter().map(|l| (l.unwrap() + (61f32).ln()).abs()).sum::<f32>();
    assert!(spread(&hot) < spread(&s));
    assert!(score(&model, &[], 1.0).is_err());
    assert!(score(&model, &[64], 1.0).unwrap_err().to_string().contains("token id[0] = 64"));
}

#[test]
fn tokenizer_train_makes_a_byte_level_bpe_that_round_trips() {
    let dir = scratch_dir("tokenizer-train");
    let corpus = dir.join("corpus.txt");
    let text = "the cat sat on the mat. the dog sat on the log. a cat and a dog.\n".repeat(50);
    std::fs::write(&corpus, &text).unwrap();
    let out = dir.join("tok").join("tokenizer.json");
    let tok = Tokenizer::train_byte_level_bpe(&corpus, 300, &out).unwrap();
    assert!(out.is_file());
    assert!(tok.vocab_size() <= 300 && tok.vocab_size() > 257, "vocab {}", tok.vocab_size());
    // <|endoftext|> is the last id, as in GPT-2 and as the config.json we write declares.
    assert_eq!(tok.eos_id(), Some(tok.vocab_size() as u32 - 1), "{EOS_TOKEN} must be the last token");
    // Merges were learned (fewer tokens than bytes), and any text, unseen bytes included,
    // encodes and decodes back exactly.
    let ids = tok.encode("the cat sat on the mat.").unwrap();
    assert!(ids.len() < "the cat sat on the mat.".len(), "{ids:?}");
    for s in ["the cat sat on the mat.", "Ünïcödé ✓ and 🐱", "  spaces\tand\nnewlines"] {
        let ids = tok.encode(s).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), s);
    }
    let reloaded = Tokenizer::load(&out).unwrap();
    assert_eq!(reloaded.encode("a dog").unwrap(), tok.encode("a dog").unwrap());
}

#[test]
fn bad_tokenizer_files_give_errors_naming_the_file() {
    let dir = scratch_dir("tokenizer-bad");
    let missing = dir.join("tokenizer.json");
    assert!(Tokenizer::load(&missing).unwrap_err().to_string().contains("tokenizer.json"));
    std::fs::write(&missing, "{\"not\": \"a tokenizer\"}").unwrap();
    let err = Tokenizer::load(&missing).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json") && err.contains("not a valid tokenizer.json"), "{err}");
    let err = Tokenizer::train_byte_level_bpe(&dir.join("nope.txt"), 300, &missing).unwrap_err().to_string();
    assert!(err.contains("nope.txt"), "{err}");
}
