//! Against an independent implementation: a tiny GPT-2 with random weights saved by
//! `transformers`' `GPT2LMHeadModel.save_pretrained`, with logits, log-probabilities, the masked
//! mean cross-entropy and every parameter gradient computed by PyTorch autograd in float64
//! (tests/fixtures/make_gpt2_fixture.py makes them; this test needs no Python).

use crate::common::*;
use crate::suite_gpu::suite_gpu;
use ppo_wgpu::gpu::{DType, Gpu, Recorder};
use ppo_wgpu::kernels::cross_entropy::{IGNORE, cross_entropy_backward, cross_entropy_forward};
use ppo_wgpu::model::{self, Batch};
use safetensors::SafeTensors;
use std::path::Path;

#[test]
fn matches_pytorch_logits_logprobs_loss_and_every_gradient() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    let model =
        model::load(&gpu, &Path::new(FIXTURES).join("gpt2-tiny")).expect("the save_pretrained checkpoint loads");
    let bytes = std::fs::read(Path::new(FIXTURES).join("gpt2-tiny-expected.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let ids: Vec<u32> = bytemuck::pod_collect_to_vec::<u8, i32>(expected.tensor("input_ids").unwrap().data())
        .iter()
        .map(|&x| x as u32)
        .collect();
    let mask: Vec<u32> = bytemuck::pod_collect_to_vec::<u8, i32>(expected.tensor("attention_mask").unwrap().data())
        .iter()
        .map(|&x| x as u32)
        .collect();
    let (b, t) = (3, 16);
    // The GPU model's logits are Vp wide, the padded columns masked.
    let (v, vp) = (model.config.vocab_size, model.config.padded_vocab_size());

    // Targets: token j+1 at position j when both are real tokens.
    let valid = |row: usize, j: usize| j + 1 < t && mask[row * t + j] == 1 && mask[row * t + j + 1] == 1;
    let targets: Vec<u32> = (0..b * t).map(|i| if valid(i / t, i % t) { ids[i + 1] } else { IGNORE }).collect();
    let count = targets.iter().filter(|&&x| x != IGNORE).count();
    let dloss: Vec<f32> = targets.iter().map(|&x| if x == IGNORE { 0.0 } else { 1.0 / count as f32 }).collect();

    let batch = Batch::new(&gpu, &model.config, &ids, &mask, b, t).unwrap();
    let (t_targets, t_dloss) = (gpu.upload_u32(&[b * t], &targets).unwrap(), gpu.upload(&[b * t], &dloss).unwrap());
    let (loss, lse) = (gpu.tensor(&[b * t], DType::F32).unwrap(), gpu.tensor(&[b * t], DType::F32).unwrap());
    let mut rec = Recorder::new(&gpu);
    let acts = model.forward(&mut rec, &batch).unwrap();
    let logits = acts.logits().unwrap().reshape(&[b * t, vp]).unwrap();
    cross_entropy_forward(&mut rec, &loss, &lse, &logits, &t_targets, 1.0).unwrap();
    rec.submit();
    let got_logits = gpu.download(acts.logits().unwrap()).unwrap();
    let got_loss = gpu.download(&loss).unwrap();

    // Logits at real positions (a fully padded query row attends to nothing: transformers
    // averages over masked keys there, we output zeros; neither reaches any real token).
    let want_logits = read_f32(&expected, "logits");
    let mut worst = 0.0f64;
    for i in (0..b * t).filter(|&i| mask[i] == 1) {
        for k in 0..v {
            worst = worst.max((got_logits[i * vp + k] as f64 - want_logits[i * v + k] as f64).abs());
        }
    }
    assert!(worst < 2e-4, "logits differ from PyTorch by up to {worst:.2e} (tolerance 2e-4)");
    eprintln!("logits: max |Δ| {worst:.2e}");

    // Log-probabilities of the taken tokens: the quantity `score` reports.
    let want_logp = read_f32(&expected, "token_logprobs"); // [B, T-1]
    let mut worst = 0.0f64;
    for row in 0..b {
        for j in (0..t - 1).filter(|&j| valid(row, j)) {
            worst = worst.max((-got_loss[row * t + j] as f64 - want_logp[row * (t - 1) + j] as f64).abs());
        }
    }
    assert!(worst < 2e-4, "token log-probabilities differ from PyTorch by up to {worst:.2e} (tolerance 2e-4)");
    eprintln!("token log-probabilities: max |Δ| {worst:.2e}");
    let mean_loss: f64 = got_loss.iter().map(|&l| l as f64).sum::<f64>() / count as f64;
    let want_loss = read_f32(&expected, "loss")[0] as f64;
    assert!((mean_loss - want_loss).abs() < 1e-5 * want_loss.abs().max(1.0), "loss {mean_loss} vs PyTorch {want_loss}");

    // Backward: every parameter's gradient. Relative to the tensor's largest entry, f32 against
    // float64 autograd agrees to ~1e-6 here; 1e-3 leaves room for other adapters' arithmetic.
    let mut rec = Recorder::new(&gpu);
    let grads = model.zeros_like_params(&mut rec).unwrap();
    cross_entropy_backward(&mut rec, &logits, &t_dloss, &lse, &t_targets, 1.0).unwrap();
    model.backward(&mut rec, &batch, &acts, None, None, &grads).unwrap();
    rec.submit();
    let flat = gpu.download(&grads.flat).unwrap();
    // The padded columns have probability 0: their gradient is exactly 0, and so is that of
    // wte's padded rows.
    let dlogits = gpu.download(acts.logits().unwrap()).unwrap();
    assert!(dlogits.chunks(vp).all(|row| row[v..].iter().all(|&g| g == 0.0)), "padded logits got a gradient");
    let wte = &model.layout.slots[0];
    let padded_rows = &flat[wte.offset + wte.spec.len()..wte.offset + wte.gpu_shape.iter().product::<usize>()];
    assert!(padded_rows.iter().all(|&g| g == 0.0), "wte's padded rows got a gradient");
    let mut report = Vec::new();
    for slot in &model.layout.slots {
        let name = &slot.spec.name;
        let err = tensor_error(slot.of(&flat), &read_f32(&expected, &format!("grad.{name}")));
        report.push(format!("{name}: {err:.2e}"));
        assert!(
            err < 1e-3,
            "gradient of {name} differs from PyTorch: relative error {err:.2e} (tolerance 1e-3)\n{}",
            report.join("\n")
        );
    }
    eprintln!("gradients, max |Δ| / max |g| per tensor:\n  {}", report.join("\n  "));
}
