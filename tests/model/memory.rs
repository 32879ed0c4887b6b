use crate::suite_gpu::suite_gpu;
use ppo_wgpu::gpu::{Gpu, Recorder};
use ppo_wgpu::kernels::adamw::AdamW;
use ppo_wgpu::kernels::cross_entropy::IGNORE;
use ppo_wgpu::model::gpt::memory_estimate;
use ppo_wgpu::model::optimizer::Optimizer;
use ppo_wgpu::model::{GptConfig, Heads, Model, init::init_weights};
use ppo_wgpu::sft::{LmBatch, record_step};

/// One SFT training step (the one `sft` runs): forward, cross-entropy, backward, AdamW.
fn step(
    model: &Model,
    opt: &mut Optimizer,
    grads: &ppo_wgpu::model::Params,
    ids: &[u32],
    mask: &[u32],
    b: usize,
    t: usize,
) {
    let gpu = model.gpu();
    let targets: Vec<u32> = (0..b * t).map(|i| if i % t + 1 < t { ids[i + 1] } else { IGNORE }).collect();
    let lm = LmBatch::new(model, ids, mask, &targets, b, t).unwrap();
    let mut rec = Recorder::new(gpu);
    record_step(&mut rec, model, opt, grads, &lm, 1e-3).unwrap();
    rec.submit();
    gpu.wait().unwrap();
}

#[test]
fn memory_estimate_matches_the_buffers_and_steps_allocate_nothing_new() {
    // A device of its own, so that only this test's buffers are counted.
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let config =
        GptConfig { vocab_size: 96, n_positions: 32, n_embd: 32, n_layer: 2, n_head: 2, layer_norm_epsilon: 1e-5 };
    let heads = Heads { value: true, reward: false };
    let (b, t) = (4, 32);
    let model = Model::upload(&gpu, &init_weights(&config, heads, 1)).unwrap();
    let mut rec = Recorder::new(&gpu);
    let mut opt = Optimizer::new(&model, &mut rec, AdamW::default(), 1.0).unwrap();
    let grads = model.zeros_like_params(&mut rec).unwrap();
    rec.submit();
    let ids: Vec<u32> = (0..b * t).map(|i| (i * 7 % 96) as u32).collect();
    step(&model, &mut opt, &grads, &ids, &vec![1; b * t], b, t);
    let after_first = gpu.tensor_bytes_allocated();

    let layernorm = ppo_wgpu::kernels::layernorm::variant_for(&gpu, b * t).unwrap();
    let estimate = memory_estimate(
        &config,
        heads,
        b,
        t,
        |layout, m, n| ppo_wgpu::kernels::matmul::variant_for(&gpu, layout, m, n).unwrap(),
        layernorm == ppo_wgpu::kernels::layernorm::LayernormVariant::Texture,
    );
    let ratio = after_first as f64 / estimate.total() as f64;
    // The estimate leaves out a few small tensors (ids, masks, index buckets, norm partials).
    assert!(
        (1.0..1.05).contains(&ratio),
        "allocated {after_first} bytes, estimated {} ({estimate:?})",
        estimate.total()
    );

    // New batches of the same shape (other tokens, so other index buckets, and padding), each
    // taking the pooled buffers the previous one gave back.
    for k in 2..4 {
        let ids: Vec<u32> = (0..b * t).map(|i| (i * k % (96 / k)) as u32).collect();
        let mask: Vec<u32> = (0..b * t).map(|i| (i % t >= k) as u32).collect();
        step(&model, &mut opt, &grads, &ids, &mask, b, t);
    }
    assert_eq!(gpu.tensor_bytes_allocated(), after_first, "later steps must reuse pooled buffers");
}
