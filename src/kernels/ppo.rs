//! The fused PPO loss (forward and gradient) in its two forms (with the value loss for PPO,
//! critic-free for GRPO and RLOO), its unfused twin for comparison, and the minibatch
//! statistics. Shaders: `ppo_loss.wgsl` and `ppo_loss_subgroup.wgsl`; docs/design.md §4 is the
//! math.

use super::cross_entropy::{self, RowVariant, log_softmax_forward};
use super::{as_matrix, bind, bind_u32, expect_len, groups, row_ranges};
use crate::error::{Result, ensure_shape};
use crate::gpu::{Gpu, Recorder, Shader, Tensor, Work, choose_by_measurement, matches_reference, seconds_per_call};
use std::sync::Arc;

pub const SHADER: Shader =
    Shader { name: "ppo_loss", source: include_str!("../../shaders/ppo_loss.wgsl"), includes: &[] };

/// The subgroup-per-row entries: a module of their own, since it compiles only on adapters with
/// subgroups; everything else comes from ppo_loss.wgsl, included after it.
pub const SUBGROUP_SHADER: Shader = Shader {
    name: "ppo_loss_subgroup",
    source: include_str!("../../shaders/ppo_loss_subgroup.wgsl"),
    includes: &[include_str!("../../shaders/ppo_loss.wgsl")],
};

/// The unfused twin: its own entry points, sharing ppo_loss.wgsl's parameters and row loss.
pub const UNFUSED_SHADER: Shader = Shader {
    name: "ppo_unfused",
    source: include_str!("../../shaders/ppo_unfused.wgsl"),
    includes: &[include_str!("../../shaders/ppo_loss.wgsl")],
};

/// Invocations per workgroup (`WG` in the shader).
pub const WG: usize = 64;
/// ppo_stats_reduce: invocations in its one workgroup (`WG_STATS` in the shader).
pub const WG_STATS: usize = 256;

/// Columns of the per-token input block [rows, 8]: response_mask, old_logprob, old_value,
/// advantage, return, ref_logprob, 1/n_i (n_i: the trained tokens of the token's sequence), 0.
pub const INPUT_COLUMNS: usize = 8;
/// Names of the statistics `ppo_stats_reduce` returns, in order.
pub const STAT_NAMES: [&str; 8] =
    ["loss", "pg_loss", "vf_loss", "entropy", "approx_kl", "clipfrac", "vf_clipfrac", "ratio"];

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    row_offset: u32,
    seq: u32,
    v: u32,
    inv_temperature: f32,
    cliprange: f32,
    cliprange_value: f32,
    vf_coef: f32,
    ent_coef: f32,
    inv_count: f32,
    kl_coef: f32,
    inv_sequences: f32,
    sequence_mean: u32,
    rows_per_group: u32,
}

/// The ways the PPO loss kernels and the rollout's log-prob rows walk rows of the vocabulary
/// (family `ppo_rows`), as `PPO_WGPU_PPO_ROWS` and the cache spell them, for rows of at most
/// `cross_entropy::SERIAL_MAX_COLUMNS` logits: the cross-entropy kernels' three walks.
pub const ROW_VARIANTS: [(RowVariant, &str); 3] = cross_entropy::VARIANTS;

/// The walks of longer rows (GPT-2's vocabulary; family `ppo_rows_long`, forced with
/// `PPO_WGPU_PPO_ROWS_LONG`), as the cross-entropy kernels': an invocation alone would pass
/// llvmpipe's loop limit there.
pub const LONG_ROW_VARIANTS: [(RowVariant, &str); 2] = cross_entropy::LONG_VARIANTS;

/// The row walk of `ppo_loss_fused` and `logprob_entropy` over rows of `v` logits: `row_variant`,
/// or past SERIAL_MAX_COLUMNS `long_row_variant`.
pub fn row_variant_for(gpu: &Arc<Gpu>, v: usize) -> Result<RowVariant> {
    if v <= cross_entropy::SERIAL_MAX_COLUMNS { row_variant(gpu) } else { long_row_variant(gpu) }
}

/// The walk of rows of at most SERIAL_MAX_COLUMNS logits: chosen by measurement on first use and
/// cached (family `ppo_rows`, forced with PPO_WGPU_PPO_ROWS=workgroup-per-row|
/// invocation-per-row|subgroup-per-row). Measured on these kernels themselves at the rows they
/// run: the cross-entropy family's figures, whose shapes include rows of 16384, ranked the walks
/// the other way round in some fresh measurements on lavapipe, where these kernels then ran 4–6×
/// slower.
pub fn row_variant(gpu: &Arc<Gpu>) -> Result<RowVariant> {
    choose_by_measurement(gpu, "ppo_rows", &ROW_VARIANTS, "GB/s", |gpu, variant| {
        // A small model's minibatch (2048 rows of 512) and a wider vocabulary (512 rows of 4096).
        measure_rows(gpu, variant, &[203, 204], &[(2048, 512), (512, 4096)])
    })
}

/// The walk of longer rows: chosen by measurement (family `ppo_rows_long`) at GPT-2's padded
/// vocabulary, 64 rows of 50304.
pub fn long_row_variant(gpu: &Arc<Gpu>) -> Result<RowVariant> {
    choose_by_measurement(gpu, "ppo_rows_long", &LONG_ROW_VARIANTS, "GB/s", |gpu, variant| {
        measure_rows(gpu, variant, &[cross_entropy::SERIAL_MAX_COLUMNS + 4], &[(64, 50304)])
    })
}

/// A row walk's GB/s over the log-prob rows and the fused PPO loss at each of `shapes` (rows, V),
/// after a check of the log-prob rows against the CPU reference at each vocabulary of `checks`
/// (ragged sequences; None if one fails).
fn measure_rows(
    gpu: &Arc<Gpu>,
    variant: RowVariant,
    checks: &[usize],
    shapes: &[(usize, usize)],
) -> Result<Option<f64>> {
    if variant == RowVariant::SubgroupPerRow && !gpu.has_subgroups() {
        return Ok(None); // it would run invocation-per-row: nothing of its own to measure
    }
    let mut rng = crate::rng::Rng::new(19);
    let f32s = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
    for &v in checks {
        let (seq, temperature) = (7, 0.7);
        let rows = 3 * seq;
        let logits = rng.normals(rows * v, 2.0);
        let tokens: Vec<u32> = (0..rows).map(|r| (r * 37 % v) as u32).collect();
        let (t_logits, t_tokens) = (gpu.upload(&[rows, v], &f32s(&logits))?, gpu.upload_u32(&[rows], &tokens)?);
        let (logp, entropy) = (gpu.upload(&[rows], &vec![0.0; rows])?, gpu.upload(&[rows], &vec![0.0; rows])?);
        let mut rec = Recorder::new(gpu);
        logprob_entropy_with_variant(&mut rec, variant, &logp, &entropy, &t_logits, &t_tokens, seq, temperature)?;
        rec.submit();
        let (want_logp, want_entropy) = crate::reference::logprob_entropy(&logits, &tokens, seq, v, temperature as f64);
        if !matches_reference(&gpu.download(&logp)?, &want_logp)
            || !matches_reference(&gpu.download(&entropy)?, &want_entropy)
        {
            return Ok(None);
        }
    }
    let (mut bytes, mut seconds) = (0.0, 0.0);
    for &(rows, v) in shapes {
        let seq = 64;
        let logits = gpu.upload(&[rows, v], &f32s(&rng.normals(rows * v, 2.0)))?;
        let tokens = gpu.upload_u32(&[rows], &(0..rows).map(|r| (r * 37 % v) as u32).collect::<Vec<u32>>())?;
        // Every position trained (response_mask 1), the rest of the inputs 0.
        let inputs: Vec<f32> = (0..rows * INPUT_COLUMNS).map(|i| (i % INPUT_COLUMNS == 0) as u8 as f32).collect();
        let inputs = gpu.upload(&[rows, INPUT_COLUMNS], &inputs)?;
        let zeros = || gpu.upload(&[rows], &vec![0.0; rows]);
        let (values, dvalues, logp, entropy) = (zeros()?, zeros()?, zeros()?, zeros()?);
        let stats = gpu.upload(&[rows, 8], &vec![0.0; rows * 8])?;
        let mb = PpoMinibatch {
            logits: &logits,
            tokens: &tokens,
            inputs: &inputs,
            values: Some(&values),
            seq,
            count: rows,
            sequences: rows / seq,
        };
        let cfg = PpoLossConfig::default();
        // The loss overwrites the logits with their gradient: the timed calls go on reading
        // what the previous call left, which costs the same.
        seconds += seconds_per_call(gpu, |rec| {
            logprob_entropy_with_variant(rec, variant, &logp, &entropy, &logits, &tokens, seq, 1.0)?;
            ppo_loss_fused_with_variant(rec, variant, &mb, &cfg, Some(&dvalues), &stats)
        })?;
        bytes += (4 * 4 * rows * v) as f64; // the log-prob rows read the logits once, the loss twice and writes them
    }
    Ok(Some(bytes / seconds / 1e9))
}

/// How the per-token losses average into the minibatch's loss L.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossType {
    /// A mean over the minibatch's trained tokens (PPO, RLOO, and GRPO's loss type `dapo`).
    Token,
    /// Each sequence's mean over its tokens, then the mean over the sequences (GRPO's loss type
    /// `grpo`).
    Sequence,
}

/// The hyperparameters that shape the loss (TRL's names and defaults).
#[derive(Clone, Copy, Debug)]
pub struct PpoLossConfig {
    /// The sampling temperature of the rollout: log-probs are those of softmax(logits/τ).
    pub temperature: f32,
    /// ε of the clipped surrogate.
    pub cliprange: f32,
    /// ε_v of the clipped value loss.
    pub cliprange_value: f32,
    /// c1, the value loss coefficient.
    pub vf_coef: f32,
    /// c2, the entropy bonus coefficient.
    pub ent_coef: f32,
    /// β of the k3 KL to the reference inside the loss (GRPO; 0 for PPO and RLOO, whose KL
    /// penalty is in the rewards).
    pub kl_coef: f32,
    pub loss_type: LossType,
}

impl Default for PpoLossConfig {
    fn default() -> Self {
        PpoLossConfig {
            temperature: 1.0,
            cliprange: 0.2,
            cliprange_value: 0.2,
            vf_coef: 0.1,
            ent_coef: 0.0,
            kl_coef: 0.0,
            loss_type: LossType::Token,
        }
    }
}

/// One minibatch as the loss kernels read it. Positions are [B, T] flattened to rows = B·T;
/// row r's logits and value predict the token at r + 1, whose inputs sit at entry r + 1.
pub struct PpoMinibatch<'a> {
    /// [rows, V]; overwritten with ∂L/∂logits.
    pub logits: &'a Tensor,
    /// u32 [rows]: the sequences' tokens.
    pub tokens: &'a Tensor,
    /// [rows, 8] per position: see `INPUT_COLUMNS`.
    pub inputs: &'a Tensor,
    /// [rows]: the value head's output at each position (PPO; None for the critic-free form).
    pub values: Option<&'a Tensor>,
    /// T, positions per sequence.
    pub seq: usize,
    /// N, the number of trained tokens of the whole minibatch (response_mask = 1 at positions
    /// ≥ 1), which may be larger than these rows (a micro-batch of it).
    pub count: usize,
    /// S, the number of sequences of the whole minibatch.
    pub sequences: usize,
}

impl PpoMinibatch<'_> {
    fn check(&self, dvalues: Option<&Tensor>, token_stats: &Tensor) -> Result<(usize, usize)> {
        let (rows, v) = as_matrix(self.logits);
        ensure_shape(self.seq > 0 && rows % self.seq == 0, || {
            format!("PPO loss: {rows} rows are not whole sequences of {}", self.seq)
        })?;
        expect_len(self.tokens, rows, "PPO tokens")?;
        expect_len(self.inputs, rows * INPUT_COLUMNS, "PPO inputs")?;
        match (self.values, dvalues) {
            (Some(values), Some(dvalues)) => {
                expect_len(values, rows, "PPO values")?;
                expect_len(dvalues, rows, "PPO dvalues")?;
            }
            (values, dvalues) => ensure_shape(values.is_none() && dvalues.is_none(), || {
                "PPO loss: the values and their gradient come together".into()
            })?,
        }
        expect_len(token_stats, rows * 8, "PPO token statistics")?;
        Ok((rows, v))
    }

    fn params(&self, rows: usize, row_offset: usize, v: usize, cfg: &PpoLossConfig) -> Params {
        Params {
            rows: rows as u32,
            row_offset: row_offset as u32,
            seq: self.seq as u32,
            v: v as u32,
            inv_temperature: 1.0 / cfg.temperature,
            cliprange: cfg.cliprange,
            cliprange_value: cfg.cliprange_value,
            vf_coef: cfg.vf_coef,
            ent_coef: cfg.ent_coef,
            inv_count: 1.0 / self.count.max(1) as f32,
            kl_coef: cfg.kl_coef,
            inv_sequences: 1.0 / self.sequences.max(1) as f32,
            sequence_mean: (cfg.loss_type == LossType::Sequence) as u32,
            rows_per_group: 0,
        }
    }
}

/// The fused kernel: per row, one pass for log-softmax, the taken token's log-prob and the
/// entropy, then one pass writing ∂L/∂logits in place. Also writes token_stats [rows, 8] for
/// `ppo_stats_reduce`, and with a value head (`mb.values`) dvalues [rows] = ∂L/∂values (PPO's
/// form; without one, the critic-free form has no value term and `dvalues` must be None).
pub fn ppo_loss_fused(
    rec: &mut Recorder,
    mb: &PpoMinibatch,
    cfg: &PpoLossConfig,
    dvalues: Option<&Tensor>,
    token_stats: &Tensor,
) -> Result<()> {
    let variant = row_variant_for(rec.gpu(), as_matrix(mb.logits).1)?;
    ppo_loss_fused_with_variant(rec, variant, mb, cfg, dvalues, token_stats)
}

/// As `ppo_loss_fused`, with the row walk named (a workgroup, an invocation or a subgroup per
/// row; by default the adapter's choice, `row_variant_for`).
pub fn ppo_loss_fused_with_variant(
    rec: &mut Recorder,
    variant: RowVariant,
    mb: &PpoMinibatch,
    cfg: &PpoLossConfig,
    dvalues: Option<&Tensor>,
    token_stats: &Tensor,
) -> Result<()> {
    let (rows, v) = mb.check(dvalues, token_stats)?;
    let gpu = rec.gpu().clone();
    for (r0, n) in row_ranges(&gpu, rows, v) {
        let logits = mb.logits.view(&gpu, r0 * v, &[n, v])?;
        let mut p = mb.params(n, r0, v, cfg);
        let [logits1, logits4] = cross_entropy::row_bindings(rec, &logits, v, 0)?;
        let mut b = vec![
            bind(1, &logits1),
            bind(13, &logits4),
            bind_u32(2, mb.tokens),
            bind(3, mb.inputs),
            bind(6, token_stats),
        ];
        let entry = match (mb.values, dvalues) {
            (Some(values), Some(dvalues)) => {
                b.extend([bind(4, values), bind(5, dvalues)]);
                "ppo_loss_fused"
            }
            _ => "critic_free_loss_fused",
        };
        // The row of logits read twice and its gradient written over it; the per-token inputs
        // and statistics.
        let work = Work::floats(3 * n * v + n * (INPUT_COLUMNS + 8 + 3));
        let (shader, entry, grid, rows_per_group) =
            cross_entropy::row_launch(&gpu, variant, [&SHADER, &SUBGROUP_SHADER], entry, n, v);
        p.rows_per_group = rows_per_group;
        rec.dispatch(shader, &entry, &cross_entropy::vec4_walk(v), bytemuck::bytes_of(&p), &b, grid, work)?;
    }
    Ok(())
}

/// The same results as `ppo_loss_fused` from five kernels (log-softmax, gather, entropy, loss,
/// gradient), the way an unfused framework computes them (PPO's form: `mb.values` is needed).
/// `logp` [rows, V] and `row_scalars` [rows, 4] are scratch. For benches and tests; the trainer
/// uses the fused kernel.
pub fn ppo_loss_unfused(
    rec: &mut Recorder,
    mb: &PpoMinibatch,
    cfg: &PpoLossConfig,
    dvalues: &Tensor,
    token_stats: &Tensor,
    logp: &Tensor,
    row_scalars: &Tensor,
) -> Result<()> {
    let (rows, v) = mb.check(Some(dvalues), token_stats)?;
    let values = mb.values.expect("check() saw values beside dvalues");
    expect_len(logp, rows * v, "PPO log-softmax scratch")?;
    expect_len(row_scalars, rows * 4, "PPO row scalars")?;
    let gpu = rec.gpu().clone();
    let p = mb.params(rows, 0, v, cfg);
    let p = bytemuck::bytes_of(&p);
    let per_row = [groups(rows, WG) as u32, 1, 1];
    log_softmax_forward(rec, logp, mb.logits, cfg.temperature)?;
    rec.dispatch(
        &UNFUSED_SHADER,
        "ppo_unfused_gather",
        &[],
        p,
        &[bind_u32(2, mb.tokens), bind(3, mb.inputs), bind(9, logp), bind(10, row_scalars)],
        per_row,
        Work::floats(rows * (INPUT_COLUMNS + 2)),
    )?;
    rec.dispatch(
        &UNFUSED_SHADER,
        "ppo_unfused_entropy",
        &[],
        p,
        &[bind(9, logp), bind(10, row_scalars)],
        gpu.grid(rows),
        Work::floats(rows * v + rows),
    )?;
    let b = [bind(3, mb.inputs), bind(4, values), bind(5, dvalues), bind(6, token_stats), bind(10, row_scalars)];
    rec.dispatch(
        &UNFUSED_SHADER,
        "ppo_unfused_loss",
        &[],
        p,
        &b,
        per_row,
        Work::floats(rows * (INPUT_COLUMNS + 8 + 6)),
    )?;
    let b = [bind(1, mb.logits), bind_u32(2, mb.tokens), bind(9, logp), bind(10, row_scalars)];
    rec.dispatch(&UNFUSED_SHADER, "ppo_unfused_grad", &[], p, &b, gpu.grid(rows), Work::floats(2 * rows * v + 4 * rows))
}

/// stats [8] = the minibatch means named by `STAT_NAMES`, from token_stats [rows, 8].
pub fn ppo_stats_reduce(rec: &mut Recorder, stats: &Tensor, token_stats: &Tensor) -> Result<()> {
    expect_len(stats, 8, "PPO statistics")?;
    let rows = token_stats.len() / 8;
    let p = Params { rows: rows as u32, ..Default::default() };
    rec.dispatch(
        &SHADER,
        "ppo_stats_reduce",
        &[],
        bytemuck::bytes_of(&p),
        &[bind(7, token_stats), bind(8, stats)],
        [1, 1, 1],
        Work::floats(rows * 8 + 8),
    )
}

/// The fused log-softmax / gather / entropy alone, for rollouts: for each row r of logits
/// [rows, V] that predicts a token of its sequence (of `seq` positions), logprobs[r + 1] =
/// log softmax(logits_r/τ)[tokens[r + 1]] and entropy[r + 1] = H(softmax(logits_r/τ)); the first
/// position of each sequence gets 0. One read of each row; the logits are left as they are.
pub fn logprob_entropy(
    rec: &mut Recorder,
    logprobs: &Tensor,
    entropy: &Tensor,
    logits: &Tensor,
    tokens: &Tensor,
    seq: usize,
    temperature: f32,
) -> Result<()> {
    let variant = row_variant_for(rec.gpu(), as_matrix(logits).1)?;
    logprob_entropy_with_variant(rec, variant, logprobs, entropy, logits, tokens, seq, temperature)
}

/// As `logprob_entropy`, with the row layout named.
#[allow(clippy::too_many_arguments)]
pub fn logprob_entropy_with_variant(
    rec: &mut Recorder,
    variant: RowVariant,
    logprobs: &Tensor,
    entropy: &Tensor,
    logits: &Tensor,
    tokens: &Tensor,
    seq: usize,
    temperature: f32,
) -> Result<()> {
    let (rows, v) = as_matrix(logits);
    ensure_shape(seq > 0 && rows % seq == 0, || format!("log-probs: {rows} rows are not whole sequences of {seq}"))?;
    for (t, what) in [(tokens, "tokens"), (logprobs, "log-probs"), (entropy, "entropies")] {
        expect_len(t, rows, what)?;
    }
    let gpu = rec.gpu().clone();
    for (r0, n) in row_ranges(&gpu, rows, v) {
        let slice = logits.view(&gpu, r0 * v, &[n, v])?;
        let (shader, entry, grid, rows_per_group) =
            cross_entropy::row_launch(&gpu, variant, [&SHADER, &SUBGROUP_SHADER], "logprob_entropy_rows", n, v);
        let p = Params {
            rows: n as u32,
            row_offset: r0 as u32,
            seq: seq as u32,
            v: v as u32,
            inv_temperature: 1.0 / temperature,
            rows_per_group,
            ..Default::default()
        };
        let [slice1, slice4] = cross_entropy::row_bindings(rec, &slice, v, 0)?;
        let b = [bind(1, &slice1), bind(13, &slice4), bind_u32(2, tokens), bind(11, logprobs), bind(12, entropy)];
        let work = Work::floats(n * v + 3 * n);
        rec.dispatch(shader, &entry, &cross_entropy::vec4_walk(v), bytemuck::bytes_of(&p), &b, grid, work)?;
    }
    Ok(())
}
