//! The generation engine: the KV-cached decode against full forwards, greedy decoding against
//! the plain argmax loop, and reproducibility across batch splits.

use crate::suite_gpu::suite_gpu;
use ppo_wgpu::generate::{GenerateOptions, Sampling, distinct_prompts, generate, left_pad};
use ppo_wgpu::gpu::{Gpu, Recorder};
use ppo_wgpu::kernels::f16_weights::{FORMATS as WEIGHT_FORMATS, WeightFormat};
use ppo_wgpu::kernels::kv_cache::{FORMATS, KvFormat};
use ppo_wgpu::model::{Batch, GptConfig, Heads, Model, init::init_weights};
use ppo_wgpu::rng::Rng;
use std::sync::Arc;

fn tiny_model(gpu: &Arc<Gpu>, seed: u64) -> Model {
    let config =
        GptConfig { vocab_size: 40, n_positions: 32, n_embd: 32, n_layer: 2, n_head: 2, layer_norm_epsilon: 1e-5 };
    let mut ck = init_weights(&config, Heads::default(), seed);
    // Larger weights than GPT-2's 0.02 so that the logits differ clearly between positions.
    for (_, _, values) in ck.tensors.iter_mut() {
        values.iter_mut().for_each(|x| *x *= 8.0);
    }
    Model::upload(gpu, &ck).unwrap()
}

/// The V real columns of each row of logits Vp wide.
fn real_columns(model: &Model, logits: &[f32]) -> Vec<f32> {
    let (v, vp) = (model.config.vocab_size, model.config.padded_vocab_size());
    logits.chunks(vp).flat_map(|row| row[..v].to_vec()).collect()
}

/// Next-token logits (the V real columns) at the last position of each row of a left-padded
/// batch.
fn last_logits(model: &Model, ids: &[u32], mask: &[u32], b: usize, t: usize) -> Vec<f32> {
    let gpu = model.gpu();
    let v = model.config.padded_vocab_size();
    let batch = Batch::new(gpu, &model.config, ids, mask, b, t).unwrap();
    let mut rec = Recorder::new(gpu);
    let acts = model.forward(&mut rec, &batch).unwrap();
    rec.submit();
    let all = gpu.download(acts.logits().unwrap()).unwrap();
    let last: Vec<f32> = (0..b).flat_map(|row| all[(row * t + t - 1) * v..(row * t + t) * v].to_vec()).collect();
    real_columns(model, &last)
}

/// The largest |got − want| and the largest |want|.
fn worst_difference(got: &[f32], want: &[f32]) -> (f32, f32) {
    let worst = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
    (worst, want.iter().fold(0.0f32, |m, w| m.max(w.abs())))
}

fn greedy_opts(max_new_tokens: usize, eos: Option<u32>) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        sampling: Sampling { temperature: 0.0, top_k: 0, top_p: 1.0 },
        seed: 0,
        first_sample: 0,
        eos,
        check_every: 4,
        // The f32 cache: these tests compare generation with full f32 forwards.
        kv_format: Some(KvFormat::F32),
        weight_format: Some(WeightFormat::F32),
    }
}

/// With each cache format and each format of the decode steps' weights: all f32 to f32
/// rounding; with f16 keys and values, or f16 weights, within what that rounding does to these
/// logits (seen: up to 3e-3 of their scale).
#[test]
fn cached_decode_logits_equal_a_full_forward_at_every_step() {
    for (format, _) in FORMATS {
        for (weights, _) in WEIGHT_FORMATS {
            let exact = format == KvFormat::F32 && weights == WeightFormat::F32;
            cached_decode_matches(format, weights, if exact { 1e-4 } else { 1e-2 });
        }
    }
}

fn cached_decode_matches(format: KvFormat, weight_format: WeightFormat, tolerance: f32) {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let model = tiny_model(&gpu, 11);
    let mut rng = Rng::new(12);
    let prompts: Vec<Vec<u32>> = [5, 2, 7].iter().map(|&n| (0..n).map(|_| rng.below(40)).collect()).collect();
    let (b, steps, v) = (prompts.len(), 6, 40);
    let (ids, mask, p) = left_pad(&prompts);
    let cont: Vec<Vec<u32>> = (0..b).map(|_| (0..steps).map(|_| rng.below(40)).collect()).collect();

    let cache_mask: Vec<u32> =
        (0..b).flat_map(|r| mask[r * p..(r + 1) * p].iter().copied().chain(std::iter::repeat_n(1, steps))).collect();
    let cache = model.kv_cache_with_format(b, p + steps, &cache_mask, format).unwrap();
    let scratch = model.decode_scratch(b).unwrap();
    let mut rec = Recorder::new(&gpu);
    let weights = model.decode_weights_in(&mut rec, weight_format).unwrap();
    let batch = Batch::new(&gpu, &model.config, &ids, &mask, b, p).unwrap();
    model.prefill(&mut rec, &cache, &batch, None, &scratch).unwrap();
    rec.submit();
    // The prefill's next-token logits (the LM head on each row's last position only) are the
    // full forward's there.
    let got = real_columns(&model, &gpu.download(&scratch.logits).unwrap());
    let (worst, scale) = worst_difference(&got, &last_logits(&model, &ids, &mask, b, p));
    assert!(worst <= 1e-4 * scale.max(1.0), "{format:?} cache: prefill logits differ by {worst} (scale {scale})");
    for s in 0..steps {
        let step_ids: Vec<u32> = cont.iter().map(|c| c[s]).collect();
        let pos: Vec<u32> = prompts.iter().map(|pr| (pr.len() + s) as u32).collect();
        let mut rec = Recorder::new(&gpu);
        let (ids_t, pos_t) = (gpu.upload_u32(&[b], &step_ids).unwrap(), gpu.upload_u32(&[b], &pos).unwrap());
        model.decode_step(&mut rec, &weights, &cache, &scratch, &ids_t, &pos_t, p + s).unwrap();
        rec.submit();
        let got = real_columns(&model, &gpu.download(&scratch.logits).unwrap());

        // The same sequences in full: left padding, prompt, the first s + 1 continuation tokens.
        let t = p + s + 1;
        let (mut full_ids, mut full_mask) = (Vec::new(), Vec::new());
        for row in 0..b {
            full_ids.extend_from_slice(&ids[row * p..(row + 1) * p]);
            full_ids.extend_from_slice(&cont[row][..=s]);
            full_mask.extend_from_slice(&mask[row * p..(row + 1) * p]);
            full_mask.extend(std::iter::repeat_n(1, s + 1));
        }
        let (worst, scale) = worst_difference(&got, &last_logits(&model, &full_ids, &full_mask, b, t));
        let what = format!(
            "{format:?} cache, {weight_format:?} weights, step {s}: cached logits differ by {worst} (scale {scale}, V {v})"
        );
        assert!(worst <= tolerance * scale.max(1.0), "{what}");
    }
}

/// Rows with the same prompt share one prefill row: the prefill runs on the distinct prompts
/// and copies their keys, values and last hidden state to every row that has them. Its logits,
/// and a decode step's after it, are the full forward's of every row; and `generate` draws the
/// same tokens for each row as it does for that row alone.
#[test]
fn rows_with_the_same_prompt_share_its_prefill() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let model = tiny_model(&gpu, 13);
    let (a, c) = (vec![3, 9, 1, 4], vec![7, 2]);
    let prompts = vec![a.clone(), c.clone(), a.clone(), a.clone(), c.clone()];
    let (distinct, rows) = distinct_prompts(&prompts);
    assert_eq!((distinct.clone(), rows.clone()), (vec![a, c], vec![0, 1, 0, 0, 1]));

    let (b, u) = (prompts.len(), distinct.len());
    let (ids, mask, p) = left_pad(&prompts);
    let (d_ids, d_mask, _) = left_pad(&distinct);
    let cache_mask: Vec<u32> =
        (0..b).flat_map(|r| mask[r * p..(r + 1) * p].iter().copied().chain(std::iter::once(1))).collect();
    let cache = model.kv_cache_with_format(b, p + 1, &cache_mask, KvFormat::F32).unwrap();
    let scratch = model.decode_scratch(b).unwrap();
    let mut rec = Recorder::new(&gpu);
    let weights = model.decode_weights_in(&mut rec, WeightFormat::F32).unwrap();
    let batch = Batch::new(&gpu, &model.config, &d_ids, &d_mask, u, p).unwrap();
    model.prefill(&mut rec, &cache, &batch, Some(&gpu.upload_u32(&[b], &rows).unwrap()), &scratch).unwrap();
    rec.submit();
    let got = real_columns(&model, &gpu.download(&scratch.logits).unwrap());
    let (worst, scale) = worst_difference(&got, &last_logits(&model, &ids, &mask, b, p));
    assert!(worst <= 1e-4 * scale.max(1.0), "shared prefill logits differ by {worst} (scale {scale})");
    // One decode step reads every row's cache.
    let next: Vec<u32> = (0..b as u32).map(|r| 5 + r).collect();
    let pos: Vec<u32> = prompts.iter().map(|pr| pr.len() as u32).collect();
    let mut rec = Recorder::new(&gpu);
    let (ids_t, pos_t) = (gpu.upload_u32(&[b], &next).unwrap(), gpu.upload_u32(&[b], &pos).unwrap());
    model.decode_step(&mut rec, &weights, &cache, &scratch, &ids_t, &pos_t, p).unwrap();
    rec.submit();
    let got = real_columns(&model, &gpu.download(&scratch.logits).unwrap());
    let full_ids: Vec<u32> = (0..b).flat_map(|r| ids[r * p..(r + 1) * p].iter().copied().chain([next[r]])).collect();
    let full_mask: Vec<u32> = (0..b).flat_map(|r| mask[r * p..(r + 1) * p].iter().copied().chain([1])).collect();
    let (worst, scale) = worst_difference(&got, &last_logits(&model, &full_ids, &full_mask, b, p + 1));
    assert!(
        worst <= 1e-4 * scale.max(1.0),
        "a decode step after the shared prefill differs by {worst} (scale {scale})"
    );

    // Sampled: each row's tokens are those it draws alone (its own random stream).
    let opts = GenerateOptions {
        sampling: Sampling { temperature: 1.0, top_k: 0, top_p: 0.95 },
        seed: 5,
        ..greedy_opts(8, None)
    };
    let shared = generate(&model, &prompts, &opts).unwrap().responses;
    for (row, prompt) in prompts.iter().enumerate() {
        let alone = generate(&model, std::slice::from_ref(prompt), &GenerateOptions { first_sample: row, ..opts });
        assert_eq!(shared[row], alone.unwrap().responses[0], "row {row}");
    }
}

/// Row by row, without padding: the next token is the lowest-index maximum of a full forward.
fn argmax_loop(model: &Model, prompt: &[u32], n: usize, eos: Option<u32>) -> Vec<u32> {
    let mut ids = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let logits = last_logits(model, &ids, &vec![1; ids.len()], 1, ids.len());
        let max = logits.iter().cloned().fold(f32::MIN, f32::max);
        let next = logits.iter().position(|&z| z == max).unwrap() as u32;
        ids.push(next);
        out.push(next);
        if Some(next) == eos {
            break;
        }
    }
    out
}

#[test]
fn greedy_generation_equals_the_argmax_loop() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let model = tiny_model(&gpu, 21);
    let prompts: Vec<Vec<u32>> = vec![vec![3, 9, 1, 4], vec![7], vec![2, 2, 30, 11, 5, 8]];
    let generation = generate(&model, &prompts, &greedy_opts(9, None)).unwrap();
    for (row, prompt) in prompts.iter().enumerate() {
        assert_eq!(generation.responses[row], argmax_loop(&model, prompt, 9, None), "row {row}");
    }
    // With an end token: the row that draws it ends there (the token included).
    let eos = generation.responses[0][2];
    let ended = generate(&model, &prompts, &greedy_opts(9, Some(eos))).unwrap();
    for (row, prompt) in prompts.iter().enumerate() {
        assert_eq!(ended.responses[row], argmax_loop(&model, prompt, 9, Some(eos)), "row {row} with EOS {eos}");
    }
    assert!(ended.ended(0, Some(eos)) && ended.responses[0].len() <= 3);
}

#[test]
fn the_same_seed_gives_the_same_tokens_whatever_the_batch_split() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let model = tiny_model(&gpu, 31);
    let prompts: Vec<Vec<u32>> = (0..6).map(|i| vec![1 + i as u32, 2, 3 + i as u32][..1 + i % 3].to_vec()).collect();
    let opts = GenerateOptions {
        sampling: Sampling { temperature: 1.0, top_k: 0, top_p: 0.95 },
        seed: 77,
        ..greedy_opts(10, None)
    };
    let all = generate(&model, &prompts, &opts).unwrap().responses;
    assert_eq!(all, generate(&model, &prompts, &opts).unwrap().responses, "same seed, same tokens");
    let head = generate(&model, &prompts[..2], &opts).unwrap().responses;
    let tail = generate(&model, &prompts[2..], &GenerateOptions { first_sample: 2, ..opts }).unwrap().responses;
    assert_eq!(all, [head, tail].concat(), "a sample's tokens do not depend on its batch");
    assert_ne!(all, generate(&model, &prompts, &GenerateOptions { seed: 78, ..opts }).unwrap().responses);
}

#[test]
fn sampling_never_picks_a_padded_vocabulary_column() {
    // V = 40 in rows of Vp = 64. At a high temperature every real token is likely; the padded
    // columns (masked, and never read by the sampler) must never come out.
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let model = tiny_model(&gpu, 51);
    assert_eq!(model.config.padded_vocab_size(), 64);
    let prompts: Vec<Vec<u32>> = (0..32).map(|i| vec![i as u32 % 40]).collect();
    let opts =
        GenerateOptions { sampling: Sampling { temperature: 50.0, top_k: 0, top_p: 1.0 }, ..greedy_opts(12, None) };
    let tokens: Vec<u32> = generate(&model, &prompts, &opts).unwrap().responses.concat();
    assert!(tokens.iter().all(|&t| t < 40), "a padded column was sampled: {tokens:?}");
    let distinct: std::collections::BTreeSet<u32> = tokens.iter().copied().collect();
    assert!(distinct.len() > 30, "a temperature of 50 should reach most of the 40 tokens, got {}", distinct.len());
}

#[test]
fn generate_rejects_what_cannot_fit() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let model = tiny_model(&gpu, 41);
    let err = generate(&model, &[vec![1; 30]], &greedy_opts(3, None)).unwrap_err().to_string();
    assert!(err.contains("n_positions 32"), "{err}");
    let err = generate(&model, &[vec![1], vec![]], &greedy_opts(3, None)).unwrap_err().to_string();
    assert!(err.contains("prompt 1 is empty"), "{err}");
    let bad = GenerateOptions { sampling: Sampling { temperature: 1.0, top_k: 0, top_p: 0.0 }, ..greedy_opts(3, None) };
    assert!(generate(&model, &[vec![1]], &bad).unwrap_err().to_string().contains("--top-p"));
}
