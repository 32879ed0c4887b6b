//! A quick self-check of every kernel family on the chosen adapter: each kernel runs once on
//! small random inputs and is compared with its CPU reference. `ppo-wgpu selfcheck` prints the
//! table; the test suite (tests/kernels) is the thorough version.

use crate::error::Result;
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::{
    adamw, attention, cross_entropy, embedding, f16_weights, gae, gelu, group_advantages, layernorm, matmul, ppo,
    residual, rewards,
};
use crate::reference;
use crate::rng::Rng;
use std::sync::Arc;
use std::time::Instant;

/// One checked kernel: the worst error as a fraction of its tolerance (≤ 1 passes).
pub struct Check {
    pub name: &'static str,
    pub worst: f64,
    pub millis: f64,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.worst <= 1.0
    }
}

/// max over i of |got − want| / (atol + rtol·|want|); NaN anywhere counts as infinitely bad.
pub fn worst_error(got: &[f32], want: &[f64], atol: f64, rtol: f64) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            let e = (g as f64 - w).abs() / (atol + rtol * w.abs());
            if e.is_nan() { f64::INFINITY } else { e }
        })
        .fold(0.0, f64::max)
}

struct Ctx {
    gpu: Arc<Gpu>,
    rng: Rng,
    checks: Vec<Check>,
}

impl Ctx {
    fn up(&self, x: &[f64], shape: &[usize]) -> Result<Tensor> {
        let v: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        self.gpu.upload(shape, &v)
    }
    fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        let t = self.gpu.tensor(shape, DType::F32)?;
        let mut rec = Recorder::new(&self.gpu);
        rec.zero(&t);
        Ok(t)
    }
    /// Runs `record`, then compares each (tensor, reference, atol, rtol) output.
    fn check(
        &mut self,
        name: &'static str,
        record: impl FnOnce(&mut Recorder) -> Result<()>,
        outputs: &[(&Tensor, &[f64], f64, f64)],
    ) -> Result<()> {
        let start = Instant::now();
        let mut rec = Recorder::new(&self.gpu);
        record(&mut rec)?;
        rec.submit();
        let mut worst: f64 = 0.0;
        for (t, want, atol, rtol) in outputs {
            worst = worst.max(worst_error(&self.gpu.download(t)?, want, *atol, *rtol));
        }
        self.checks.push(Check { name, worst, millis: start.elapsed().as_secs_f64() * 1e3 });
        Ok(())
    }
}

/// Runs every kernel family once against its CPU reference.
pub fn run(gpu: &Arc<Gpu>) -> Result<Vec<Check>> {
    let mut cx = Ctx { gpu: gpu.clone(), rng: Rng::new(2024), checks: Vec::new() };
    let (n, c, oc) = (37, 64, 96);

    // Linear layer forward and backward.
    let (inp, w, bias, dout) =
        (cx.rng.normals(n * c, 1.0), cx.rng.normals(c * oc, 1.0), cx.rng.normals(oc, 1.0), cx.rng.normals(n * oc, 1.0));
    let (t_inp, t_w, t_b, t_dout) =
        (cx.up(&inp, &[n, c])?, cx.up(&w, &[c, oc])?, cx.up(&bias, &[oc])?, cx.up(&dout, &[n, oc])?);
    let (out, dinp, dw, db) = (cx.zeros(&[n, oc])?, cx.zeros(&[n, c])?, cx.zeros(&[c, oc])?, cx.zeros(&[oc])?);
    let want = reference::linear_forward(&inp, &w, Some(&bias), n, c, oc);
    let (r_inp, r_w, r_b) = reference::linear_backward(&dout, &inp, &w, n, c, oc);
    cx.check(
        "matmul forward",
        |r| matmul::linear_forward(r, &out, &t_inp, &t_w, Some(&t_b)),
        &[(&out, &want, 1e-4, 1e-4)],
    )?;
    cx.check(
        "matmul backward",
        |r| matmul::linear_backward(r, &dinp, true, &dw, Some(&db), &t_dout, &t_inp, &t_w),
        &[(&dinp, &r_inp, 1e-4, 1e-4), (&dw, &r_w, 1e-4, 1e-4), (&db, &r_b, 1e-4, 1e-4)],
    )?;

    // The same forward over a decode step's few rows (8 sequences), with the weights in f16 as
    // a decode step may read them.
    let rows = 8;
    let (step_inp, step_out) = (cx.up(&inp[..rows * c], &[rows, c])?, cx.zeros(&[rows, oc])?);
    let held: Vec<f64> = w.iter().map(|&x| reference::f16_weight(x as f32) as f64).collect();
    let want_f16 = reference::linear_forward(&inp[..rows * c], &held, Some(&bias), rows, c, oc);
    cx.check(
        "matmul forward, a decode step's rows, f16 weights",
        |r| {
            let half = f16_weights::to_f16(r, &t_w)?;
            matmul::linear_forward(r, &step_out, &step_inp, &half, Some(&t_b))
        },
        &[(&step_out, &want_f16, 1e-4, 1e-4)],
    )?;

    // LayerNorm.
    let (lw, lb) = (cx.rng.normals(c, 1.0), cx.rng.normals(c, 1.0));
    let dln = cx.rng.normals(n * c, 1.0);
    let (t_lw, t_lb, t_dln) = (cx.up(&lw, &[c])?, cx.up(&lb, &[c])?, cx.up(&dln, &[n, c])?);
    let (ln_out, mean, rstd) = (cx.zeros(&[n, c])?, cx.zeros(&[n])?, cx.zeros(&[n])?);
    let (ln_dinp, ln_dw, ln_db) = (cx.zeros(&[n, c])?, cx.zeros(&[c])?, cx.zeros(&[c])?);
    let (r_out, _, _) = reference::layernorm_forward(&inp, &lw, &lb, c, 1e-5);
    let (r_dinp, r_dw, r_db) = reference::layernorm_backward(&dln, &inp, &lw, c, 1e-5);
    cx.check(
        "layernorm forward+backward",
        |r| {
            layernorm::layernorm_forward(r, &ln_out, &mean, &rstd, &t_inp, &t_lw, &t_lb, 1e-5)?;
            layernorm::layernorm_backward(r, &ln_dinp, &ln_dw, &ln_db, &t_dln, &t_inp, &t_lw, &mean, &rstd)
        },
        &[
            (&ln_out, &r_out, 1e-5, 1e-4),
            (&ln_dinp, &r_dinp, 1e-4, 1e-4),
            (&ln_dw, &r_dw, 1e-4, 1e-4),
            (&ln_db, &r_db, 1e-4, 1e-4),
        ],
    )?;

    // GELU and the residual add.
    let (g_out, g_dinp, sum) = (cx.zeros(&[n, c])?, cx.zeros(&[n, c])?, cx.zeros(&[n, c])?);
    let r_gelu = reference::gelu_forward(&inp);
    let r_dgelu = reference::gelu_backward(&inp, &dln);
    let r_sum: Vec<f64> = inp.iter().zip(&dln).map(|(a, b)| a + b).collect();
    cx.check(
        "gelu forward+backward",
        |r| {
            gelu::gelu_forward(r, &g_out, &t_inp)?;
            gelu::gelu_backward(r, &g_dinp, &t_inp, &t_dln)
        },
        &[(&g_out, &r_gelu, 1e-6, 1e-5), (&g_dinp, &r_dgelu, 1e-6, 1e-5)],
    )?;
    cx.check("residual add", |r| residual::residual_forward(r, &sum, &t_inp, &t_dln), &[(&sum, &r_sum, 1e-6, 1e-6)])?;
    let (fused_sum, fused_out) = (cx.zeros(&[n, c])?, cx.zeros(&[n, c])?);
    let r_fused = reference::layernorm_forward(&r_sum, &lw, &lb, c, 1e-5).0;
    cx.check(
        "residual add + layernorm (fused)",
        |r| {
            let (o, s) = (&fused_out, &fused_sum);
            layernorm::residual_layernorm_forward(r, s, o, &mean, &rstd, &t_inp, &t_dln, &t_lw, &t_lb, 1e-5)
        },
        &[(&fused_sum, &r_sum, 1e-6, 1e-6), (&fused_out, &r_fused, 1e-5, 1e-4)],
    )?;

    // Embedding.
    let (vocab, positions) = (50, 40);
    let ids: Vec<u32> = (0..n).map(|_| cx.rng.below(vocab as u32)).collect();
    let pos: Vec<u32> = (0..n as u32).collect();
    let (wte, wpe) = (cx.rng.normals(vocab * c, 1.0), cx.rng.normals(positions * c, 1.0));
    let (t_ids, t_pos) = (gpu.upload_u32(&[n], &ids)?, gpu.upload_u32(&[n], &pos)?);
    let (t_wte, t_wpe) = (cx.up(&wte, &[vocab, c])?, cx.up(&wpe, &[positions, c])?);
    let (emb, dwte) = (cx.zeros(&[n, c])?, cx.zeros(&[vocab, c])?);
    let buckets = embedding::Buckets::new(gpu, &ids, vocab)?;
    let r_emb = reference::embedding_forward(&ids, &pos, &wte, &wpe, c);
    let r_dwte = reference::embedding_backward(&dln, &ids, vocab, c);
    cx.check(
        "embedding forward+backward",
        |r| {
            embedding::embedding_forward(r, &emb, &t_ids, &t_pos, &t_wte, &t_wpe)?;
            embedding::embedding_backward(r, &dwte, &t_dln, &buckets)
        },
        &[(&emb, &r_emb, 1e-6, 1e-6), (&dwte, &r_dwte, 1e-5, 1e-5)],
    )?;

    // Attention with left padding on the first row.
    let shape = attention::AttentionShape { b: 2, t: 19, c: 32, n_head: 4 };
    let (b, t) = (shape.b, shape.t);
    let qkv = cx.rng.normals(b * t * 3 * shape.c, 1.0);
    let datt = cx.rng.normals(b * t * shape.c, 1.0);
    let mask: Vec<u32> = (0..b * t).map(|i| (i >= 5) as u32).collect();
    let (t_qkv, t_mask, t_datt) =
        (cx.up(&qkv, &[b, t, 3 * shape.c])?, gpu.upload_u32(&[b, t], &mask)?, cx.up(&datt, &[b, t, shape.c])?);
    let (att, lse, delta, dqkv) =
        (cx.zeros(&[b, t, shape.c])?, cx.zeros(&[b, 4, t])?, cx.zeros(&[b, 4, t])?, cx.zeros(&[b, t, 3 * shape.c])?);
    let (r_att, _) = reference::attention_forward(&qkv, &mask, b, t, shape.c, 4);
    let r_dqkv = reference::attention_backward(&datt, &qkv, &mask, b, t, shape.c, 4);
    cx.check(
        "attention forward+backward",
        |r| {
            attention::attention_forward(r, &att, &lse, &t_qkv, &t_mask, shape)?;
            attention::attention_backward(r, &dqkv, &delta, &t_datt, &t_qkv, &att, &lse, &t_mask, shape)
        },
        &[(&att, &r_att, 1e-5, 1e-4), (&dqkv, &r_dqkv, 1e-4, 1e-4)],
    )?;

    // Cross-entropy over a GPT-2-sized vocabulary row.
    let (rows, v) = (4, 50257);
    let logits = cx.rng.normals(rows * v, 2.0);
    let targets: Vec<u32> = (0..rows).map(|_| cx.rng.below(v as u32)).collect();
    let dloss = vec![0.25; rows];
    let (t_logits, t_targets, t_dloss) =
        (cx.up(&logits, &[rows, v])?, gpu.upload_u32(&[rows], &targets)?, cx.up(&dloss, &[rows])?);
    let (loss, ce_lse) = (cx.zeros(&[rows])?, cx.zeros(&[rows])?);
    let r_loss = reference::cross_entropy_forward(&logits, &targets, v);
    let r_dlogits = reference::cross_entropy_backward(&logits, &targets, &dloss, v);
    cx.check(
        "cross-entropy forward+backward",
        |r| {
            cross_entropy::cross_entropy_forward(r, &loss, &ce_lse, &t_logits, &t_targets, 1.0)?;
            cross_entropy::cross_entropy_backward(r, &t_logits, &t_dloss, &ce_lse, &t_targets, 1.0)
        },
        &[(&loss, &r_loss, 1e-4, 1e-5), (&t_logits, &r_dlogits, 1e-6, 1e-4)],
    )?;

    // Gradient norm, clipping and one AdamW step.
    let k = 5000;
    let (p0, grad) = (cx.rng.normals(k, 1.0), cx.rng.normals(k, 1.0));
    let (t_p, t_g, t_m, t_v) = (cx.up(&p0, &[k])?, cx.up(&grad, &[k])?, cx.zeros(&[k])?, cx.zeros(&[k])?);
    let (norm_scale, partial) = (cx.zeros(&[2])?, cx.zeros(&[adamw::NORM_PARTIALS])?);
    let hp = adamw::AdamW { lr: 1e-3, weight_decay: 0.1, ..Default::default() };
    let (norm, scale) = reference::grad_norm(&grad, 1.0);
    let (mut rp, mut rm, mut rv) = (p0.clone(), vec![0.0; k], vec![0.0; k]);
    reference::adamw_update(&mut rp, &mut rm, &mut rv, &grad, scale, 1e-3, 0.9, 0.999, 1e-8, 0.1, 1);
    cx.check(
        "grad norm + AdamW",
        |r| {
            adamw::grad_norm(r, &norm_scale, &partial, &t_g, 1.0)?;
            adamw::adamw_update(r, &t_p, &t_m, &t_v, &t_g, &norm_scale, &hp, 1)
        },
        &[(&norm_scale, &[norm, scale], 1e-5, 1e-5), (&t_p, &rp, 1e-6, 1e-5)],
    )?;

    // The fused PPO loss: 2 sequences of 6 positions over a vocabulary of 40.
    let (seq, v) = (6, 40);
    let rows = 2 * seq;
    let logits = cx.rng.normals(rows * v, 2.0);
    let tokens: Vec<u32> = (0..rows).map(|_| cx.rng.below(v as u32)).collect();
    let values = cx.rng.normals(rows, 1.0);
    let mut inputs = vec![0.0; rows * 8];
    for i in 0..rows {
        let f = |x: f64| x as f32 as f64;
        let row = [
            ((i % seq) >= 2) as u8 as f64,
            f(-3.0 + cx.rng.uniform()),
            f(cx.rng.normal()),
            f(cx.rng.normal()),
            f(cx.rng.normal()),
        ];
        inputs[i * 8..i * 8 + 5].copy_from_slice(&row);
    }
    let count = (0..rows).filter(|&r| r % seq + 1 < seq && inputs[(r + 1) * 8] != 0.0).count();
    let loss_cfg = ppo::PpoLossConfig { ent_coef: 0.01, ..Default::default() };
    let rcfg = reference::PpoConfig {
        temperature: 1.0,
        cliprange: 0.2,
        cliprange_value: 0.2,
        vf_coef: 0.1,
        ent_coef: 0.01,
        kl_coef: 0.0,
        sequence_mean: false,
    };
    let want = reference::ppo_loss(&logits, &tokens, &inputs, Some(&values), seq, v, &rcfg);
    let (t_logits, t_tokens) = (cx.up(&logits, &[rows, v])?, gpu.upload_u32(&[rows], &tokens)?);
    let (t_inputs, t_values) = (cx.up(&inputs, &[rows, 8])?, cx.up(&values, &[rows])?);
    let (dvalues, token_stats, stats) = (cx.zeros(&[rows])?, cx.zeros(&[rows, 8])?, cx.zeros(&[8])?);
    let mb = ppo::PpoMinibatch {
        logits: &t_logits,
        tokens: &t_tokens,
        inputs: &t_inputs,
        values: Some(&t_values),
        seq,
        count,
        sequences: 2,
    };
    cx.check(
        "fused PPO loss + statistics",
        |r| {
            ppo::ppo_loss_fused(r, &mb, &loss_cfg, Some(&dvalues), &token_stats)?;
            ppo::ppo_stats_reduce(r, &stats, &token_stats)
        },
        &[
            (&t_logits, &want.dlogits, 1e-7, 1e-4),
            (&dvalues, &want.dvalues, 1e-7, 1e-5),
            (&stats, &want.stats, 1e-5, 1e-4),
        ],
    )?;

    // The critic-free form (GRPO: per-sequence means, the k3 KL term) on the same minibatch,
    // with reference log-probs and each sequence's 1/n_i added to the inputs.
    for i in 0..rows {
        let first = i - i % seq;
        let n_i = (first..first + seq).filter(|&r| r % seq + 1 < seq && inputs[(r + 1) * 8] != 0.0).count();
        inputs[i * 8 + 5] = (inputs[i * 8 + 1] + cx.rng.normal()) as f32 as f64;
        inputs[i * 8 + 6] = (1.0 / n_i as f64) as f32 as f64;
    }
    let grpo_cfg = ppo::PpoLossConfig { kl_coef: 0.1, loss_type: ppo::LossType::Sequence, ..loss_cfg };
    let rcfg = reference::PpoConfig { vf_coef: 0.0, kl_coef: 0.1, sequence_mean: true, ..rcfg };
    let want = reference::ppo_loss(&logits, &tokens, &inputs, None, seq, v, &rcfg);
    let (t_logits, t_inputs) = (cx.up(&logits, &[rows, v])?, cx.up(&inputs, &[rows, 8])?);
    let mb = ppo::PpoMinibatch { logits: &t_logits, inputs: &t_inputs, values: None, ..mb };
    cx.check(
        "critic-free (GRPO) loss + stats",
        |r| {
            ppo::ppo_loss_fused(r, &mb, &grpo_cfg, None, &token_stats)?;
            ppo::ppo_stats_reduce(r, &stats, &token_stats)
        },
        &[(&t_logits, &want.dlogits, 1e-7, 1e-4), (&stats, &want.stats, 1e-5, 1e-4)],
    )?;

    // Group advantages: RLOO's returns from per-token rewards, then GRPO's and RLOO's baselines,
    // on 2 groups of 3 sequences of 7.
    let (groups, g, t) = (2, 3, 7);
    let b = groups * g;
    let per_token = cx.rng.normals(b * t, 1.0);
    let mask: Vec<f64> = (0..b * t).map(|i| (i % t >= 2 + i / t % 3) as u8 as f64).collect();
    let returns: Vec<f64> = per_token.chunks(t).map(|row| row.iter().map(|x| *x as f32 as f64).sum()).collect();
    let broadcast = |per_row: Vec<f64>| -> Vec<f64> { (0..b * t).map(|i| mask[i] * per_row[i / t]).collect() };
    let want_grpo = broadcast(reference::group_advantages(&returns, g, true, false));
    let want_rloo = broadcast(reference::group_advantages(&returns, g, false, true));
    let (t_per_token, t_mask) = (cx.up(&per_token, &[b, t])?, cx.up(&mask, &[b, t])?);
    let (t_returns, grpo_adv, rloo_adv) = (cx.zeros(&[b])?, cx.zeros(&[b, t])?, cx.zeros(&[b, t])?);
    cx.check(
        "group advantages (GRPO, RLOO)",
        |r| {
            use group_advantages::GroupBaseline;
            group_advantages::sequence_returns(r, &t_returns, &t_per_token)?;
            group_advantages::group_advantages(r, &grpo_adv, &t_returns, &t_mask, g, GroupBaseline::MeanStd)?;
            group_advantages::group_advantages(r, &rloo_adv, &t_returns, &t_mask, g, GroupBaseline::LeaveOneOut)
        },
        &[(&t_returns, &returns, 1e-5, 1e-5), (&grpo_adv, &want_grpo, 1e-4, 1e-4), (&rloo_adv, &want_rloo, 1e-5, 1e-5)],
    )?;

    // GAE (both kernels), KL-penalised rewards and whitening on 3 sequences of 50.
    let (b, t) = (3, 50);
    let mask: Vec<f64> = (0..b * t).map(|i| (i % t >= 10 && i % t < 40 + i / t) as u8 as f64).collect();
    let (logp_old, logp_ref) = (cx.rng.normals(b * t, 1.0), cx.rng.normals(b * t, 1.0));
    let (scores, values) = (cx.rng.normals(b, 1.0), cx.rng.normals(b * t, 1.0));
    let (want_kl, want_rewards) = reference::kl_rewards(&logp_old, &logp_ref, &mask, &scores, t, 0.05, false);
    let (want_adv, want_ret) = reference::gae(&want_rewards, &values, &mask, t, 1.0, 0.95);
    let want_white = reference::masked_whiten(&want_adv, &mask, true);
    let up = |x: &[f64]| cx.up(x, &[b, t]);
    let (t_old, t_ref, t_mask, t_values) = (up(&logp_old)?, up(&logp_ref)?, up(&mask)?, up(&values)?);
    let t_scores = cx.up(&scores, &[b])?;
    let (kl, t_rewards, moments) = (cx.zeros(&[b, t])?, cx.zeros(&[b, t])?, cx.zeros(&[3])?);
    let (adv, ret, adv_scan, ret_scan) =
        (cx.zeros(&[b, t])?, cx.zeros(&[b, t])?, cx.zeros(&[b, t])?, cx.zeros(&[b, t])?);
    cx.check(
        "KL rewards, GAE, whitening",
        |r| {
            rewards::kl_rewards(
                r,
                &kl,
                &t_rewards,
                &t_old,
                &t_ref,
                &t_mask,
                &t_scores,
                0.05,
                rewards::KlEstimator::K1,
            )?;
            gae::gae(r, gae::GaeKernel::Scan, &adv_scan, &ret_scan, &t_rewards, &t_values, &t_mask, 1.0, 0.95)?;
            gae::gae(r, gae::GaeKernel::PerSequence, &adv, &ret, &t_rewards, &t_values, &t_mask, 1.0, 0.95)?;
            rewards::masked_whiten(r, &adv, &t_mask, &moments, true)
        },
        &[
            (&kl, &want_kl, 1e-6, 1e-5),
            (&adv_scan, &want_adv, 1e-4, 1e-4),
            (&ret_scan, &want_ret, 1e-4, 1e-4),
            (&ret, &want_ret, 1e-4, 1e-4),
            (&adv, &want_white, 1e-4, 1e-4),
        ],
    )?;

    Ok(cx.checks)
}
