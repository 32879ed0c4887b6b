//! Generation with a KV cache: a prefill pass over the (left-padded) prompts writes every
//! layer's keys and values, then each decode step runs the model on one new token per row,
//! appends its keys and values, and attends over the cache. The same kernels as the training
//! forward, with B rows of one position, plus `kv_cache_write` (the prefill) and
//! `decode_attention` (a decode step's append and attention, one dispatch); the
//! decode steps read their weights from `DecodeWeights` (f32, or f16 copies).

use super::config::GptConfig;
use super::gpt::{Batch, Model};
use crate::error::{Result, ensure_shape};
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::embedding::embedding_forward;
use crate::kernels::f16_weights::{self, WeightFormat, in_format};
use crate::kernels::kv_cache::{self, CacheShape, KvFormat, decode_attention, kv_cache_write};
use crate::kernels::layernorm::{layernorm_forward, residual_layernorm_forward};
use crate::kernels::matmul::{linear_forward, linear_forward_gelu};
use crate::kernels::rollout::gather_rows;
use crate::kernels::window::window_gather;

/// Every layer's keys and values for B rows of up to `t_max` positions, and which positions
/// hold real tokens.
pub struct KvCache {
    pub shape: CacheShape,
    /// One tensor per layer: k then v at each position, [B, T_max, 2C] f32 or [B, T_max, C]
    /// u32 of f16 pairs (`kernels::kv_cache::KvFormat`).
    pub layers: Vec<Tensor>,
    /// u32 [B, T_max]: 1 where a position holds a real token (left padding is 0).
    pub mask: Tensor,
}

/// The weights a decode step's products read, in the generation's format
/// (`kernels::f16_weights`): the f32 parameters themselves, or f16 copies made once per
/// generation. (Biases, LayerNorms and the embeddings are read as f32.)
pub struct DecodeWeights {
    layers: Vec<DecodeLayerWeights>,
    /// The tied LM head, [Vp, C].
    wte: Tensor,
}

struct DecodeLayerWeights {
    c_attn_w: Tensor,
    attn_proj_w: Tensor,
    c_fc_w: Tensor,
    mlp_proj_w: Tensor,
}

/// Activations of one decode step ([B, ·] each), allocated once and reused by every step.
pub struct DecodeScratch {
    x: Tensor,         // [B, C] the residual stream
    ln: Tensor,        // [B, C]
    mean: Tensor,      // [B]
    rstd: Tensor,      // [B]
    qkv: Tensor,       // [B, 3C]
    atty: Tensor,      // [B, C]
    proj: Tensor,      // [B, C]
    residual2: Tensor, // [B, C]
    fch: Tensor,       // [B, 4C]
    fch_gelu: Tensor,  // [B, 4C]
    /// Next-token logits [B, Vp] of the last step (the padded columns masked).
    pub logits: Tensor,
}

impl Model {
    /// An empty cache for B rows of `t_max` positions, in the adapter's format (chosen by
    /// measurement); `mask` [B, T_max] marks the real tokens.
    pub fn kv_cache(&self, b: usize, t_max: usize, mask: &[u32]) -> Result<KvCache> {
        self.kv_cache_with_format(b, t_max, mask, kv_cache::format(self.gpu())?)
    }

    /// As `kv_cache`, in the format named (tests compare them).
    pub fn kv_cache_with_format(&self, b: usize, t_max: usize, mask: &[u32], format: KvFormat) -> Result<KvCache> {
        let GptConfig { n_embd: c, n_head, .. } = self.config;
        let shape = CacheShape { b, t_max, c, n_head };
        let layers =
            (0..self.config.n_layer).map(|_| kv_cache::new_cache(self.gpu(), shape, format)).collect::<Result<_>>()?;
        Ok(KvCache { shape, layers, mask: self.gpu().upload_u32(&[b, t_max], mask)? })
    }

    /// The weights decode steps of `rows` sequences read, in the adapter's format for them
    /// (chosen by measurement); the copies are recorded in `rec`, so they hold the parameters
    /// as of this point of it.
    pub fn decode_weights(&self, rec: &mut Recorder, rows: usize) -> Result<DecodeWeights> {
        self.decode_weights_in(rec, f16_weights::format(self.gpu(), rows)?)
    }

    /// As `decode_weights`, in the format named (tests compare them).
    pub fn decode_weights_in(&self, rec: &mut Recorder, format: WeightFormat) -> Result<DecodeWeights> {
        let layers = self
            .params
            .layers
            .iter()
            .map(|lp| {
                Ok(DecodeLayerWeights {
                    c_attn_w: in_format(rec, &lp.c_attn_w, format)?,
                    attn_proj_w: in_format(rec, &lp.attn_proj_w, format)?,
                    c_fc_w: in_format(rec, &lp.c_fc_w, format)?,
                    mlp_proj_w: in_format(rec, &lp.mlp_proj_w, format)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(DecodeWeights { layers, wte: in_format(rec, &self.params.wte, format)? })
    }

    pub fn decode_scratch(&self, b: usize) -> Result<DecodeScratch> {
        let (c, vp) = (self.config.n_embd, self.config.padded_vocab_size());
        let f32s = |shape: &[usize]| self.gpu().tensor(shape, DType::F32);
        Ok(DecodeScratch {
            x: f32s(&[b, c])?,
            ln: f32s(&[b, c])?,
            mean: f32s(&[b])?,
            rstd: f32s(&[b])?,
            qkv: f32s(&[b, 3 * c])?,
            atty: f32s(&[b, c])?,
            proj: f32s(&[b, c])?,
            residual2: f32s(&[b, c])?,
            fch: f32s(&[b, 4 * c])?,
            fch_gelu: f32s(&[b, 4 * c])?,
            logits: f32s(&[b, vp])?,
        })
    }

    /// Records the forward of the prompts (positions 0 .. P of the cache, left-padded: each row's
    /// last token at P − 1), writes their keys and values into the cache, and leaves the
    /// next-token logits [B, Vp] in `s.logits`, as a decode step does. The LM head runs on the
    /// last position's rows only: the logits of the others are never read (at GPT-2's
    /// vocabulary, 16-token prompts, that is a sixteenth of the head's work).
    ///
    /// `prompts` holds one row per cache row, or with `rows` (u32 [B]) the distinct prompts only:
    /// cache row r then takes prompt rows[r]'s keys, values and last hidden state, and the
    /// forward runs once per distinct prompt (GRPO's groups sample each prompt G times).
    pub fn prefill(
        &self,
        rec: &mut Recorder,
        cache: &KvCache,
        prompts: &Batch,
        rows: Option<&Tensor>,
        s: &DecodeScratch,
    ) -> Result<()> {
        let (u, p, c, b) = (prompts.b, prompts.t, self.config.n_embd, cache.shape.b);
        ensure_shape(rows.map_or(u, Tensor::len) == b, || {
            format!("prefill: {} prompt rows for a cache of {b} rows", rows.map_or(u, Tensor::len))
        })?;
        let acts = self.forward_without_logits(rec, prompts)?;
        let f32s = |shape: &[usize]| self.gpu().tensor(shape, DType::F32);
        for (layer, a) in cache.layers.iter().zip(&acts.layers) {
            let qkv = match rows {
                Some(rows) => {
                    let qkv = f32s(&[b, p, 3 * c])?;
                    gather_rows(rec, &qkv.reshape(&[b, p * 3 * c])?, &a.qkv.reshape(&[u, p * 3 * c])?, rows)?;
                    qkv
                }
                None => a.qkv.clone(),
            };
            kv_cache_write(rec, layer, &qkv, cache.shape, 0)?;
        }
        let lnf = acts.lnf.reshape(&[u, p * c])?;
        match rows {
            Some(rows) => {
                let last = f32s(&[u, c])?;
                window_gather(rec, &last, &lnf, (p - 1) * c)?;
                gather_rows(rec, &s.ln, &last, rows)?;
            }
            None => window_gather(rec, &s.ln, &lnf, (p - 1) * c)?,
        }
        self.lm_head(rec, &s.logits, &s.ln)
    }

    /// Records one decode step: token `ids[b]` at position `pos[b]` (u32 [B] each) sits at cache
    /// position `at`; its keys and values go into the cache, and `scratch.logits` [B, Vp] receives
    /// the next-token logits, the products reading their weights from `w`.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_step(
        &self,
        rec: &mut Recorder,
        w: &DecodeWeights,
        cache: &KvCache,
        s: &DecodeScratch,
        ids: &Tensor,
        pos: &Tensor,
        at: usize,
    ) -> Result<()> {
        let eps = self.config.layer_norm_epsilon;
        let p = &self.params;
        embedding_forward(rec, &s.x, ids, pos, &p.wte, &p.wpe)?;
        // Each residual add runs fused with the LayerNorm after it, as in `forward`.
        let (lp0, ln, mean, rstd) = (&p.layers[0], &s.ln, &s.mean, &s.rstd);
        layernorm_forward(rec, ln, mean, rstd, &s.x, &lp0.ln_1_w, &lp0.ln_1_b, eps)?;
        for (l, ((lp, lw), layer_cache)) in p.layers.iter().zip(&w.layers).zip(&cache.layers).enumerate() {
            linear_forward(rec, &s.qkv, &s.ln, &lw.c_attn_w, Some(&lp.c_attn_b))?;
            // The new token's key and value go into the cache in the attention's own dispatch.
            decode_attention(rec, &s.atty, &s.qkv, layer_cache, &cache.mask, cache.shape, at + 1, true)?;
            linear_forward(rec, &s.proj, &s.atty, &lw.attn_proj_w, Some(&lp.attn_proj_b))?;
            let (w2, b2) = (&lp.ln_2_w, &lp.ln_2_b);
            residual_layernorm_forward(rec, &s.residual2, ln, mean, rstd, &s.x, &s.proj, w2, b2, eps)?;
            linear_forward_gelu(rec, &s.fch, &s.fch_gelu, &s.ln, &lw.c_fc_w, &lp.c_fc_b)?;
            linear_forward(rec, &s.proj, &s.fch_gelu, &lw.mlp_proj_w, Some(&lp.mlp_proj_b))?;
            // The next block's ln_1, or ln_f after the last.
            let (wn, bn) = p.layers.get(l + 1).map_or((&p.ln_f_w, &p.ln_f_b), |np| (&np.ln_1_w, &np.ln_1_b));
            residual_layernorm_forward(rec, &s.x, ln, mean, rstd, &s.residual2, &s.proj, wn, bn, eps)?;
        }
        self.lm_head_from(rec, &s.logits, &s.ln, &w.wte)
    }
}
