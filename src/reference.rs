//! Plain CPU references for every kernel: straightforward loops in f64, written for clarity,
//! not speed. Tests compare the GPU kernels against these, and check the backward references
//! (and kernels) against finite differences of the forward ones.
//!
//! Shapes follow the kernels: row-major, `[rows, cols]` with the last axis contiguous.

use crate::kernels::matmul::Layout;
use crate::model::HeadWindow;

/// out[M,N] = op(A)·op(B) (see `Layout`), no bias.
pub fn matmul(a: &[f64], b: &[f64], m: usize, n: usize, k: usize, layout: Layout) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for p in 0..k {
                let x = match layout {
                    Layout::TN => a[p * m + i],
                    _ => a[i * k + p],
                };
                let y = match layout {
                    Layout::NT => b[j * k + p],
                    _ => b[p * n + j],
                };
                s += x * y;
            }
            out[i * n + j] = s;
        }
    }
    out
}

/// out [N, OC] = inp [N, C] · w [C, OC] + bias [OC].
pub fn linear_forward(inp: &[f64], w: &[f64], bias: Option<&[f64]>, n: usize, c: usize, oc: usize) -> Vec<f64> {
    let mut out = matmul(inp, w, n, oc, c, Layout::NN);
    if let Some(bias) = bias {
        for row in out.chunks_mut(oc) {
            row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
        }
    }
    out
}

/// (dinp, dw, dbias) of `linear_forward` for upstream gradient dout [N, OC].
pub fn linear_backward(
    dout: &[f64],
    inp: &[f64],
    w: &[f64],
    n: usize,
    c: usize,
    oc: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let dinp = matmul(dout, w, n, c, oc, Layout::NT);
    let dw = matmul(inp, dout, c, oc, n, Layout::TN);
    let mut db = vec![0.0; oc];
    for row in dout.chunks(oc) {
        db.iter_mut().zip(row).for_each(|(d, g)| *d += g);
    }
    (dinp, dw, db)
}

/// (out, mean, rstd) of LayerNorm over rows of width c.
pub fn layernorm_forward(inp: &[f64], w: &[f64], b: &[f64], c: usize, eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let rows = inp.len() / c;
    let (mut out, mut mean, mut rstd) = (vec![0.0; inp.len()], vec![0.0; rows], vec![0.0; rows]);
    for r in 0..rows {
        let x = &inp[r * c..(r + 1) * c];
        let m = x.iter().sum::<f64>() / c as f64;
        let var = x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / c as f64;
        let s = 1.0 / (var + eps).sqrt();
        for i in 0..c {
            out[r * c + i] = (x[i] - m) * s * w[i] + b[i];
        }
        mean[r] = m;
        rstd[r] = s;
    }
    (out, mean, rstd)
}

/// (dinp, dw, db) of LayerNorm.
pub fn layernorm_backward(dout: &[f64], inp: &[f64], w: &[f64], c: usize, eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let rows = inp.len() / c;
    let (_, mean, rstd) = layernorm_forward(inp, w, &vec![0.0; c], c, eps);
    let (mut dinp, mut dw, mut db) = (vec![0.0; inp.len()], vec![0.0; c], vec![0.0; c]);
    for r in 0..rows {
        let norm: Vec<f64> = (0..c).map(|i| (inp[r * c + i] - mean[r]) * rstd[r]).collect();
        let g: Vec<f64> = (0..c).map(|i| dout[r * c + i] * w[i]).collect();
        let g_mean = g.iter().sum::<f64>() / c as f64;
        let gn_mean = g.iter().zip(&norm).map(|(a, b)| a * b).sum::<f64>() / c as f64;
        for i in 0..c {
            dinp[r * c + i] = rstd[r] * (g[i] - g_mean - norm[i] * gn_mean);
            dw[i] += dout[r * c + i] * norm[i];
            db[i] += dout[r * c + i];
        }
    }
    (dinp, dw, db)
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

pub fn gelu_forward(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&x| 0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())).collect()
}

/// dinp = gelu'(x)·dout.
pub fn gelu_backward(x: &[f64], dout: &[f64]) -> Vec<f64> {
    x.iter()
        .zip(dout)
        .map(|(&x, &d)| {
            let t = (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh();
            let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
            d * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)
        })
        .collect()
}

/// out [N, C] = wte[ids] + wpe[pos].
pub fn embedding_forward(ids: &[u32], pos: &[u32], wte: &[f64], wpe: &[f64], c: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(ids.len() * c);
    for (&id, &p) in ids.iter().zip(pos) {
        for i in 0..c {
            out.push(wte[id as usize * c + i] + wpe[p as usize * c + i]);
        }
    }
    out
}

/// dtable [rows, C] = Σ over tokens n of dout[n] into row index[n].
pub fn embedding_backward(dout: &[f64], index: &[u32], rows: usize, c: usize) -> Vec<f64> {
    let mut d = vec![0.0; rows * c];
    for (n, &r) in index.iter().enumerate() {
        for i in 0..c {
            d[r as usize * c + i] += dout[n * c + i];
        }
    }
    d
}

/// Offset of token (b, t)'s q (part 0), k (1) or v (2) of head h in qkv [B, T, 3C].
fn qkv_at(b: usize, t: usize, part: usize, h: usize, seq: usize, c: usize, hd: usize) -> usize {
    (b * seq + t) * 3 * c + part * c + h * hd
}

/// Query i of head h in sequence b: the keys it sees (j ≤ i, mask[j] ≠ 0), their softmax
/// probabilities and the log-sum-exp of the scaled scores; None when it sees no key.
#[allow(clippy::too_many_arguments)]
fn attention_row(
    qkv: &[f64],
    mask: &[u32],
    b: usize,
    h: usize,
    i: usize,
    t: usize,
    c: usize,
    hd: usize,
) -> Option<(Vec<usize>, Vec<f64>, f64)> {
    let keys: Vec<usize> = (0..=i).filter(|&j| mask[b * t + j] != 0).collect();
    if keys.is_empty() {
        return None;
    }
    let (q, scale) = (qkv_at(b, i, 0, h, t, c, hd), 1.0 / (hd as f64).sqrt());
    let scores: Vec<f64> = keys
        .iter()
        .map(|&j| (0..hd).map(|d| qkv[q + d] * qkv[qkv_at(b, j, 1, h, t, c, hd) + d]).sum::<f64>() * scale)
        .collect();
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
    let p = scores.iter().map(|s| (s - max).exp() / sum).collect();
    Some((keys, p, max + sum.ln()))
}

/// Causal attention with key padding mask. qkv [B, T, 3C], mask [B, T] → (out [B, T, C],
/// lse [B, NH, T]). A query with no visible key gets out = 0, lse = 0.
pub fn attention_forward(qkv: &[f64], mask: &[u32], b: usize, t: usize, c: usize, nh: usize) -> (Vec<f64>, Vec<f64>) {
    let hd = c / nh;
    let (mut out, mut lse) = (vec![0.0; b * t * c], vec![0.0; b * nh * t]);
    for bb in 0..b {
        for h in 0..nh {
            for i in 0..t {
                let Some((keys, p, row_lse)) = attention_row(qkv, mask, bb, h, i, t, c, hd) else { continue };
                for (&j, p) in keys.iter().zip(&p) {
                    for d in 0..hd {
                        out[(bb * t + i) * c + h * hd + d] += p * qkv[qkv_at(bb, j, 2, h, t, c, hd) + d];
                    }
                }
                lse[(bb * nh + h) * t + i] = row_lse;
            }
        }
    }
    (out, lse)
}

/// dqkv [B, T, 3C] of `attention_forward` for upstream gradient dout [B, T, C].
pub fn attention_backward(
    dout: &[f64],
    qkv: &[f64],
    mask: &[u32],
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> Vec<f64> {
    let hd = c / nh;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut dqkv = vec![0.0; qkv.len()];
    let at = |bb: usize, tt: usize, part: usize, h: usize| qkv_at(bb, tt, part, h, t, c, hd);
    for bb in 0..b {
        for h in 0..nh {
            for i in 0..t {
                let Some((keys, p, _)) = attention_row(qkv, mask, bb, h, i, t, c, hd) else { continue };
                let dout_i = &dout[(bb * t + i) * c + h * hd..][..hd];
                // dp_j = dout_i·v_j; ds_j = p_j (dp_j − Σ_k p_k dp_k)
                let dp: Vec<f64> =
                    keys.iter().map(|&j| (0..hd).map(|d| dout_i[d] * qkv[at(bb, j, 2, h) + d]).sum()).collect();
                let mean_dp: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for (x, &j) in keys.iter().enumerate() {
                    let ds = p[x] * (dp[x] - mean_dp) * scale;
                    for d in 0..hd {
                        dqkv[at(bb, i, 0, h) + d] += ds * qkv[at(bb, j, 1, h) + d];
                        dqkv[at(bb, j, 1, h) + d] += ds * qkv[at(bb, i, 0, h) + d];
                        dqkv[at(bb, j, 2, h) + d] += p[x] * dout_i[d];
                    }
                }
            }
        }
    }
    dqkv
}

/// Columns first .. first + width of each row of x [rows, stride] (`kernels::window`): what the
/// host does with a head window (`HeadWindow::slice`).
pub fn window_gather(x: &[f64], stride: usize, first: usize, width: usize) -> Vec<f64> {
    HeadWindow { start: first, len: width }.slice(x, stride)
}

/// x [rows, width] placed at columns first .. first + width of rows of `stride`, zeros around
/// (`HeadWindow::expand`).
pub fn window_scatter(x: &[f64], stride: usize, first: usize, width: usize) -> Vec<f64> {
    HeadWindow { start: first, len: width }.expand(x, stride)
}

/// Columns v.. of each row of width vp set to MASKED_LOGIT (`kernels::padded_vocab`).
pub fn mask_padded_logits(logits: &[f64], v: usize, vp: usize) -> Vec<f64> {
    let masked = crate::kernels::padded_vocab::MASKED_LOGIT as f64;
    logits.iter().enumerate().map(|(i, &z)| if i % vp < v { z } else { masked }).collect()
}

/// x rounded to the nearest f16 (ties to even), as f32: what WGSL's pack2x16float stores (the f16 KV cache, kernels::kv_cache), for values
/// in f16's normal range.
pub fn round_to_f16(x: f32) -> f32 {
    let bits = x.to_bits();
    let dropped = bits & 0x1FFF; // the 13 mantissa bits f16 does not keep
    let kept = bits & !0x1FFF;
    let up = dropped > 0x1000 || (dropped == 0x1000 && kept & 0x2000 != 0);
    f32::from_bits(if up { kept + 0x2000 } else { kept })
}

/// A weight as a generation's f16 copy holds it (`kernels::f16_weights::to_f16`): clamped to
/// f16's finite range, then rounded as `round_to_f16`.
pub fn f16_weight(x: f32) -> f32 {
    round_to_f16(x.clamp(-F16_MAX, F16_MAX))
}

/// The largest finite f16.
pub const F16_MAX: f32 = 65504.0;

/// Rows of qkv [.., 3C] with their keys and values as a KV cache holds them: as they are (f32),
/// or rounded to f16 (`round_to_f16`; queries stay f32).
pub fn qkv_as_cached(qkv: &[f64], c: usize, f16: bool) -> Vec<f64> {
    let held = |i: usize, x: f64| if f16 && i % (3 * c) >= c { round_to_f16(x as f32) as f64 } else { x };
    qkv.iter().enumerate().map(|(i, &x)| held(i, x)).collect()
}

/// log Σ exp of each row of width v.
pub fn logsumexp_rows(logits: &[f64], v: usize) -> Vec<f64> {
    logits
        .chunks(v)
        .map(|row| {
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            max + row.iter().map(|z| (z - max).exp()).sum::<f64>().ln()
        })
        .collect()
}

/// log_softmax along rows of width v.
pub fn log_softmax(logits: &[f64], v: usize) -> Vec<f64> {
    let lse = logsumexp_rows(logits, v);
    logits.iter().enumerate().map(|(i, z)| z - lse[i / v]).collect()
}

/// The rollout's log-prob and entropy rows (kernels::ppo::logprob_entropy): for each row r of
/// logits [rows, V] that predicts a token of its sequence (of `seq` positions), logprobs[r + 1]
/// = log softmax(logits_r/τ)[tokens[r + 1]] and entropy[r + 1] = H(softmax(logits_r/τ)); 0 at
/// the first position of each sequence.
pub fn logprob_entropy(logits: &[f64], tokens: &[u32], seq: usize, v: usize, temperature: f64) -> (Vec<f64>, Vec<f64>) {
    let rows = tokens.len();
    let (mut logprobs, mut entropy) = (vec![0.0; rows], vec![0.0; rows]);
    for r in (0..rows).filter(|r| r % seq + 1 < seq) {
        let z: Vec<f64> = logits[r * v..(r + 1) * v].iter().map(|l| l / temperature).collect();
        let lp = log_softmax(&z, v);
        logprobs[r + 1] = lp[tokens[r + 1] as usize];
        entropy[r + 1] = -lp.iter().map(|l| l.exp() * l).sum::<f64>();
    }
    (logprobs, entropy)
}

/// Per-row cross-entropy loss (0 where the target is `IGNORE`).
pub fn cross_entropy_forward(logits: &[f64], targets: &[u32], v: usize) -> Vec<f64> {
    let lse = logsumexp_rows(logits, v);
    targets
        .iter()
        .enumerate()
        .map(
            |(n, &t)| {
                if t == crate::kernels::cross_entropy::IGNORE { 0.0 } else { lse[n] - logits[n * v + t as usize] }
            },
        )
        .collect()
}

/// ∂(Σ_n dloss_n·loss_n)/∂logits.
pub fn cross_entropy_backward(logits: &[f64], targets: &[u32], dloss: &[f64], v: usize) -> Vec<f64> {
    let lse = logsumexp_rows(logits, v);
    let mut d = vec![0.0; logits.len()];
    for (n, &t) in targets.iter().enumerate() {
        if t == crate::kernels::cross_entropy::IGNORE {
            continue;
        }
        for i in 0..v {
            let p = (logits[n * v + i] - lse[n]).exp();
            d[n * v + i] = dloss[n] * (p - if i == t as usize { 1.0 } else { 0.0 });
        }
    }
    d
}

/// (‖grad‖₂, clip scale) as the grad-norm kernels compute them.
pub fn grad_norm(grad: &[f64], max_norm: f64) -> (f64, f64) {
    let norm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
    let scale = if max_norm > 0.0 { (max_norm / (norm + 1e-6)).min(1.0) } else { 1.0 };
    (norm, scale)
}

/// One AdamW step t on (param, m, v) in place, gradient scaled by `scale`.
#[allow(clippy::too_many_arguments)]
pub fn adamw_update(
    param: &mut [f64],
    m: &mut [f64],
    v: &mut [f64],
    grad: &[f64],
    scale: f64,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    t: i32,
) {
    for i in 0..param.len() {
        let g = grad[i] * scale;
        m[i] = beta1 * m[i] + (1.0 - beta1) * g;
        v[i] = beta2 * v[i] + (1.0 - beta2) * g * g;
        let m_hat = m[i] / (1.0 - beta1.powi(t));
        let v_hat = v[i] / (1.0 - beta2.powi(t));
        param[i] -= lr * (m_hat / (v_hat.sqrt() + eps) + weight_decay * param[i]);
    }
}

/// Outputs of the reference GPT-2 forward: logits [B, T, V], and the value and reward heads
/// [B, T] when the checkpoint has them.
pub struct ModelOutputs {
    pub logits: Vec<f64>,
    pub values: Option<Vec<f64>>,
    pub rewards: Option<Vec<f64>>,
}

/// The whole GPT-2 forward on the CPU, composed of the references above, with every parameter
/// taken from `param(name)` (so tests can perturb one for finite differences). `ids` and `mask`
/// are [B, T]; positions follow Hugging Face's left-padding convention.
pub fn gpt2_forward(
    config: &crate::model::GptConfig,
    param: &dyn Fn(&str) -> Vec<f64>,
    ids: &[u32],
    mask: &[u32],
    b: usize,
    t: usize,
) -> ModelOutputs {
    let (v, c, nh) = (config.vocab_size, config.n_embd, config.n_head);
    let eps = config.layer_norm_epsilon as f64;
    let n = b * t;
    let pos = crate::kernels::embedding::position_ids(mask, t);
    let wte = param("wte.weight");
    let mut x = embedding_forward(ids, &pos, &wte, &param("wpe.weight"), c);
    for l in 0..config.n_layer {
        let p = |name: &str| param(&format!("h.{l}.{name}"));
        let (ln1, _, _) = layernorm_forward(&x, &p("ln_1.weight"), &p("ln_1.bias"), c, eps);
        let qkv = linear_forward(&ln1, &p("attn.c_attn.weight"), Some(&p("attn.c_attn.bias")), n, c, 3 * c);
        let (atty, _) = attention_forward(&qkv, mask, b, t, c, nh);
        let attproj = linear_forward(&atty, &p("attn.c_proj.weight"), Some(&p("attn.c_proj.bias")), n, c, c);
        x.iter_mut().zip(&attproj).for_each(|(r, a)| *r += a);
        let (ln2, _, _) = layernorm_forward(&x, &p("ln_2.weight"), &p("ln_2.bias"), c, eps);
        let fch = gelu_forward(&linear_forward(&ln2, &p("mlp.c_fc.weight"), Some(&p("mlp.c_fc.bias")), n, c, 4 * c));
        let fcproj = linear_forward(&fch, &p("mlp.c_proj.weight"), Some(&p("mlp.c_proj.bias")), n, 4 * c, c);
        x.iter_mut().zip(&fcproj).for_each(|(r, a)| *r += a);
    }
    let (lnf, _, _) = layernorm_forward(&x, &param("ln_f.weight"), &param("ln_f.bias"), c, eps);
    let logits = matmul(&lnf, &wte, n, v, c, Layout::NT);
    let head = |w: &[f64], bias: Option<&[f64]>| linear_forward(&lnf, w, bias, n, c, 1);
    let has = |name: &str| !param(name).is_empty();
    let values = has("v_head.summary.weight")
        .then(|| head(&param("v_head.summary.weight"), Some(&param("v_head.summary.bias"))));
    let rewards = has("score.weight").then(|| head(&param("score.weight"), None));
    ModelOutputs { logits, values, rewards }
}

/// PPO loss hyperparameters for the references (f64 mirrors of `kernels::ppo::PpoLossConfig`).
#[derive(Clone, Copy, Debug)]
pub struct PpoConfig {
    pub temperature: f64,
    pub cliprange: f64,
    pub cliprange_value: f64,
    pub vf_coef: f64,
    pub ent_coef: f64,
    /// β of the k3 KL term inside the loss.
    pub kl_coef: f64,
    /// GRPO's loss type `grpo`: each sequence's mean, then the mean over sequences (else one
    /// mean over all trained tokens).
    pub sequence_mean: bool,
}

/// What the PPO loss reference computes for a minibatch.
#[derive(Clone, Debug)]
pub struct PpoLoss {
    /// L, the weighted sum of ℓ_pg + β·k3 + c1·ℓ_v − c2·H over the trained tokens.
    pub loss: f64,
    /// ∂L/∂logits [rows, V] (zero rows where nothing is trained).
    pub dlogits: Vec<f64>,
    /// ∂L/∂values [rows] (zero without values).
    pub dvalues: Vec<f64>,
    /// In `kernels::ppo::STAT_NAMES` order: loss, pg_loss and vf_loss with the loss's weights,
    /// the rest means over the trained tokens.
    pub stats: [f64; 8],
}

/// The PPO loss of docs/design.md §4 on one minibatch, straight from the formulas. Row r of
/// `logits` [rows, V] and `values` [rows] predicts the token at r + 1; `inputs` [rows, 8] holds
/// per position (response_mask, old_logprob, old_value, advantage, return, ref_logprob, …; the
/// per-sequence token counts are recounted here from the mask). Without `values`, the
/// critic-free form (no value term). Ties between the clipped and unclipped terms count as
/// unclipped; clip passes its gradient on the closed range.
pub fn ppo_loss(
    logits: &[f64],
    tokens: &[u32],
    inputs: &[f64],
    values: Option<&[f64]>,
    seq: usize,
    v: usize,
    cfg: &PpoConfig,
) -> PpoLoss {
    let rows = tokens.len();
    let trained = |r: usize| r % seq + 1 < seq && inputs[(r + 1) * 8] != 0.0;
    let n = (0..rows).filter(|&r| trained(r)).count().max(1) as f64;
    let sequences = (rows / seq) as f64;
    let weight = |r: usize| {
        if cfg.sequence_mean {
            let first = r - r % seq;
            let n_i = (first..first + seq).filter(|&q| trained(q)).count() as f64;
            1.0 / (sequences * n_i)
        } else {
            1.0 / n
        }
    };
    let mut out = PpoLoss { loss: 0.0, dlogits: vec![0.0; rows * v], dvalues: vec![0.0; rows], stats: [0.0; 8] };
    for r in (0..rows).filter(|&r| trained(r)) {
        let w = weight(r);
        let z: Vec<f64> = logits[r * v..(r + 1) * v].iter().map(|l| l / cfg.temperature).collect();
        let lse = logsumexp_rows(&z, v)[0];
        let p: Vec<f64> = z.iter().map(|z| (z - lse).exp()).collect();
        let entropy = -p.iter().zip(&z).map(|(p, z)| p * (z - lse)).sum::<f64>();
        let a = tokens[r + 1] as usize;
        let logp = z[a] - lse;
        let at = (r + 1) * 8;
        let (old_logp, old_v, adv, ret, ref_logp) =
            (inputs[at + 1], inputs[at + 2], inputs[at + 3], inputs[at + 4], inputs[at + 5]);

        let ratio = (logp - old_logp).exp();
        let unclipped = -adv * ratio;
        let clipped = -adv * ratio.clamp(1.0 - cfg.cliprange, 1.0 + cfg.cliprange);
        let pg = unclipped.max(clipped);
        let mut dlogp = if unclipped >= clipped { unclipped } else { 0.0 };
        let (d, mut kl) = (ref_logp - logp, 0.0);
        if cfg.kl_coef != 0.0 {
            kl = d.exp() - d - 1.0;
            dlogp += cfg.kl_coef * (1.0 - d.exp());
        }

        let (mut vf, mut vf_clipped) = (0.0, 0.0);
        if let Some(values) = values {
            let val = values[r];
            let v_c = old_v + (val - old_v).clamp(-cfg.cliprange_value, cfg.cliprange_value);
            let (l1, l2) = ((val - ret).powi(2), (v_c - ret).powi(2));
            vf = 0.5 * l1.max(l2);
            vf_clipped = (l2 > l1) as u8 as f64;
            let inside = (val - old_v).abs() <= cfg.cliprange_value;
            out.dvalues[r] = cfg.vf_coef
                * w
                * if l1 >= l2 {
                    val - ret
                } else if inside {
                    v_c - ret
                } else {
                    0.0
                };
        }

        let dentropy = -cfg.ent_coef * w;
        for i in 0..v {
            let log_p = z[i] - lse;
            let onehot = if i == a { 1.0 } else { 0.0 };
            let dz = dlogp * w * (onehot - p[i]) - dentropy * p[i] * (log_p + entropy);
            out.dlogits[r * v + i] = dz / cfg.temperature;
        }
        let weighted = [pg + cfg.kl_coef * kl + cfg.vf_coef * vf - cfg.ent_coef * entropy, pg, vf];
        let token_means = [
            entropy,
            0.5 * (logp - old_logp).powi(2),
            ((ratio - 1.0).abs() > cfg.cliprange) as u8 as f64,
            vf_clipped,
            ratio,
        ];
        for (k, x) in weighted.into_iter().enumerate() {
            out.stats[k] += x * w;
        }
        for (k, x) in token_means.into_iter().enumerate() {
            out.stats[3 + k] += x / n;
        }
    }
    out.loss = out.stats[0];
    out
}

/// The critic-free advantage of each of `returns`' sequences, taken in groups of `group`
/// consecutive ones (docs/design.md §4): GRPO's (r − mean)/(std + 1e−4) with the unbiased std,
/// or r − mean when not `scaled`; RLOO's r − mean of the group's other returns when
/// `leave_one_out`.
pub fn group_advantages(returns: &[f64], group: usize, scaled: bool, leave_one_out: bool) -> Vec<f64> {
    returns
        .chunks(group)
        .flat_map(|g| {
            let k = group as f64;
            let mean = g.iter().sum::<f64>() / k;
            let std = (g.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (k - 1.0)).sqrt();
            g.iter().map(move |r| {
                if leave_one_out {
                    r - (g.iter().sum::<f64>() - r) / (k - 1.0)
                } else if scaled {
                    (r - mean) / (std + 1e-4)
                } else {
                    r - mean
                }
            })
        })
        .collect()
}

/// GAE over [B, T] with the response mask, written as TRL writes it: values and rewards zeroed
/// off the mask, a reverse loop with the value after the last position 0. Returns
/// (advantages, returns), both zero off the mask.
pub fn gae(rewards: &[f64], values: &[f64], mask: &[f64], t: usize, gamma: f64, lam: f64) -> (Vec<f64>, Vec<f64>) {
    let (mut adv, mut ret) = (vec![0.0; rewards.len()], vec![0.0; rewards.len()]);
    for row in (0..rewards.len()).step_by(t.max(1)) {
        let v = |j: usize| if j < t { values[row + j] * mask[row + j] } else { 0.0 };
        let mut last = 0.0;
        for j in (0..t).rev() {
            let m = mask[row + j];
            let delta = rewards[row + j] * m + gamma * v(j + 1) - v(j);
            last = m * (delta + gamma * lam * last);
            adv[row + j] = last;
            ret[row + j] = last + v(j);
        }
    }
    (adv, ret)
}

/// (kl, rewards) [B, T]: the masked per-token KL estimate (k1 = logp_old − logp_ref, or k3) and
/// −β·kl plus each sequence's score at its last masked-in position.
pub fn kl_rewards(
    logp_old: &[f64],
    logp_ref: &[f64],
    mask: &[f64],
    scores: &[f64],
    t: usize,
    beta: f64,
    k3: bool,
) -> (Vec<f64>, Vec<f64>) {
    let mut kl = vec![0.0; logp_old.len()];
    let mut rewards = vec![0.0; logp_old.len()];
    for (b, &score) in scores.iter().enumerate() {
        let mut last = None;
        for j in 0..t {
            let i = b * t + j;
            let log_ratio = logp_ref[i] - logp_old[i];
            let k = if k3 { log_ratio.exp() - 1.0 - log_ratio } else { -log_ratio };
            kl[i] = mask[i] * k;
            rewards[i] = -beta * kl[i];
            if mask[i] != 0.0 {
                last = Some(i);
            }
        }
        if let Some(i) = last {
            rewards[i] += score;
        }
    }
    (kl, rewards)
}

/// TRL's masked_whiten: (x − mean)/sqrt(var + 1e−8) over the masked-in entries, the variance
/// unbiased; zero off the mask; with `shift_mean` false the mean is added back.
pub fn masked_whiten(x: &[f64], mask: &[f64], shift_mean: bool) -> Vec<f64> {
    let count: f64 = mask.iter().sum();
    let mean = x.iter().zip(mask).map(|(x, m)| x * m).sum::<f64>() / count.max(1.0);
    let var = x.iter().zip(mask).map(|(x, m)| m * (x - mean).powi(2)).sum::<f64>() / (count - 1.0).max(1.0);
    x.iter()
        .zip(mask)
        .map(|(x, m)| {
            let w = (x - mean) / (var + 1e-8).sqrt();
            m * if shift_mean { w } else { w + mean }
        })
        .collect()
}

/// PCG hash (as `pcg` in sampling.wgsl).
pub fn pcg(v: u32) -> u32 {
    let state = v.wrapping_mul(747796405).wrapping_add(2891336453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
    (word >> 22) ^ word
}

/// The sampler's uniform number in [0, 1) for (seed, sample, step), bit for bit as the GPU's.
pub fn uniform_at(seed: u64, sample: u32, step: u32) -> f64 {
    let h = pcg(seed as u32 ^ pcg((seed >> 32) as u32 ^ pcg(sample ^ pcg(step))));
    (h >> 8) as f64 / 16777216.0
}

/// An order-preserving u32 key of an f32 (as `key_of` in sampling.wgsl).
fn sort_key(x: f32) -> u32 {
    let bits = x.to_bits();
    if bits & 0x8000_0000 != 0 { !bits } else { bits | 0x8000_0000 }
}

/// The tokens the sampler may draw from one row of logits, with their probabilities
/// (sampling.wgsl's definition): greedy is the lowest-index maximum; otherwise the tokens whose
/// logit is at least the k-th largest (top-k), then at least the largest threshold whose tail
/// holds top_p of that mass (top-p; ties at a threshold are kept), renormalised.
pub fn sampling_distribution(logits: &[f32], temperature: f32, top_k: usize, top_p: f32) -> Vec<(u32, f64)> {
    let max = logits.iter().cloned().fold(f32::MIN, f32::max);
    if temperature == 0.0 {
        return vec![(logits.iter().position(|&z| z == max).unwrap_or(0) as u32, 1.0)];
    }
    let keys: Vec<u32> = logits.iter().map(|&z| sort_key(z)).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let theta_k = if top_k > 0 && top_k < logits.len() { sorted[top_k - 1] } else { 0 };
    let w: Vec<f64> = logits.iter().map(|&z| ((z as f64 - max as f64) / temperature as f64).exp()).collect();
    let mass_from = |theta: u32| -> f64 { keys.iter().zip(&w).filter(|(k, _)| **k >= theta).map(|(_, w)| w).sum() };
    let total = mass_from(theta_k);
    let mut theta = theta_k;
    if top_p < 1.0 {
        sorted.dedup();
        theta = *sorted
            .iter()
            .find(|&&kappa| kappa >= theta_k && mass_from(kappa) >= top_p as f64 * total)
            .unwrap_or(&theta_k);
    }
    let kept = mass_from(theta);
    (0..logits.len()).filter(|&i| keys[i] >= theta).map(|i| (i as u32, w[i] / kept)).collect()
}

/// The token the sampler draws for uniform `u`: the first kept token (in index order) at which
/// the cumulative probability exceeds u.
pub fn sample_threshold(logits: &[f32], temperature: f32, top_k: usize, top_p: f32, u: f64) -> u32 {
    let dist = sampling_distribution(logits, temperature, top_k, top_p);
    let mut cum = 0.0;
    for &(i, p) in &dist {
        cum += p;
        if u < cum {
            return i;
        }
    }
    dist.last().map_or(0, |d| d.0)
}

/// Bradley–Terry over pairs of rows of rewards [2N, T] (row 2i chosen, 2i + 1 rejected), each
/// read at its last position where mask ≠ 0: (L = mean −log σ(r_c − r_r), ∂L/∂rewards [2N, T]).
pub fn bradley_terry(rewards: &[f64], mask: &[u32], t: usize) -> (f64, Vec<f64>) {
    let n = rewards.len() / t / 2;
    let last = |row: usize| (0..t).rev().map(|j| row * t + j).find(|&i| mask[i] != 0).unwrap_or(row * t);
    let mut grad = vec![0.0; rewards.len()];
    let mut loss = 0.0;
    for pair in 0..n {
        let (c, r) = (last(2 * pair), last(2 * pair + 1));
        let d = rewards[c] - rewards[r];
        loss += (1.0 + (-d).exp()).ln() / n as f64;
        let sig_neg = 1.0 / (1.0 + d.exp());
        grad[c] = -sig_neg / n as f64;
        grad[r] = sig_neg / n as f64;
    }
    (loss, grad)
}
