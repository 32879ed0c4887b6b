use crate::common::*;
use ppo_wgpu::gpu::{DType, Recorder};
use ppo_wgpu::kernels::cross_entropy::RowVariant;
use ppo_wgpu::kernels::ppo::{
    LossType, PpoLossConfig, PpoMinibatch, ROW_VARIANTS, STAT_NAMES, ppo_loss_fused_with_variant, ppo_loss_unfused,
    ppo_stats_reduce,
};
use ppo_wgpu::reference::{self, PpoConfig};

/// A minibatch of 3 sequences of T positions: row 0 left-padded with a short response and right
/// padding, row 1 a response to the end, row 2 nothing trained (an all-masked row).
#[derive(Clone)]
struct Case {
    seq: usize,
    v: usize,
    logits: Vec<f64>,
    tokens: Vec<u32>,
    inputs: Vec<f64>,
    values: Vec<f64>,
}

fn make_case(seq: usize, v: usize, temperature: f64, rng: &mut Rng) -> Case {
    let rows = 3 * seq;
    let mut logits = rng.normals(rows * v, 2.0);
    for r in 0..rows {
        logits[r * v + (r % v)] = -1e4; // a very negative logit in every row
    }
    // Never the very negative logit as the taken token: its log-prob (≈ −1e4) would carry an f32
    // rounding of ~1e-3, which the ratio exp(logp − old_logp) turns into a 1e-3 relative error.
    let tokens: Vec<u32> = (0..rows)
        .map(|i| {
            let t = rng.below(v as u32);
            if i > 0 && t as usize == (i - 1) % v { (t + 1) % v as u32 } else { t }
        })
        .collect();
    let values = rng.normals(rows, 1.0);
    let mask = |row: usize, j: usize| match row {
        0 => (j >= seq / 2 && j < seq - 2) as u8 as f64,
        1 => (j >= 2) as u8 as f64,
        _ => 0.0,
    };
    let mut inputs = vec![0.0; rows * 8];
    for i in 0..rows {
        let (row, j) = (i / seq, i % seq);
        // Old log-probs near the current ones, so that ratios fall both inside and outside
        // [1 − ε, 1 + ε]; old values within ±0.4 of the new, so that value clipping bites too.
        let old_logp = if j > 0 {
            let z: Vec<f64> = logits[(i - 1) * v..i * v].iter().map(|l| l / temperature).collect();
            reference::log_softmax(&z, v)[tokens[i] as usize] + (rng.uniform() - 0.5)
        } else {
            0.0
        };
        let old_value = if j > 0 { values[i - 1] + 0.8 * (rng.uniform() - 0.5) } else { 0.0 };
        // The reference within ±1 of the old log-prob, so k3 and its gradient are of order 1.
        let ref_logp = old_logp + 2.0 * (rng.uniform() - 0.5);
        let trained = (1..seq).filter(|&q| mask(row, q) != 0.0).count();
        let f = |x: f64| x as f32 as f64;
        inputs[i * 8..i * 8 + 7].copy_from_slice(&[
            mask(row, j),
            f(old_logp),
            f(old_value),
            f(rng.normal()),
            f(rng.normal()),
            f(ref_logp),
            if trained > 0 { f(1.0 / trained as f64) } else { 0.0 },
        ]);
    }
    Case { seq, v, logits, tokens, inputs, values }
}

fn count(case: &Case) -> usize {
    (0..case.values.len()).filter(|&r| r % case.seq + 1 < case.seq && case.inputs[(r + 1) * 8] != 0.0).count()
}

/// Which kernel computes the loss.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Form {
    /// PPO's fused form, with the value loss.
    Fused,
    /// The same, an invocation per row (another row layout).
    FusedSerial,
    /// The same, a subgroup per row (the third; an invocation per row without subgroups).
    FusedSubgroup,
    /// PPO's unfused twin.
    Unfused,
    /// The fused critic-free form (GRPO, RLOO): no values.
    CriticFree,
    /// The same, an invocation per row.
    CriticFreeSerial,
    /// The same, a subgroup per row.
    CriticFreeSubgroup,
}

impl Form {
    fn has_values(self) -> bool {
        !matches!(self, Form::CriticFree | Form::CriticFreeSerial | Form::CriticFreeSubgroup)
    }
}

/// Runs the loss kernel; returns (dlogits, dvalues, stats) (dvalues all zero without values).
fn run_gpu(case: &Case, cfg: &PpoLossConfig, form: Form) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let gpu = gpu();
    let rows = case.values.len();
    let logits = upload(&case.logits, &[rows, case.v]);
    let tokens = gpu.upload_u32(&[rows], &case.tokens).unwrap();
    let (inputs, values) = (upload(&case.inputs, &[rows, 8]), upload(&case.values, &[rows]));
    let (dvalues, token_stats, stats) = (zeros(&[rows]), zeros(&[rows, 8]), zeros(&[8]));
    let mb = PpoMinibatch {
        logits: &logits,
        tokens: &tokens,
        inputs: &inputs,
        values: form.has_values().then_some(&values),
        seq: case.seq,
        count: count(case),
        sequences: rows / case.seq,
    };
    let mut rec = Recorder::new(&gpu);
    let (workgroup, serial, subgroup) =
        (RowVariant::WorkgroupPerRow, RowVariant::InvocationPerRow, RowVariant::SubgroupPerRow);
    match form {
        Form::Fused => ppo_loss_fused_with_variant(&mut rec, workgroup, &mb, cfg, Some(&dvalues), &token_stats),
        Form::FusedSerial => ppo_loss_fused_with_variant(&mut rec, serial, &mb, cfg, Some(&dvalues), &token_stats),
        Form::FusedSubgroup => ppo_loss_fused_with_variant(&mut rec, subgroup, &mb, cfg, Some(&dvalues), &token_stats),
        Form::CriticFree => ppo_loss_fused_with_variant(&mut rec, workgroup, &mb, cfg, None, &token_stats),
        Form::CriticFreeSerial => ppo_loss_fused_with_variant(&mut rec, serial, &mb, cfg, None, &token_stats),
        Form::CriticFreeSubgroup => ppo_loss_fused_with_variant(&mut rec, subgroup, &mb, cfg, None, &token_stats),
        Form::Unfused => {
            let (logp, scalars) =
                (gpu.tensor(&[rows, case.v], DType::F32).unwrap(), gpu.tensor(&[rows, 4], DType::F32).unwrap());
            ppo_loss_unfused(&mut rec, &mb, cfg, &dvalues, &token_stats, &logp, &scalars)
        }
    }
    .unwrap();
    ppo_stats_reduce(&mut rec, &stats, &token_stats).unwrap();
    rec.submit();
    (download(&logits), download(&dvalues), download(&stats))
}

fn reference_config(cfg: &PpoLossConfig) -> PpoConfig {
    PpoConfig {
        temperature: cfg.temperature as f64,
        cliprange: cfg.cliprange as f64,
        cliprange_value: cfg.cliprange_value as f64,
        vf_coef: cfg.vf_coef as f64,
        ent_coef: cfg.ent_coef as f64,
        kl_coef: cfg.kl_coef as f64,
        sequence_mean: cfg.loss_type == LossType::Sequence,
    }
}

/// Checks `forms` of the loss kernel against the CPU reference on a ragged case, and with
/// `with_fd` the first form's gradient against finite differences of the reference loss.
fn check(seq: usize, v: usize, cfg: PpoLossConfig, seed: u64, forms: &[Form], with_fd: bool) {
    let mut rng = Rng::new(seed);
    let case = make_case(seq, v, cfg.temperature as f64, &mut rng);
    let rcfg = reference_config(&cfg);
    for &form in forms {
        let values = form.has_values().then_some(&case.values[..]);
        let want = reference::ppo_loss(&case.logits, &case.tokens, &case.inputs, values, seq, v, &rcfg);
        let clipfrac = want.stats[5];
        assert!(clipfrac > 0.05 && clipfrac < 0.95, "the case should clip some ratios and not others: {clipfrac}");
        assert!(values.is_none() || want.stats[6] > 0.0, "the case should clip some values");
        let what = format!("{form:?} loss T={seq} V={v} τ={} β={} {:?}", cfg.temperature, cfg.kl_coef, cfg.loss_type);
        let (dlogits, dvalues, stats) = run_gpu(&case, &cfg, form);
        // Softmax over V in f32 times coefficients of order 1/N.
        assert_close(&format!("{what} dlogits"), &dlogits, &want.dlogits, 1e-7, 1e-4);
        assert_close(&format!("{what} dvalues"), &dvalues, &want.dvalues, 1e-7, 1e-5);
        for (k, name) in STAT_NAMES.iter().enumerate() {
            assert_close(&format!("{what} {name}"), &stats[k..k + 1], &want.stats[k..k + 1], 1e-5, 1e-4);
        }
        if with_fd && form == forms[0] {
            let rows = case.values.len();
            let loss_logits =
                |l: &[f64]| reference::ppo_loss(l, &case.tokens, &case.inputs, values, seq, v, &rcfg).loss;
            // Finite differences at coordinates of trained rows (untrained rows have no gradient).
            let trained_rows: Vec<usize> =
                (0..rows).filter(|r| want.dlogits[r * v..(r + 1) * v].iter().any(|g| *g != 0.0)).collect();
            let coords: Vec<usize> = (0..24)
                .map(|_| trained_rows[rng.below(trained_rows.len() as u32) as usize] * v + rng.below(v as u32) as usize)
                .collect();
            let fd = finite_differences(loss_logits, &case.logits, &coords, 1e-4);
            let got: Vec<f64> = coords.iter().map(|&i| dlogits[i]).collect();
            assert_close(&format!("{what} dlogits vs finite differences"), &got, &fd, 1e-6, 1e-3);
            if values.is_some() {
                let loss_values = |x: &[f64]| {
                    reference::ppo_loss(&case.logits, &case.tokens, &case.inputs, Some(x), seq, v, &rcfg).loss
                };
                let fd = finite_differences(loss_values, &case.values, &trained_rows, 1e-5);
                let got: Vec<f64> = trained_rows.iter().map(|&r| dvalues[r]).collect();
                assert_close(&format!("{what} dvalues vs finite differences"), &got, &fd, 1e-6, 1e-3);
            }
        }
    }
}

const PPO_FORMS: &[Form] = &[Form::Fused, Form::FusedSerial, Form::FusedSubgroup, Form::Unfused];
const CRITIC_FREE_FORMS: &[Form] = &[Form::CriticFree, Form::CriticFreeSerial, Form::CriticFreeSubgroup];

#[test]
fn ppo_loss_unaligned_vocab_with_entropy_and_temperature() {
    check(12, 53, PpoLossConfig { temperature: 0.7, ent_coef: 0.05, ..Default::default() }, 70, PPO_FORMS, true);
}

/// GRPO's form: no value term, the k3 KL inside the loss, each sequence's mean then the mean
/// over sequences (the rows have different numbers of trained tokens, one none, so the weights
/// differ).
#[test]
fn critic_free_loss_grpo_sequence_mean_with_kl() {
    let cfg = PpoLossConfig { temperature: 0.9, kl_coef: 0.3, loss_type: LossType::Sequence, ..Default::default() };
    check(12, 53, cfg, 76, CRITIC_FREE_FORMS, true);
}

/// RLOO's (and GRPO dapo's) form: a token mean, no KL term.
#[test]
fn critic_free_loss_token_mean() {
    check(16, 512, PpoLossConfig { ent_coef: 0.02, ..Default::default() }, 77, CRITIC_FREE_FORMS, true);
}

/// PPO's form with GRPO's weighting and a KL term: the value loss takes the same weights.
#[test]
fn ppo_loss_sequence_mean_with_kl() {
    let cfg = PpoLossConfig { kl_coef: 0.1, loss_type: LossType::Sequence, ..Default::default() };
    check(10, 40, cfg, 78, &[Form::Fused, Form::FusedSerial, Form::FusedSubgroup], true);
}

#[test]
fn ppo_loss_tiny_vocab_trl_defaults() {
    check(16, 512, PpoLossConfig::default(), 71, PPO_FORMS, true);
}

#[test]
fn ppo_loss_gpt2_vocab() {
    check(4, 50257, PpoLossConfig { ent_coef: 0.01, ..Default::default() }, 72, PPO_FORMS, false);
    // GPT-2's vocabulary as the GPU model pads it (a multiple of 4: the vec4 row walks).
    let grpo = PpoLossConfig { kl_coef: 0.04, loss_type: LossType::Sequence, ..Default::default() };
    check(4, 50304, grpo, 80, CRITIC_FREE_FORMS, false);
}

#[test]
fn ppo_loss_value_tie_at_the_clip_boundary_counts_as_unclipped() {
    // One trained token: v − v_old = ε_v exactly, so v_c = v and the two value terms tie; the
    // gradient is that of the unclipped term, c1·(v − R)/N, not zero.
    let (seq, v) = (2, 8);
    let mut case = make_case(seq, v, 1.0, &mut Rng::new(73));
    case.inputs = vec![0.0; 3 * seq * 8];
    case.inputs[8..13].copy_from_slice(&[1.0, -2.0, 0.25, 1.0, 2.0]); // position 1 of row 0
    case.values[0] = 0.5;
    let cfg = PpoLossConfig { cliprange_value: 0.25, ..Default::default() };
    let (_, dvalues, stats) = run_gpu(&case, &cfg, Form::Fused);
    assert_close("dvalues at a value tie", &dvalues[..1], &[0.1 * (0.5 - 2.0)], 1e-7, 1e-6); // c1·(v − R)/N, N = 1
    assert_eq!(stats[6], 0.0, "a tie is not a clipped value");
}

#[test]
fn ppo_loss_with_nothing_trained_is_zero_everywhere() {
    let (seq, v) = (6, 30);
    let mut case = make_case(seq, v, 1.0, &mut Rng::new(74));
    for i in 0..case.values.len() {
        case.inputs[i * 8] = 0.0;
    }
    for form in [
        Form::Fused,
        Form::FusedSerial,
        Form::FusedSubgroup,
        Form::CriticFree,
        Form::CriticFreeSerial,
        Form::CriticFreeSubgroup,
    ] {
        let (dlogits, dvalues, stats) = run_gpu(&case, &PpoLossConfig { kl_coef: 0.1, ..Default::default() }, form);
        assert!(
            dlogits.iter().chain(&dvalues).chain(&stats).all(|&x| x == 0.0),
            "{form:?}: an all-masked minibatch must give zeros"
        );
    }
}

#[test]
fn logprob_entropy_matches_reference() {
    use ppo_wgpu::kernels::ppo::logprob_entropy_with_variant;
    let mut rng = Rng::new(75);
    let cases = [(7, 53, 0.7), (16, 512, 1.0), (2, 50257, 1.3), (2, 50304, 0.8)];
    for ((seq, v, temperature), variant) in cases.into_iter().flat_map(|case| ROW_VARIANTS.map(|(v, _)| (case, v))) {
        let case = make_case(seq, v, temperature, &mut rng);
        let rows = case.values.len();
        let gpu = gpu();
        let (logits, tokens) = (upload(&case.logits, &[rows, v]), gpu.upload_u32(&[rows], &case.tokens).unwrap());
        let (logp, entropy) = (upload(&vec![7.0; rows], &[rows]), upload(&vec![7.0; rows], &[rows]));
        let mut rec = Recorder::new(&gpu);
        logprob_entropy_with_variant(&mut rec, variant, &logp, &entropy, &logits, &tokens, seq, temperature as f32)
            .unwrap();
        rec.submit();
        let (want_lp, want_h) = reference::logprob_entropy(&case.logits, &case.tokens, seq, v, temperature);
        let what = format!("logprob_entropy {variant:?} T={seq} V={v} τ={temperature}");
        assert_close(&format!("{what} log-probs"), &download(&logp), &want_lp, 1e-5, 1e-5);
        assert_close(&format!("{what} entropy"), &download(&entropy), &want_h, 1e-5, 1e-5);
        assert_close(&format!("{what} logits untouched"), &download(&logits), &case.logits, 0.0, 0.0);
    }
}

/// The GPU model's logits are Vp wide, the padded columns masked (kernels::padded_vocab): every
/// form of the loss on them gives the same loss, statistics and gradient as on the V real
/// columns alone, and exactly 0 gradient in the padded columns (with an entropy bonus and a KL
/// term, whose gradients also pass through the whole distribution).
#[test]
fn ppo_loss_over_a_padded_vocabulary_equals_the_unpadded_loss() {
    use ppo_wgpu::kernels::padded_vocab::MASKED_LOGIT;
    let (seq, v, vp) = (9, 53, 64);
    let cfg = PpoLossConfig { temperature: 0.7, ent_coef: 0.05, kl_coef: 0.1, ..Default::default() };
    let case = make_case(seq, v, cfg.temperature as f64, &mut Rng::new(79));
    let padded_logits: Vec<f64> = case
        .logits
        .chunks(v)
        .flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(MASKED_LOGIT as f64, vp - v)))
        .collect();
    let padded = Case { v: vp, logits: padded_logits, ..case.clone() };
    for &form in PPO_FORMS.iter().chain(CRITIC_FREE_FORMS) {
        let what = format!("{form:?} over V={v} padded to {vp}");
        let (dlogits, dvalues, stats) = run_gpu(&case, &cfg, form);
        let (padded_dlogits, padded_dvalues, padded_stats) = run_gpu(&padded, &cfg, form);
        let real: Vec<f64> = padded_dlogits.chunks(vp).flat_map(|row| row[..v].to_vec()).collect();
        // The padded rows (V a multiple of 4) are walked by vec4s, the others by scalars: the
        // same sums in another order, so the tolerance of the comparisons with the reference.
        assert_close(&format!("{what}: dlogits"), &real, &dlogits, 1e-7, 1e-4);
        assert!(padded_dlogits.chunks(vp).all(|row| row[v..].iter().all(|&g| g == 0.0)), "{what}: padded gradient");
        assert_close(&format!("{what}: dvalues"), &padded_dvalues, &dvalues, 1e-9, 1e-5);
        assert_close(&format!("{what}: stats"), &padded_stats, &stats, 1e-6, 1e-5);
    }
}
