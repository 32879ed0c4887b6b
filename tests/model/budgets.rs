//! The round-trip and allocation budgets of docs/design.md §7, counted by the GPU layer: a
//! rollout reads back its tokens once, the rollout batch's statistics once, a PPO update its
//! statistics once; from the second iteration on, nothing new is allocated or compiled.

use ppo_wgpu::generate::{GenerateOptions, Sampling, generate};
use ppo_wgpu::gpu::{Gpu, Recorder};
use ppo_wgpu::kernels::adamw::AdamW;
use ppo_wgpu::kernels::ppo::PpoLossConfig;
use ppo_wgpu::kernels::rewards::KlEstimator;
use ppo_wgpu::model::optimizer::Optimizer;
use ppo_wgpu::model::{GptConfig, Heads, Model, init::init_weights};
use ppo_wgpu::ppo::algo::Algo;
use ppo_wgpu::ppo::rollout::{AdvantageConfig, Sequences, prepare};
use ppo_wgpu::ppo::update::{UpdateOptions, ppo_update};

#[test]
fn a_ppo_iteration_keeps_its_round_trip_and_allocation_budgets() {
    let gpu = Gpu::new(None).unwrap(); // a device of its own: its counters see only this test
    let config =
        GptConfig { vocab_size: 50, n_positions: 32, n_embd: 32, n_layer: 2, n_head: 2, layer_norm_epsilon: 1e-5 };
    let policy = Model::upload(&gpu, &init_weights(&config, Heads { value: true, reward: false }, 1)).unwrap();
    let reference = Model::upload(&gpu, &init_weights(&config, Heads::default(), 1)).unwrap();
    let mut rec = Recorder::new(&gpu);
    let mut opt = Optimizer::new(&policy, &mut rec, AdamW { lr: 1e-3, ..AdamW::default() }, 1.0).unwrap();
    rec.submit();
    let prompts: Vec<Vec<u32>> = (0..8).map(|i| (0..1 + i % 4).map(|j| (i * 7 + j) as u32 % 50).collect()).collect();
    let (epochs, minibatches) = (2, 2);

    let mut after_first = None;
    for it in 0..2 {
        let start = gpu.counts();
        let opts = GenerateOptions {
            max_new_tokens: 12,
            sampling: Sampling { temperature: 1.0, top_k: 0, top_p: 1.0 },
            seed: 5,
            first_sample: it * 8,
            eos: None,
            check_every: 0,
        };
        let generation = generate(&policy, &prompts, &opts).unwrap();
        let rolled = gpu.counts();
        assert_eq!((rolled - start).readbacks, 1, "a rollout reads its tokens back once");

        let seqs = Sequences::new(&generation, 12, None);
        let scores: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let adv = AdvantageConfig {
            algo: Algo::Ppo,
            temperature: 1.0,
            beta: 0.05,
            kl_estimator: KlEstimator::K1,
            gamma: 1.0,
            lam: 0.95,
            num_generations: 1,
            scale_rewards: true,
        };
        let rollout = prepare(&policy, Some(&reference), &seqs, &scores, &adv).unwrap();
        let prepared = gpu.counts();
        assert_eq!((prepared - rolled).readbacks, 1, "the rollout batch: one readback of its statistics");
        assert_eq!((prepared - rolled).submits, 2, "one submit, plus the readback's copy");

        let update = UpdateOptions {
            algo: Algo::Ppo,
            epochs,
            minibatches,
            lr: 1e-3,
            loss: PpoLossConfig { temperature: 1.0, ..Default::default() },
            grad_accum: 1,
            seed: Some(it as u64),
        };
        ppo_update(&policy, &mut opt, &rollout.batch, &update, false).unwrap();
        let updated = gpu.counts() - prepared;
        assert_eq!(updated.readbacks, 1, "a PPO update reads its statistics back once");
        assert_eq!(updated.submits as usize, 1 + epochs * minibatches + 1, "zeroing, one per minibatch, the readback");

        if it == 0 {
            after_first = Some(gpu.counts());
        }
    }
    let second = gpu.counts() - after_first.unwrap();
    assert_eq!(second.buffers, 0, "the second iteration allocates nothing: {second:?}");
    assert_eq!(second.pipelines, 0, "the second iteration compiles nothing: {second:?}");
}

/// With an end token, generation may check the ended flags every K steps: one readback each.
#[test]
fn early_stopping_checks_cost_one_readback_every_k_steps() {
    let gpu = Gpu::new(None).unwrap();
    let config =
        GptConfig { vocab_size: 40, n_positions: 32, n_embd: 32, n_layer: 1, n_head: 2, layer_norm_epsilon: 1e-5 };
    let model = Model::upload(&gpu, &init_weights(&config, Heads::default(), 2)).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 20,
        sampling: Sampling { temperature: 1.0, top_k: 0, top_p: 1.0 },
        seed: 1,
        first_sample: 0,
        eos: Some(39),
        check_every: 8,
    };
    let start = gpu.counts();
    let generation = generate(&model, &[vec![1, 2], vec![3]], &opts).unwrap();
    // Checks run before steps 8 and 16; a check that finds every row ended stops there.
    let checks = (1..=generation.steps).filter(|s| s % 8 == 0 && *s < 20).count() as u64;
    assert_eq!((gpu.counts() - start).readbacks, 1 + checks);
}
