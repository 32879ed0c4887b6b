//! The GPT-2 model on the GPU: parameters in one flat buffer, activations kept for the
//! backward, and `forward` / `backward` as readable lists of kernel calls in the order of the
//! math (llm.c's `gpt2_forward` / `gpt2_backward` are the model).
//!
//! Shapes (B = batch, T = sequence, C = channels, V = vocabulary, Vp = V padded to a multiple
//! of 64 (`GptConfig::padded_vocab_size`), NH = heads, L = layers):
//!   wte [Vp, C] (rows V.. zero; a checkpoint holds [V, C]), wpe [maxT, C]; per layer ln_1/ln_2 [C], c_attn [C, 3C] + [3C],
//!   attn.c_proj [C, C] + [C], c_fc [C, 4C] + [4C], mlp.c_proj [4C, C] + [C]; ln_f [C];
//!   value head v_head.summary [1, C] + [1]; reward head score [1, C].

use super::checkpoint::Checkpoint;
use super::config::{GptConfig, Heads, ParamSpec};
use crate::error::{Error, Result, ensure_shape};
use crate::gpu::{DType, Gpu, MatmulVariant, Recorder, Tensor};
use crate::kernels::attention::{AttentionShape, attention_backward, attention_forward};
use crate::kernels::embedding::{Buckets, check_indices, embedding_backward, embedding_forward, position_ids};
use crate::kernels::layernorm::{layernorm_backward, layernorm_forward, residual_layernorm_forward};
use crate::kernels::matmul::{
    Layout, TRANSPOSE_MIN_ROWS, linear_backward, linear_backward_gelu, linear_forward, linear_forward_gelu, matmul,
};
use crate::kernels::padded_vocab::mask_padded_logits;
use crate::kernels::window::{window_gather, window_scatter};
use std::sync::Arc;

/// Parameters are padded to multiples of this many f32s (256 bytes), so that a view of any of
/// them meets every adapter's storage-binding offset alignment.
const PARAM_ALIGN: usize = 64;

/// One parameter's place in the flat buffer.
#[derive(Clone, Debug)]
pub struct ParamSlot {
    pub spec: ParamSpec,
    /// Offset of its first value, in f32s (a multiple of PARAM_ALIGN).
    pub offset: usize,
    /// Its shape on the GPU: the spec's, except `wte`, whose rows are padded to Vp
    /// (`GptConfig::padded_vocab_size`). The padded rows follow the real ones and stay zero.
    pub gpu_shape: Vec<usize>,
}

impl ParamSlot {
    /// This parameter's real values (padding excluded) in a host copy of a flat buffer
    /// (parameters, gradients, moments).
    pub fn of<'a>(&self, flat: &'a [f32]) -> &'a [f32] {
        &flat[self.offset..self.offset + self.spec.len()]
    }
}

/// Where each parameter lives in the flat buffer.
#[derive(Clone, Debug)]
pub struct ParamLayout {
    /// In `GptConfig::param_specs` order.
    pub slots: Vec<ParamSlot>,
    /// Total f32s, padding included.
    pub total: usize,
    pub n_layer: usize,
}

impl ParamLayout {
    pub fn new(config: &GptConfig, heads: Heads) -> ParamLayout {
        let mut slots = Vec::new();
        let mut offset = 0;
        for spec in config.param_specs(heads) {
            let mut gpu_shape = spec.shape.clone();
            if spec.name == "wte.weight" {
                gpu_shape[0] = config.padded_vocab_size();
            }
            let n: usize = gpu_shape.iter().product();
            slots.push(ParamSlot { spec, offset, gpu_shape });
            offset += n.next_multiple_of(PARAM_ALIGN);
        }
        ParamLayout { slots, total: offset, n_layer: config.n_layer }
    }

    /// Number of real parameters (padding excluded).
    pub fn count(&self) -> usize {
        self.slots.iter().map(|s| s.spec.len()).sum()
    }

    /// A host copy of a flat buffer as (name, shape, values) per parameter, in order.
    pub fn unflatten(&self, flat: &[f32]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        self.slots.iter().map(|s| (s.spec.name.clone(), s.spec.shape.clone(), s.of(flat).to_vec())).collect()
    }
}

/// One transformer block's parameters (or their gradients: same layout).
pub struct LayerParams {
    pub ln_1_w: Tensor,      // [C]
    pub ln_1_b: Tensor,      // [C]
    pub c_attn_w: Tensor,    // [C, 3C]
    pub c_attn_b: Tensor,    // [3C]
    pub attn_proj_w: Tensor, // [C, C]
    pub attn_proj_b: Tensor, // [C]
    pub ln_2_w: Tensor,      // [C]
    pub ln_2_b: Tensor,      // [C]
    pub c_fc_w: Tensor,      // [C, 4C]
    pub c_fc_b: Tensor,      // [4C]
    pub mlp_proj_w: Tensor,  // [4C, C]
    pub mlp_proj_b: Tensor,  // [C]
}

/// Named views into a flat buffer laid out by `ParamLayout`: the parameters, or the gradients.
pub struct Params {
    pub flat: Tensor,
    pub wte: Tensor, // [Vp, C]
    pub wpe: Tensor, // [maxT, C]
    pub layers: Vec<LayerParams>,
    pub ln_f_w: Tensor, // [C]
    pub ln_f_b: Tensor, // [C]
    /// Value head as a [C, 1] matrix (the [1, C] weight read as a column) and its bias [1].
    pub v_head: Option<(Tensor, Tensor)>,
    /// Reward head as a [C, 1] matrix.
    pub score: Option<Tensor>,
}

impl Params {
    /// Views of `flat` (laid out by `layout`).
    pub fn views(gpu: &Gpu, flat: &Tensor, layout: &ParamLayout) -> Result<Params> {
        let mut slots = layout.slots.iter();
        let mut next = |shape: Option<&[usize]>| -> Result<Tensor> {
            let slot = slots.next().expect("the layout lists every parameter");
            flat.view(gpu, slot.offset, shape.unwrap_or(&slot.gpu_shape))
        };
        let wte = next(None)?;
        let wpe = next(None)?;
        let mut layers = Vec::with_capacity(layout.n_layer);
        for _ in 0..layout.n_layer {
            layers.push(LayerParams {
                ln_1_w: next(None)?,
                ln_1_b: next(None)?,
                c_attn_w: next(None)?,
                c_attn_b: next(None)?,
                attn_proj_w: next(None)?,
                attn_proj_b: next(None)?,
                ln_2_w: next(None)?,
                ln_2_b: next(None)?,
                c_fc_w: next(None)?,
                c_fc_b: next(None)?,
                mlp_proj_w: next(None)?,
                mlp_proj_b: next(None)?,
            });
        }
        let ln_f_w = next(None)?;
        let ln_f_b = next(None)?;
        let c = wte.shape()[1];
        let has = |name: &str| layout.slots.iter().any(|s| s.spec.name == name);
        let v_head = if has("v_head.summary.weight") { Some((next(Some(&[c, 1]))?, next(None)?)) } else { None };
        let score = if has("score.weight") { Some(next(Some(&[c, 1]))?) } else { None };
        Ok(Params { flat: flat.clone(), wte, wpe, layers, ln_f_w, ln_f_b, v_head, score })
    }
}

/// A GPT-2 with its parameters on the GPU.
pub struct Model {
    pub config: GptConfig,
    pub heads: Heads,
    pub layout: ParamLayout,
    pub params: Params,
    gpu: Arc<Gpu>,
}

impl Model {
    /// Uploads a checkpoint's weights.
    pub fn upload(gpu: &Arc<Gpu>, ck: &Checkpoint) -> Result<Model> {
        let layout = ParamLayout::new(&ck.config, ck.heads);
        let mut host = vec![0.0f32; layout.total];
        for (slot, (ck_name, ck_shape, values)) in layout.slots.iter().zip(&ck.tensors) {
            let ParamSpec { name, shape, .. } = &slot.spec;
            ensure_shape(name == ck_name && shape == ck_shape && values.len() == slot.spec.len(), || {
                format!("checkpoint tensor {ck_name} {ck_shape:?} where {name} {shape:?} belongs")
            })?;
            host[slot.offset..slot.offset + values.len()].copy_from_slice(values);
        }
        let flat = gpu.upload(&[layout.total], &host)?;
        let params = Params::views(gpu, &flat, &layout)?;
        Ok(Model { config: ck.config.clone(), heads: ck.heads, layout, params, gpu: gpu.clone() })
    }

    /// Reads the weights back into a checkpoint.
    pub fn download(&self) -> Result<Checkpoint> {
        let host = self.gpu.download(&self.params.flat)?;
        Ok(Checkpoint { config: self.config.clone(), heads: self.heads, tensors: self.layout.unflatten(&host) })
    }

    /// A zeroed buffer with the parameters' layout (gradients, AdamW moments), and its views.
    pub fn zeros_like_params(&self, rec: &mut Recorder) -> Result<Params> {
        let flat = self.gpu.tensor(&[self.layout.total], DType::F32)?;
        rec.zero(&flat);
        Params::views(&self.gpu, &flat, &self.layout)
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Records the tied LM head: logits [N, Vp] = x [N, C] · wteᵀ, the padded columns masked
    /// (see `kernels::padded_vocab`).
    pub fn lm_head(&self, rec: &mut Recorder, logits: &Tensor, x: &Tensor) -> Result<()> {
        self.lm_head_from(rec, logits, x, &self.params.wte)
    }

    /// As `lm_head`, reading the embedding matrix from `wte` [Vp, C] (f32, or a decode step's
    /// f16 copy).
    pub(crate) fn lm_head_from(&self, rec: &mut Recorder, logits: &Tensor, x: &Tensor, wte: &Tensor) -> Result<()> {
        matmul(rec, logits, x, wte, None, Layout::NT, false)?;
        mask_padded_logits(rec, logits, self.config.vocab_size)
    }

    fn attention_shape(&self, b: usize, t: usize) -> AttentionShape {
        AttentionShape { b, t, c: self.config.n_embd, n_head: self.config.n_head }
    }
}

/// A batch of token sequences on the GPU: ids and attention mask [B, T] (left padding allowed),
/// with Hugging Face position ids.
pub struct Batch {
    pub b: usize,
    pub t: usize,
    pub ids: Tensor,  // u32 [B, T]
    pub mask: Tensor, // u32 [B, T], 1 = real token
    pub pos: Tensor,  // u32 [B, T]
    host_ids: Vec<u32>,
    host_pos: Vec<u32>,
}

impl Batch {
    /// Checks ids against the vocabulary and the length against n_positions, then uploads.
    pub fn new(gpu: &Arc<Gpu>, config: &GptConfig, ids: &[u32], mask: &[u32], b: usize, t: usize) -> Result<Batch> {
        ensure_shape(ids.len() == b * t && mask.len() == b * t, || {
            format!("batch of {b}×{t} got {} ids and {} mask values", ids.len(), mask.len())
        })?;
        if t > config.n_positions {
            return Err(Error::Input(format!(
                "sequence length {t} exceeds the model's n_positions {}",
                config.n_positions
            )));
        }
        check_indices(ids, config.vocab_size, "token id")?;
        let pos = position_ids(mask, t);
        Ok(Batch {
            b,
            t,
            ids: gpu.upload_u32(&[b, t], ids)?,
            mask: gpu.upload_u32(&[b, t], mask)?,
            pos: gpu.upload_u32(&[b, t], &pos)?,
            host_ids: ids.to_vec(),
            host_pos: pos,
        })
    }
}

/// The positions of every sequence at which a forward runs its heads (the LM head, the value
/// head, the reward head): `start .. start + len`. The PPO update and the rollout read logits
/// only where a response token is predicted, so their forwards run the heads from the last
/// prompt position on (`ppo::rollout::Sequences::head_window`; for a batch file, from its
/// response mask: `HeadWindow::trained`): for prompts as long as the responses, half of the LM
/// head's work and memory (at GPT-2's vocabulary a third of a forward's work) is not done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadWindow {
    pub start: usize,
    pub len: usize,
}

impl HeadWindow {
    /// Every position of sequences of `t`.
    pub fn whole(t: usize) -> HeadWindow {
        HeadWindow { start: 0, len: t }
    }

    /// The positions the losses of the PPO update read for the trained tokens of `mask` [B, T]
    /// (a token at j ≥ 1 with mask ≠ 0, predicted from position j − 1): from the position
    /// before the first of them in any row to the last of them in any row (the loss kernels
    /// read nothing from a window's last row, as from a sequence's last position). The whole
    /// sequence when nothing is trained.
    pub fn trained(mask: &[f32], t: usize) -> HeadWindow {
        let trained = |j: &usize| mask.chunks(t).any(|row| row[*j] != 0.0);
        match ((1..t).find(trained), (1..t).rev().find(trained)) {
            (Some(first), Some(last)) => HeadWindow { start: first - 1, len: last - first + 2 },
            _ => HeadWindow::whole(t),
        }
    }

    /// The window of each row of `x` [B, T]: [B, len].
    pub fn slice<T: Copy>(&self, x: &[T], t: usize) -> Vec<T> {
        x.chunks(t).flat_map(|row| row[self.start..self.start + self.len].iter().copied()).collect()
    }

    /// Rows of the window `x` [B, len] put back in place: [B, T], 0 outside the window.
    pub fn expand<T: Copy + Default>(&self, x: &[T], t: usize) -> Vec<T> {
        x.chunks(self.len.max(1))
            .flat_map(|row| {
                let mut whole = vec![T::default(); t];
                whole[self.start..self.start + self.len].copy_from_slice(row);
                whole
            })
            .collect()
    }
}

/// One block's activations, kept for the backward.
pub struct LayerActivations {
    pub ln1: Tensor,       // [B, T, C]
    pub ln1_mean: Tensor,  // [B, T]
    pub ln1_rstd: Tensor,  // [B, T]
    pub qkv: Tensor,       // [B, T, 3C]
    pub atty: Tensor,      // [B, T, C]
    pub att_lse: Tensor,   // [B, NH, T]
    pub attproj: Tensor,   // [B, T, C]
    pub residual2: Tensor, // [B, T, C]
    pub ln2: Tensor,       // [B, T, C]
    pub ln2_mean: Tensor,  // [B, T]
    pub ln2_rstd: Tensor,  // [B, T]
    pub fch: Tensor,       // [B, T, 4C]
    pub fch_gelu: Tensor,  // [B, T, 4C]
    pub fcproj: Tensor,    // [B, T, C]
    pub residual3: Tensor, // [B, T, C]
}

pub struct Activations {
    pub encoded: Tensor, // [B, T, C]
    pub layers: Vec<LayerActivations>,
    pub lnf: Tensor,      // [B, T, C]
    pub lnf_mean: Tensor, // [B, T]
    pub lnf_rstd: Tensor, // [B, T]
    /// The positions the heads ran at; W = window.len below (T unless the forward was
    /// `forward_window`'s).
    pub window: HeadWindow,
    /// The heads' input: lnf at the window's positions, [B·W, C].
    head_input: Tensor,
    /// Next-token logits [B, W, Vp], the padded columns masked; the loss overwrites them with
    /// their gradient (0 in the padded columns) for the backward. None from a forward without
    /// the LM head (`Model::forward_without_logits`). Read them with `logits()`.
    logits: Option<Tensor>,
    /// Value head output [B, W] (when the model has one).
    pub values: Option<Tensor>,
    /// Reward head output [B, W] (when the model has one): the reward of a sequence is read at
    /// its last real token.
    pub rewards: Option<Tensor>,
}

impl Activations {
    /// The logits [B, W, Vp] (or, after the loss, their gradient); an error from a forward that
    /// ran without the LM head.
    pub fn logits(&self) -> Result<&Tensor> {
        self.logits
            .as_ref()
            .ok_or_else(|| Error::Input("this forward ran without the LM head: it has no logits".into()))
    }
}

impl Model {
    /// Records the forward pass of `batch`.
    pub fn forward(&self, rec: &mut Recorder, batch: &Batch) -> Result<Activations> {
        self.forward_with(rec, batch, true, HeadWindow::whole(batch.t))
    }

    /// Records the forward pass of `batch` with the heads run at the positions of `window`
    /// only (the transformer still runs over every position: each attends to those before).
    pub fn forward_window(&self, rec: &mut Recorder, batch: &Batch, window: HeadWindow) -> Result<Activations> {
        self.forward_with(rec, batch, true, window)
    }

    /// Records the forward pass of `batch` without the LM head: the transformer and the value
    /// and reward heads. For a reward model, whose scores need no logits (its backward then has
    /// none either), and generation's prefill, which needs them at one position per row
    /// (`prefill`). At GPT-2's vocabulary the LM head is a third of a forward's work and
    /// [B, T, Vp] floats of memory.
    pub fn forward_without_logits(&self, rec: &mut Recorder, batch: &Batch) -> Result<Activations> {
        self.forward_with(rec, batch, false, HeadWindow::whole(batch.t))
    }

    fn forward_with(
        &self,
        rec: &mut Recorder,
        batch: &Batch,
        with_logits: bool,
        window: HeadWindow,
    ) -> Result<Activations> {
        let (b, t) = (batch.b, batch.t);
        if window.len == 0 || window.start + window.len > t {
            return Err(Error::Input(format!(
                "head window {}..{} is not within the batch's {t} positions",
                window.start,
                window.start + window.len
            )));
        }
        let GptConfig { n_embd: c, n_head: nh, layer_norm_epsilon: eps, .. } = self.config;
        let gpu = &self.gpu;
        let f32s = |shape: &[usize]| gpu.tensor(shape, DType::F32);
        let p = &self.params;

        let encoded = f32s(&[b, t, c])?;
        embedding_forward(rec, &encoded, &batch.ids, &batch.pos, &p.wte, &p.wpe)?;

        let layers: Vec<LayerActivations> = (0..p.layers.len())
            .map(|_| {
                Ok(LayerActivations {
                    ln1: f32s(&[b, t, c])?,
                    ln1_mean: f32s(&[b, t])?,
                    ln1_rstd: f32s(&[b, t])?,
                    qkv: f32s(&[b, t, 3 * c])?,
                    atty: f32s(&[b, t, c])?,
                    att_lse: f32s(&[b, nh, t])?,
                    attproj: f32s(&[b, t, c])?,
                    residual2: f32s(&[b, t, c])?,
                    ln2: f32s(&[b, t, c])?,
                    ln2_mean: f32s(&[b, t])?,
                    ln2_rstd: f32s(&[b, t])?,
                    fch: f32s(&[b, t, 4 * c])?,
                    fch_gelu: f32s(&[b, t, 4 * c])?,
                    fcproj: f32s(&[b, t, c])?,
                    residual3: f32s(&[b, t, c])?,
                })
            })
            .collect::<Result<_>>()?;
        let (lnf, lnf_mean, lnf_rstd) = (f32s(&[b, t, c])?, f32s(&[b, t])?, f32s(&[b, t])?);

        // Each residual add runs fused with the LayerNorm that reads it (llm.c's fused residual
        // forward): a block's attention output with its ln_2, its MLP output with the next
        // block's ln_1, or with ln_f after the last block. (A config has at least one block.)
        let (first, lp0) = (&layers[0], &p.layers[0]);
        layernorm_forward(rec, &first.ln1, &first.ln1_mean, &first.ln1_rstd, &encoded, &lp0.ln_1_w, &lp0.ln_1_b, eps)?;
        for (l, (a, lp)) in layers.iter().zip(&p.layers).enumerate() {
            let residual = if l == 0 { &encoded } else { &layers[l - 1].residual3 };
            linear_forward(rec, &a.qkv, &a.ln1, &lp.c_attn_w, Some(&lp.c_attn_b))?;
            attention_forward(rec, &a.atty, &a.att_lse, &a.qkv, &batch.mask, self.attention_shape(b, t))?;
            linear_forward(rec, &a.attproj, &a.atty, &lp.attn_proj_w, Some(&lp.attn_proj_b))?;
            let (ln2, mean2, rstd2) = (&a.ln2, &a.ln2_mean, &a.ln2_rstd);
            let (w2, b2) = (&lp.ln_2_w, &lp.ln_2_b);
            residual_layernorm_forward(rec, &a.residual2, ln2, mean2, rstd2, residual, &a.attproj, w2, b2, eps)?;
            linear_forward_gelu(rec, &a.fch, &a.fch_gelu, &a.ln2, &lp.c_fc_w, &lp.c_fc_b)?;
            linear_forward(rec, &a.fcproj, &a.fch_gelu, &lp.mlp_proj_w, Some(&lp.mlp_proj_b))?;
            let (out, mean, rstd, w, bias) = match (layers.get(l + 1), p.layers.get(l + 1)) {
                (Some(next), Some(np)) => (&next.ln1, &next.ln1_mean, &next.ln1_rstd, &np.ln_1_w, &np.ln_1_b),
                _ => (&lnf, &lnf_mean, &lnf_rstd, &p.ln_f_w, &p.ln_f_b),
            };
            residual_layernorm_forward(rec, &a.residual3, out, mean, rstd, &a.residual2, &a.fcproj, w, bias, eps)?;
        }
        // The heads, at the window's positions.
        let w = window.len;
        let head_input = if window == HeadWindow::whole(t) {
            lnf.reshape(&[b * t, c])?
        } else {
            let x = f32s(&[b * w, c])?;
            window_gather(rec, &x.reshape(&[b, w * c])?, &lnf.reshape(&[b, t * c])?, window.start * c)?;
            x
        };
        let logits = if with_logits {
            let logits = f32s(&[b, w, self.config.padded_vocab_size()])?;
            self.lm_head(rec, &logits, &head_input)?;
            Some(logits)
        } else {
            None
        };
        let values = match &p.v_head {
            Some((weight, bias)) => {
                let values = f32s(&[b, w])?;
                linear_forward(rec, &values.reshape(&[b * w, 1])?, &head_input, weight, Some(bias))?;
                Some(values)
            }
            None => None,
        };
        let rewards = match &p.score {
            Some(weight) => {
                let rewards = f32s(&[b, w])?;
                linear_forward(rec, &rewards.reshape(&[b * w, 1])?, &head_input, weight, None)?;
                Some(rewards)
            }
            None => None,
        };
        Ok(Activations { encoded, layers, lnf, lnf_mean, lnf_rstd, window, head_input, logits, values, rewards })
    }

    /// Records the backward pass, accumulating into `grads` (zero them once per step). On entry
    /// `acts.logits` holds ∂L/∂logits (as the cross-entropy and PPO loss kernels leave it, in
    /// place of the logits), or is None after `forward_without_logits` (no LM-head gradient);
    /// `dvalues` [B, W] and `drewards` [B, W] are the gradients reaching the value and reward
    /// heads, when the loss uses them (W: the forward's head window).
    pub fn backward(
        &self,
        rec: &mut Recorder,
        batch: &Batch,
        acts: &Activations,
        dvalues: Option<&Tensor>,
        drewards: Option<&Tensor>,
        grads: &Params,
    ) -> Result<()> {
        let (b, t) = (batch.b, batch.t);
        let GptConfig { n_embd: c, n_head: nh, .. } = self.config;
        let gpu = &self.gpu;
        let zeros = |rec: &mut Recorder, shape: &[usize]| -> Result<Tensor> {
            let z = gpu.tensor(shape, DType::F32)?;
            rec.zero(&z);
            Ok(z)
        };
        let p = &self.params;
        // Heads: dx = dlogits · wte (+ the value and reward heads' contributions) for their
        // input x, lnf at the head window's positions; dlnf is dx there and 0 elsewhere. The
        // padded columns of dlogits are 0, so wte's padded rows get no gradient and stay zero.
        let (window, x) = (acts.window, &acts.head_input);
        let bw = b * window.len;
        let dlnf = gpu.tensor(&[b, t, c], DType::F32)?;
        let whole = window == HeadWindow::whole(t);
        let dx = if whole { dlnf.clone() } else { gpu.tensor(&[bw, c], DType::F32)? };
        match &acts.logits {
            Some(dlogits) => {
                matmul(rec, &dx, dlogits, &p.wte, None, Layout::NN, false)?;
                matmul(rec, &grads.wte, dlogits, x, None, Layout::TN, true)?; // dwte += dlogitsᵀ · x
            }
            None => rec.zero(&dx),
        }
        if let (Some((w, _)), Some((dw, db)), Some(dv)) = (&p.v_head, &grads.v_head, dvalues) {
            linear_backward(rec, &dx, true, dw, Some(db), &dv.reshape(&[bw, 1])?, x, w)?;
        }
        if let (Some(w), Some(dw), Some(dr)) = (&p.score, &grads.score, drewards) {
            linear_backward(rec, &dx, true, dw, None, &dr.reshape(&[bw, 1])?, x, w)?;
        }
        if !whole {
            window_scatter(rec, &dlnf.reshape(&[b, t * c])?, &dx.reshape(&[b, window.len * c])?, window.start * c)?;
        }

        // ln_f. `dresidual` carries ∂L/∂(residual stream) down through the blocks: every
        // residual add passes it on unchanged, and each branch adds its own contribution.
        let dresidual = zeros(rec, &[b, t, c])?;
        let last = acts.layers.last().map_or(&acts.encoded, |l| &l.residual3);
        layernorm_backward(
            rec,
            &dresidual,
            &grads.ln_f_w,
            &grads.ln_f_b,
            &dlnf,
            last,
            &p.ln_f_w,
            &acts.lnf_mean,
            &acts.lnf_rstd,
        )?;

        // Scratch for the per-block gradients, reused by every block.
        let dfch = gpu.tensor(&[b, t, 4 * c], DType::F32)?;
        let dln = gpu.tensor(&[b, t, c], DType::F32)?;
        let datty = gpu.tensor(&[b, t, c], DType::F32)?;
        let dqkv = gpu.tensor(&[b, t, 3 * c], DType::F32)?;
        let delta = gpu.tensor(&[b, nh, t], DType::F32)?;

        for (l, (lp, gp)) in p.layers.iter().zip(&grads.layers).enumerate().rev() {
            let a = &acts.layers[l];
            let residual = if l == 0 { &acts.encoded } else { &acts.layers[l - 1].residual3 };
            // MLP: residual3 = residual2 + c_proj(gelu(c_fc(ln_2(residual2)))); c_proj's input
            // gradient goes back through the GELU in the same call.
            linear_backward_gelu(
                rec,
                &dfch,
                &gp.mlp_proj_w,
                Some(&gp.mlp_proj_b),
                &dresidual,
                &a.fch_gelu,
                &lp.mlp_proj_w,
                &a.fch,
            )?;
            linear_backward(rec, &dln, false, &gp.c_fc_w, Some(&gp.c_fc_b), &dfch, &a.ln2, &lp.c_fc_w)?;
            layernorm_backward(
                rec,
                &dresidual,
                &gp.ln_2_w,
                &gp.ln_2_b,
                &dln,
                &a.residual2,
                &lp.ln_2_w,
                &a.ln2_mean,
                &a.ln2_rstd,
            )?;
            // Attention: residual2 = residual + c_proj(attention(c_attn(ln_1(residual)))).
            let (dw, db) = (&gp.attn_proj_w, &gp.attn_proj_b);
            linear_backward(rec, &datty, false, dw, Some(db), &dresidual, &a.atty, &lp.attn_proj_w)?;
            attention_backward(
                rec,
                &dqkv,
                &delta,
                &datty,
                &a.qkv,
                &a.atty,
                &a.att_lse,
                &batch.mask,
                self.attention_shape(b, t),
            )?;
            linear_backward(rec, &dln, false, &gp.c_attn_w, Some(&gp.c_attn_b), &dqkv, &a.ln1, &lp.c_attn_w)?;
            layernorm_backward(
                rec,
                &dresidual,
                &gp.ln_1_w,
                &gp.ln_1_b,
                &dln,
                residual,
                &lp.ln_1_w,
                &a.ln1_mean,
                &a.ln1_rstd,
            )?;
        }

        // Embeddings: the gradient of the residual stream at its start.
        embedding_backward(rec, &grads.wte, &dresidual, &Buckets::new(gpu, &batch.host_ids, self.config.vocab_size)?)?;
        embedding_backward(rec, &grads.wpe, &dresidual, &Buckets::new(gpu, &batch.host_pos, self.config.n_positions)?)?;
        Ok(())
    }
}

/// GPU memory a training step needs, in bytes, computed from the buffers `Model` allocates.
#[derive(Clone, Copy, Debug)]
pub struct MemoryEstimate {
    pub params: usize,
    pub grads: usize,
    pub adam_state: usize,
    pub activations: usize,
    /// Gradient scratch of the backward (one block's worth plus the heads).
    pub backward_scratch: usize,
    /// With the register-tiled matmul (a CPU adapter's), the transposed copy of B that its NT
    /// products of at least TRANSPOSE_MIN_ROWS rows run on (held until the step is submitted):
    /// each block weight, for the backward's dinp products, and wte, for the logits.
    pub transpose_scratch: usize,
    /// With the texture matmul (a CPU adapter's), the textures its operands are packed into.
    pub texture_scratch: usize,
    /// With the split-K matmul on products of few rows (a batch of at most
    /// `kernels::matmul::SPLIT_K_MAX_ROWS` tokens), the slices' partial outputs: one scratch
    /// the step's products share, as large as the largest needs.
    pub split_k_scratch: usize,
}

impl MemoryEstimate {
    pub fn total(&self) -> usize {
        self.params
            + self.grads
            + self.adam_state
            + self.activations
            + self.backward_scratch
            + self.transpose_scratch
            + self.texture_scratch
            + self.split_k_scratch
    }
}

/// The matrix products of one training step on `bt` tokens, as (M, N, K): the forward, dinp
/// and dW of every linear layer (one block's suffice: the others repeat their shapes) and of
/// the heads, and the tied LM head's three (over the padded vocabulary).
fn training_products(config: &GptConfig, heads: Heads, bt: usize) -> Vec<(Layout, (usize, usize, usize))> {
    let (c, v) = (config.n_embd, config.padded_vocab_size());
    let mut linears = vec![(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)]; // (in, out)
    linears.extend(std::iter::repeat_n((c, 1), heads.value as usize + heads.reward as usize));
    let mut products = vec![(Layout::NT, (bt, v, c)), (Layout::NN, (bt, c, v)), (Layout::TN, (v, c, bt))];
    for (i, o) in linears {
        products.extend([(Layout::NN, (bt, o, i)), (Layout::NT, (bt, i, o)), (Layout::TN, (i, o, bt))]);
    }
    products
}

/// The memory of training `config` on batches of B × T tokens, where a `layout` product of M × N
/// outputs runs on the matmul variant `variant_for(layout, M, N)` (see `kernels::matmul::variant_for`)
/// and, with `layernorm_textures`, the LayerNorms on their texture variant.
pub fn memory_estimate(
    config: &GptConfig,
    heads: Heads,
    b: usize,
    t: usize,
    variant_for: impl Fn(Layout, usize, usize) -> MatmulVariant,
    layernorm_textures: bool,
) -> MemoryEstimate {
    let layout = ParamLayout::new(config, heads);
    let (c, v, nh, l) = (config.n_embd, config.padded_vocab_size(), config.n_head, config.n_layer);
    let bt = b * t;
    // Per block: ln1, atty, attproj, residual2, ln2, fcproj, residual3 (C each), qkv (3C),
    // fch and fch_gelu (4C each), four LayerNorm statistics, and the attention lse (NH).
    let per_layer = bt * (7 * c + 3 * c + 8 * c + 4) + b * nh * t;
    let heads_out = bt * (heads.value as usize + heads.reward as usize);
    let activations = 4 * (bt * c + l * per_layer + bt * c + 2 * bt + bt * v + heads_out);
    let backward_scratch =
        4 * (bt * c /* dlnf */ + bt * c /* dresidual */ + bt * 4 * c + 2 * bt * c + bt * 3 * c + b * nh * t);
    let p = 4 * layout.total;
    // The NT products of B·T rows: the dinp products of c_attn (3C²), attn.c_proj (C²), c_fc
    // (4C²) and mlp.c_proj (4C²) per block, and the logits lnf · wteᵀ (wte: Vp·C); with fewer
    // rows only mlp.c_proj's, whose GELU epilogue needs its B transposed. (Taken at the blocks'
    // C columns: the logits' Vp can make theirs a large product, of `matmul_large`, a family of
    // its own only on a GPU.)
    let transpose_scratch = match variant_for(Layout::NT, bt, c) {
        MatmulVariant::RegisterTiled if bt >= TRANSPOSE_MIN_ROWS => 4 * (l * 12 * c * c + v * c),
        MatmulVariant::RegisterTiled => 4 * l * 4 * c * c,
        _ => 0,
    };
    let products: Vec<_> = training_products(config, heads, bt)
        .into_iter()
        .map(|(layout, (m, n, k))| (layout, (m, n, k), variant_for(layout, m, n)))
        .collect();
    let split_k_scratch = products
        .iter()
        .map(|&(_, (m, n, k), variant)| crate::kernels::matmul::split_k_scratch_bytes(variant, m, n, k))
        .max()
        .unwrap_or(0);
    let layernorm_scratch =
        if layernorm_textures { crate::kernels::layernorm::texture_scratch_bytes(bt, c) } else { 0 };
    let texture_scratch = crate::kernels::matmul::texture_scratch_bytes(&products) + layernorm_scratch;
    MemoryEstimate {
        params: p,
        grads: p,
        adam_state: 2 * p,
        activations,
        backward_scratch,
        transpose_scratch,
        texture_scratch,
        split_k_scratch,
    }
}
