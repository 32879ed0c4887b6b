//! The rollout batch (`ppo::rollout::prepare`), whose forwards run the heads on the head window
//! only (from the last prompt position to the end): at every trained position its log-probs,
//! reference log-probs and values are those of the whole model's forward.

use crate::suite_gpu::suite_gpu;
use ppo_wgpu::generate::Generation;
use ppo_wgpu::gpu::{Gpu, Recorder};
use ppo_wgpu::kernels::rewards::KlEstimator;
use ppo_wgpu::model::{GptConfig, HeadWindow, Heads, Model, init::init_weights};
use ppo_wgpu::ppo::algo::Algo;
use ppo_wgpu::ppo::rollout::{AdvantageConfig, Sequences, prepare};
use ppo_wgpu::reference;

#[test]
fn the_rollout_batch_holds_the_whole_forwards_log_probs_and_values() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let config =
        GptConfig { vocab_size: 37, n_positions: 16, n_embd: 16, n_layer: 2, n_head: 2, layer_norm_epsilon: 1e-5 };
    let policy = Model::upload(&gpu, &init_weights(&config, Heads { value: true, reward: false }, 11)).unwrap();
    let reference_model = Model::upload(&gpu, &init_weights(&config, Heads::default(), 12)).unwrap();
    // Prompts of 1 to 4 tokens (P = 4, left padding) and responses of 1 to 6 (R = 6).
    let generation = Generation {
        prompt_len: 4,
        prompts: vec![vec![3, 4, 5, 6], vec![7], vec![8, 9], vec![10, 11, 12]],
        responses: vec![vec![13, 14, 15], vec![16, 17, 18, 19, 20, 21], vec![22], vec![23, 24, 25, 26]],
        steps: 6,
    };
    let seqs = Sequences::new(&generation, 6, None);
    let (b, l) = (seqs.b, seqs.l);
    assert_eq!(seqs.head_window(), HeadWindow { start: 3, len: 7 });
    let cfg = AdvantageConfig {
        algo: Algo::Ppo,
        temperature: 0.8,
        beta: 0.1,
        kl_estimator: KlEstimator::K1,
        gamma: 1.0,
        lam: 0.95,
        num_generations: 1,
        scale_rewards: true,
    };
    let scores = gpu.upload(&[b], &[0.5, -1.0, 2.0, 0.0]).unwrap();
    let rollout = prepare(&policy, Some(&reference_model), &seqs, &scores, &cfg).unwrap();
    let file = rollout.to_file().unwrap();

    // The whole forwards' log-softmax(logits/τ) of each token from the position before it, and
    // the value head at that position.
    let (v, vp) = (config.vocab_size, config.padded_vocab_size());
    let whole = |model: &Model| {
        let mut rec = Recorder::new(&gpu);
        let acts = model.forward(&mut rec, &seqs.batch(model).unwrap()).unwrap();
        rec.submit();
        let logits = gpu.download(acts.logits().unwrap()).unwrap();
        let values = acts.values.as_ref().map(|x| gpu.download(x).unwrap());
        (logits, values)
    };
    let logprobs = |logits: &[f32], row: usize, j: usize| {
        let z: Vec<f64> = logits[(row * l + j - 1) * vp..][..v].iter().map(|&x| x as f64 / 0.8).collect();
        reference::log_softmax(&z, v)[seqs.input_ids[row * l + j] as usize]
    };
    let (policy_logits, values) = whole(&policy);
    let (reference_logits, _) = whole(&reference_model);
    let values = values.unwrap();
    let mut checked = 0;
    for row in 0..b {
        for j in 1..l {
            let i = row * l + j;
            if seqs.response_mask[i] == 0.0 {
                continue;
            }
            let close = |what: &str, got: f32, want: f64| {
                assert!(
                    (got as f64 - want).abs() <= 1e-5 + 1e-5 * want.abs(),
                    "{what} at ({row}, {j}): {got} vs {want}"
                );
            };
            close("old_logprobs", file.old_logprobs[i], logprobs(&policy_logits, row, j));
            close("ref_logprobs", file.ref_logprobs.as_ref().unwrap()[i], logprobs(&reference_logits, row, j));
            close("old_values", file.old_values.as_ref().unwrap()[i], values[i - 1] as f64);
            checked += 1;
        }
    }
    assert_eq!(checked, 3 + 6 + 1 + 4, "every response token is checked");
}
