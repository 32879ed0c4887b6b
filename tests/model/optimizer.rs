//! The optimizer's update of a whole model against the CPU reference: the global gradient norm
//! and its clip scale, then AdamW with weight decay on the matrices only (embeddings and linear
//! weights; not biases, LayerNorm parameters or a head's bias), over steps with different
//! gradients. The padding between parameters in the flat buffer stays zero.

use super::forward_backward::random_checkpoint;
use crate::suite_gpu::suite_gpu;
use ppo_wgpu::gpu::{Gpu, Recorder};
use ppo_wgpu::kernels::adamw::AdamW;
use ppo_wgpu::model::optimizer::Optimizer;
use ppo_wgpu::model::{GptConfig, Heads, Model};
use ppo_wgpu::reference;
use ppo_wgpu::rng::Rng;

#[test]
fn an_update_is_adamw_per_parameter_with_decay_on_the_matrices_only() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    // A vocabulary of 23 (wte padded to 64 rows on the GPU) and odd-length heads: ragged slots.
    let config =
        GptConfig { vocab_size: 23, n_positions: 12, n_embd: 16, n_layer: 2, n_head: 2, layer_norm_epsilon: 1e-5 };
    let heads = Heads { value: true, reward: false };
    let model = Model::upload(&gpu, &random_checkpoint(&config, heads, 4)).unwrap();
    let hp = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
    let max_grad_norm = 1.0;
    let mut rec = Recorder::new(&gpu);
    let mut opt = Optimizer::new(&model, &mut rec, hp, max_grad_norm).unwrap();
    rec.submit();

    let layout = &model.layout;
    let to_f64 = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
    let mut params = to_f64(&gpu.download(&model.params.flat).unwrap());
    let (mut m, mut v) = (vec![0.0; layout.total], vec![0.0; layout.total]);
    let mut rng = Rng::new(9);
    for (step, lr) in [(1, 1e-2), (2, 5e-3), (3, 1e-2)] {
        // Gradients in the slots' real values only, as the backward writes them; large enough
        // that the first steps clip (norm above 1) and small enough that the last does not.
        let std = if step < 3 { 0.5 } else { 0.01 };
        let mut grad = vec![0.0f64; layout.total];
        for slot in &layout.slots {
            let n = slot.spec.len();
            grad[slot.offset..slot.offset + n].copy_from_slice(&rng.normals(n, std));
        }
        let grads = gpu.upload(&[layout.total], &grad.iter().map(|&g| g as f32).collect::<Vec<_>>()).unwrap();
        let mut rec = Recorder::new(&gpu);
        opt.update(&mut rec, &model, &grads, lr).unwrap();
        rec.submit();

        let (norm, scale) = reference::grad_norm(&grad, max_grad_norm as f64);
        assert_eq!(scale < 1.0, step < 3, "step {step}: the gradient norm {norm} should clip on the first steps only");
        for slot in &layout.slots {
            let r = slot.offset..slot.offset + slot.spec.len();
            let decay = if slot.spec.kind.decays() { hp.weight_decay as f64 } else { 0.0 };
            let (b1, b2, eps) = (hp.beta1 as f64, hp.beta2 as f64, hp.eps as f64);
            let (p, mm, vv, g) = (&mut params[r.clone()], &mut m[r.clone()], &mut v[r.clone()], &grad[r]);
            reference::adamw_update(p, mm, vv, g, scale, lr as f64, b1, b2, eps, decay, step);
        }
        let got = gpu.download(&model.params.flat).unwrap();
        let norm_scale = gpu.download(opt.norm_scale()).unwrap();
        assert!((norm_scale[0] as f64 - norm).abs() <= 1e-5 * norm, "step {step}: ‖g‖ {} vs {norm}", norm_scale[0]);
        for slot in &layout.slots {
            let (got, want) = (slot.of(&got), &params[slot.offset..slot.offset + slot.spec.len()]);
            for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
                assert!(
                    (g as f64 - w).abs() <= 1e-6 + 1e-5 * w.abs(),
                    "step {step}: {}[{i}] is {g}, AdamW gives {w} (decayed: {})",
                    slot.spec.name,
                    slot.spec.kind.decays()
                );
            }
        }
        let real: usize = layout.slots.iter().map(|s| s.spec.len()).sum();
        let nonzero = got.iter().filter(|&&x| x != 0.0).count();
        let in_slots = layout.slots.iter().map(|s| s.of(&got).iter().filter(|&&x| x != 0.0).count()).sum::<usize>();
        assert_eq!(nonzero, in_slots, "step {step}: padding between the parameters became nonzero");
        assert!(in_slots > real * 9 / 10, "step {step}: most parameters should be nonzero");
    }
}
