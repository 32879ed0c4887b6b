//! The whole model on the GPU against the CPU reference model: forward outputs, and every
//! parameter's gradient against finite differences of the reference.

use crate::suite_gpu::suite_gpu;
use ppo_wgpu::gpu::{Gpu, Recorder};
use ppo_wgpu::model::{Batch, Checkpoint, GptConfig, HeadWindow, Heads, Model};
use ppo_wgpu::reference;
use ppo_wgpu::rng::Rng;
use std::sync::{Arc, OnceLock};

fn gpu() -> Arc<Gpu> {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| suite_gpu(Gpu::new(None).expect("the model tests need a GPU adapter"))).clone()
}

/// A vocabulary of 23: the GPU model pads it to 64 columns.
fn small_config() -> GptConfig {
    GptConfig { vocab_size: 23, n_positions: 12, n_embd: 16, n_layer: 2, n_head: 2, layer_norm_epsilon: 1e-5 }
}

/// Random weights at GPT-2's init scale, LayerNorm gains near 1.
pub fn random_checkpoint(config: &GptConfig, heads: Heads, seed: u64) -> Checkpoint {
    let mut rng = Rng::new(seed);
    let tensors = config
        .param_specs(heads)
        .into_iter()
        .map(|ppo_wgpu::model::ParamSpec { name, shape, .. }| {
            let n: usize = shape.iter().product();
            let gain = name.contains("ln_") && name.ends_with("weight");
            let values =
                (0..n).map(|_| (if gain { 1.0 + 0.1 * rng.normal() } else { 0.3 * rng.normal() }) as f32).collect();
            (name, shape, values)
        })
        .collect();
    Checkpoint { config: config.clone(), heads, tensors }
}

/// Three rows: left padding, right padding, none.
fn batch_inputs(config: &GptConfig, b: usize, t: usize, rng: &mut Rng) -> (Vec<u32>, Vec<u32>) {
    let ids = (0..b * t).map(|_| rng.below(config.vocab_size as u32)).collect();
    let mask = (0..b * t)
        .map(|i| match (i / t) % 3 {
            0 => (i % t >= 3) as u32,
            1 => (i % t < t - 2) as u32,
            _ => 1,
        })
        .collect();
    (ids, mask)
}

fn close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let (i, excess) = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs() - (atol + rtol * w.abs()))
        .enumerate()
        .fold((0, f64::MIN), |best, (i, e)| if e > best.1 || e.is_nan() { (i, e) } else { best });
    assert!(excess <= 0.0, "{what}: worst at [{i}] got {} want {} (atol {atol:.0e}, rtol {rtol:.0e})", got[i], want[i]);
}

#[test]
fn forward_matches_the_reference_model() {
    let config = small_config();
    let heads = Heads { value: true, reward: true };
    let ck = random_checkpoint(&config, heads, 1);
    let (b, t) = (3, 12);
    let (ids, mask) = batch_inputs(&config, b, t, &mut Rng::new(2));
    let gpu = gpu();
    let model = Model::upload(&gpu, &ck).unwrap();
    let batch = Batch::new(&gpu, &config, &ids, &mask, b, t).unwrap();
    let mut rec = Recorder::new(&gpu);
    let acts = model.forward(&mut rec, &batch).unwrap();
    rec.submit();
    let param = |name: &str| ck.get(name).map(|v| v.iter().map(|&x| x as f64).collect()).unwrap_or_default();
    let want = reference::gpt2_forward(&config, &param, &ids, &mask, b, t);
    // Two blocks of f32 LayerNorm, matmuls over ≤ 64 terms and softmaxes. The logits are
    // [B, T, Vp]: the V real columns are the reference's, the padded ones masked.
    let (v, vp) = (config.vocab_size, config.padded_vocab_size());
    assert_eq!(acts.logits().unwrap().shape(), [b, t, vp]);
    let logits = gpu.download(acts.logits().unwrap()).unwrap();
    let real: Vec<f32> = logits.chunks(vp).flat_map(|row| row[..v].to_vec()).collect();
    close("logits", &real, &want.logits, 1e-4, 1e-4);
    let masked = ppo_wgpu::kernels::padded_vocab::MASKED_LOGIT;
    assert!(logits.chunks(vp).all(|row| row[v..].iter().all(|&z| z == masked)), "padded logits are not masked");
    // What goes back to a checkpoint is the real vocabulary, exactly as it came.
    assert_eq!(model.download().unwrap().tensors, ck.tensors, "wte [V, C] and the rest round-trip");
    close("values", &gpu.download(acts.values.as_ref().unwrap()).unwrap(), want.values.as_ref().unwrap(), 1e-4, 1e-4);
    close(
        "rewards",
        &gpu.download(acts.rewards.as_ref().unwrap()).unwrap(),
        want.rewards.as_ref().unwrap(),
        1e-4,
        1e-4,
    );
}

#[test]
fn every_parameter_gradient_matches_finite_differences_of_the_reference() {
    let config = small_config();
    let heads = Heads { value: true, reward: true };
    let ck = random_checkpoint(&config, heads, 3);
    let (b, t) = (3, 10);
    let mut rng = Rng::new(4);
    let (ids, mask) = batch_inputs(&config, b, t, &mut rng);
    // L = Σ g_logits·logits + Σ g_values·values + Σ g_rewards·rewards with fixed random g.
    let g_logits: Vec<f64> = rng.normals(b * t * config.vocab_size, 1.0);
    // On the GPU the logits' gradient is [B, T, Vp], 0 in the padded columns (as every loss
    // kernel leaves it: the padded columns have probability 0).
    let (v, vp) = (config.vocab_size, config.padded_vocab_size());
    let g_padded: Vec<f64> =
        g_logits.chunks(v).flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(0.0, vp - v))).collect();
    let g_values: Vec<f64> = rng.normals(b * t, 1.0);
    let g_rewards: Vec<f64> = rng.normals(b * t, 1.0);

    let gpu = gpu();
    let model = Model::upload(&gpu, &ck).unwrap();
    let batch = Batch::new(&gpu, &config, &ids, &mask, b, t).unwrap();
    let up = |x: &[f64], shape: &[usize]| gpu.upload(shape, &x.iter().map(|&v| v as f32).collect::<Vec<_>>()).unwrap();
    let (dvalues, drewards) = (up(&g_values, &[b, t]), up(&g_rewards, &[b, t]));
    let mut rec = Recorder::new(&gpu);
    let acts = model.forward(&mut rec, &batch).unwrap();
    let grads = model.zeros_like_params(&mut rec).unwrap();
    rec.copy(&up(&g_padded, &[b, t, vp]), acts.logits().unwrap());
    model.backward(&mut rec, &batch, &acts, Some(&dvalues), Some(&drewards), &grads).unwrap();
    rec.submit();
    let flat = gpu.download(&grads.flat).unwrap();

    let loss = |ck: &Checkpoint| {
        let param = |name: &str| ck.get(name).map(|v| v.iter().map(|&x| x as f64).collect()).unwrap_or_default();
        let out = reference::gpt2_forward(&config, &param, &ids, &mask, b, t);
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        dot(&out.logits, &g_logits)
            + dot(out.values.as_ref().unwrap(), &g_values)
            + dot(out.rewards.as_ref().unwrap(), &g_rewards)
    };
    // f32 checkpoint values perturbed by ±h: the reference runs in f64 from the f32 weights,
    // so h must stay well above f32 rounding of the weights themselves.
    let h = 1e-2f32;
    for (slot, (name, shape, values)) in model.layout.slots.iter().zip(&ck.tensors) {
        let n: usize = shape.iter().product();
        let gpu_grad = slot.of(&flat);
        let coords: Vec<usize> = (0..6.min(n)).map(|_| rng.below(n as u32) as usize).collect();
        for &i in &coords {
            let mut plus = ck.clone();
            let mut minus = ck.clone();
            let at = plus.tensors.iter().position(|(nm, _, _)| nm == name).unwrap();
            plus.tensors[at].2[i] = values[i] + h;
            minus.tensors[at].2[i] = values[i] - h;
            let fd = (loss(&plus) - loss(&minus)) / (2.0 * h as f64);
            let got = gpu_grad[i] as f64;
            // Seen: agreement to ~3e-4 on gradients of size 0.1–7 (f32 backward against an f64
            // central difference with O(h²) error).
            let tol = 2e-3 + 2e-3 * fd.abs();
            assert!((got - fd).abs() <= tol, "d loss / d {name}[{i}]: GPU {got:.6} vs finite difference {fd:.6}");
        }
    }
    let wte = &model.layout.slots[0];
    let padded_rows = &flat[wte.offset + wte.spec.len()..wte.offset + wte.gpu_shape.iter().product::<usize>()];
    assert!(padded_rows.iter().all(|&g| g == 0.0), "wte's padded rows got a gradient");
}

/// A reward model's forward and backward without the LM head (`forward_without_logits`): the
/// same values, rewards and parameter gradients as the whole model's with a zero logits
/// gradient (whose backward the test above checks against finite differences), and no logits.
#[test]
fn a_forward_without_logits_gives_the_heads_and_gradients_of_the_whole_model() {
    let config = small_config();
    let heads = Heads { value: true, reward: true };
    let ck = random_checkpoint(&config, heads, 5);
    let (b, t) = (3, 10);
    let mut rng = Rng::new(6);
    let (ids, mask) = batch_inputs(&config, b, t, &mut rng);
    let (g_values, g_rewards) = (rng.normals(b * t, 1.0), rng.normals(b * t, 1.0));

    let gpu = gpu();
    let model = Model::upload(&gpu, &ck).unwrap();
    let batch = Batch::new(&gpu, &config, &ids, &mask, b, t).unwrap();
    let up = |x: &[f64], shape: &[usize]| gpu.upload(shape, &x.iter().map(|&v| v as f32).collect::<Vec<_>>()).unwrap();
    let (dvalues, drewards) = (up(&g_values, &[b, t]), up(&g_rewards, &[b, t]));
    // (heads' outputs, flat gradient) of one forward and backward.
    let run = |with_logits: bool| {
        let mut rec = Recorder::new(&gpu);
        let acts = if with_logits {
            let acts = model.forward(&mut rec, &batch).unwrap();
            rec.zero(acts.logits().unwrap());
            acts
        } else {
            let acts = model.forward_without_logits(&mut rec, &batch).unwrap();
            assert!(acts.logits().is_err(), "a forward without the LM head has no logits");
            acts
        };
        let grads = model.zeros_like_params(&mut rec).unwrap();
        model.backward(&mut rec, &batch, &acts, Some(&dvalues), Some(&drewards), &grads).unwrap();
        rec.submit();
        let heads = [acts.values.as_ref().unwrap(), acts.rewards.as_ref().unwrap()].map(|h| gpu.download(h).unwrap());
        (heads, gpu.download(&grads.flat).unwrap())
    };
    // The whole model first, so that the second run's scratch comes from the pool holding its
    // data: a head gradient the backward did not start from zero would show.
    let (want_heads, want_grads) = run(true);
    let (got_heads, got_grads) = run(false);
    assert_eq!(got_heads, want_heads, "values and rewards");
    let worst = got_grads.iter().zip(&want_grads).map(|(g, w)| (g - w).abs() / (1.0 + w.abs())).fold(0.0f32, f32::max);
    assert!(worst <= 1e-5, "gradients differ by {worst} (relative)");
}

/// A forward with a head window (`forward_window`, as the PPO update and the rollout run it):
/// logits, values and rewards equal to the whole model's at the window's positions, and the
/// parameter gradients of the whole model's backward with the heads' gradients zero outside the
/// window (whose backward the finite-difference test above checks). The window's matrices are
/// smaller, so an adapter may pick other matmul variants for them: compared within 1e-5.
#[test]
fn a_forward_with_a_head_window_gives_the_whole_model_at_its_positions() {
    let config = small_config();
    let heads = Heads { value: true, reward: true };
    let ck = random_checkpoint(&config, heads, 7);
    let (b, t) = (3, 10);
    let window = HeadWindow { start: 3, len: 5 };
    let mut rng = Rng::new(8);
    let (ids, mask) = batch_inputs(&config, b, t, &mut rng);
    let vp = config.padded_vocab_size();
    let inside = |i: usize, width: usize| (window.start..window.start + window.len).contains(&(i / width % t));
    // The heads' gradients, zero outside the window (and in the padded columns of the logits).
    let g_logits: Vec<f64> =
        (0..b * t * vp).map(|i| if inside(i, vp) && i % vp < config.vocab_size { rng.normal() } else { 0.0 }).collect();
    let g_values: Vec<f64> = (0..b * t).map(|i| if inside(i, 1) { rng.normal() } else { 0.0 }).collect();
    let g_rewards: Vec<f64> = (0..b * t).map(|i| if inside(i, 1) { rng.normal() } else { 0.0 }).collect();

    let gpu = gpu();
    let model = Model::upload(&gpu, &ck).unwrap();
    let batch = Batch::new(&gpu, &config, &ids, &mask, b, t).unwrap();
    let up = |x: &[f64], shape: &[usize]| gpu.upload(shape, &x.iter().map(|&v| v as f32).collect::<Vec<_>>()).unwrap();
    let in_window = |x: &[f64], width: usize| {
        let rows: Vec<f64> =
            x.chunks(width).enumerate().filter(|(j, _)| inside(*j, 1)).flat_map(|(_, r)| r.to_vec()).collect();
        up(&rows, &[b, window.len, width])
    };
    // (logits, values, rewards, flat gradient) of one forward and backward.
    let run = |window: HeadWindow| {
        let mut rec = Recorder::new(&gpu);
        let acts = model.forward_window(&mut rec, &batch, window).unwrap();
        let outputs =
            [acts.logits().unwrap(), acts.values.as_ref().unwrap(), acts.rewards.as_ref().unwrap()].map(|x| x.clone());
        rec.submit();
        let outputs = outputs.map(|x| gpu.download(&x).unwrap());
        let mut rec = Recorder::new(&gpu);
        let grads = model.zeros_like_params(&mut rec).unwrap();
        let ((dlogits, dvalues, drewards), whole) = if window == HeadWindow::whole(t) {
            ((up(&g_logits, &[b, t, vp]), up(&g_values, &[b, t]), up(&g_rewards, &[b, t])), true)
        } else {
            ((in_window(&g_logits, vp), in_window(&g_values, 1), in_window(&g_rewards, 1)), false)
        };
        assert_eq!(acts.logits().unwrap().len(), dlogits.len(), "logits [B, W, Vp] (whole: {whole})");
        rec.copy(&dlogits, acts.logits().unwrap());
        let (dvalues, drewards) =
            (dvalues.reshape(&[b, window.len]).unwrap(), drewards.reshape(&[b, window.len]).unwrap());
        model.backward(&mut rec, &batch, &acts, Some(&dvalues), Some(&drewards), &grads).unwrap();
        rec.submit();
        (outputs, gpu.download(&grads.flat).unwrap())
    };
    // The whole model first, so that the window's scratch comes from the pool holding its data:
    // a gradient the scatter left unwritten outside the window would show.
    let (whole, want_grads) = run(HeadWindow::whole(t));
    let (got, got_grads) = run(window);
    let relative = |got: &[f32], want: &[f32]| {
        assert_eq!(got.len(), want.len());
        got.iter().zip(want).map(|(g, w)| (g - w).abs() / (1.0 + w.abs())).fold(0.0f32, f32::max)
    };
    for (k, (name, width)) in [("logits", vp), ("values", 1), ("rewards", 1)].into_iter().enumerate() {
        let want: Vec<f32> =
            whole[k].chunks(width).enumerate().filter(|(j, _)| inside(*j, 1)).flat_map(|(_, r)| r.to_vec()).collect();
        let worst = relative(&got[k], &want);
        assert!(worst <= 1e-5, "{name} at the window's positions differ by {worst} (relative)");
    }
    let worst = relative(&got_grads, &want_grads);
    assert!(worst <= 1e-5, "gradients differ by {worst} (relative)");

    // A window past the sequence's end is refused.
    let err = model
        .forward_window(&mut Recorder::new(&gpu), &batch, HeadWindow { start: 6, len: 5 })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("head window 6..11 is not within the batch's 10 positions"), "{err}");
}

/// The PPO update's head window: from the position before the first trained token of any row
/// (a response token at j ≥ 1) to the last trained one of any row; the whole sequence when
/// nothing is trained. `slice` and `expand` move [B, T] values into it and back.
#[test]
fn the_trained_window_spans_every_trained_token_and_the_position_before_it() {
    let t = 8;
    // Responses at 4..6 and 3..5 (prompts of different lengths), and one row with none.
    let mask: Vec<f32> = [[0., 0., 0., 0., 1., 1., 1., 0.], [0., 0., 0., 1., 1., 1., 0., 0.], [0.; 8]].concat();
    let window = HeadWindow::trained(&mask, t);
    assert_eq!(window, HeadWindow { start: 2, len: 5 });
    let x: Vec<f32> = (0..3 * t).map(|i| i as f32).collect();
    let sliced = window.slice(&x, t);
    assert_eq!(sliced[..5], [2.0, 3.0, 4.0, 5.0, 6.0]);
    let back = window.expand(&sliced, t);
    for (i, (&y, &want)) in back.iter().zip(&x).enumerate() {
        assert_eq!(y, if (2..7).contains(&(i % t)) { want } else { 0.0 }, "expand at {i}");
    }
    // A token at position 0 is never trained (nothing predicts it); with none trained, or none
    // at all, the window is the whole sequence.
    assert_eq!(HeadWindow::trained(&[1., 0., 0.], 3), HeadWindow::whole(3));
    assert_eq!(HeadWindow::trained(&[1., 1., 0.], 3), HeadWindow { start: 0, len: 2 });
    assert_eq!(HeadWindow::trained(&[0.; 6], 3), HeadWindow::whole(3));
}
