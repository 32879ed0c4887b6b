//! The model configuration: the fields of a Hugging Face GPT-2 `config.json` that define the
//! architecture, and the list of parameters (names and shapes) that follows from them.

use crate::error::{Error, Result};
use serde_json::json;
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct GptConfig {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub layer_norm_epsilon: f32,
}

/// The GPU model's vocabulary is padded to a multiple of this (`GptConfig::padded_vocab_size`).
pub const VOCAB_ALIGN: usize = 64;

/// Which optional heads a model carries besides the tied LM head.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heads {
    /// TRL's value head: `v_head.summary.weight [1, C]`, `v_head.summary.bias [1]`.
    pub value: bool,
    /// `GPT2ForSequenceClassification`'s reward head: `score.weight [1, C]`.
    pub reward: bool,
}

impl GptConfig {
    /// The shipped tiny model's shape (docs/design.md §3).
    pub fn tiny() -> GptConfig {
        GptConfig { vocab_size: 512, n_positions: 64, n_embd: 128, n_layer: 4, n_head: 4, layer_norm_epsilon: 1e-5 }
    }

    /// GPT-2 small (124M).
    pub fn gpt2_small() -> GptConfig {
        GptConfig {
            vocab_size: 50257,
            n_positions: 1024,
            n_embd: 768,
            n_layer: 12,
            n_head: 12,
            layer_norm_epsilon: 1e-5,
        }
    }

    /// The vocabulary as the GPU model holds it (llm.c's Vp): `vocab_size` rounded up to a
    /// multiple of VOCAB_ALIGN. `wte` has this many rows, the padded ones zero, and the logits
    /// this many columns, the padded ones masked (see `kernels::padded_vocab`), so the LM head's
    /// products run on the aligned (vec4, whole-tile) paths whatever the vocabulary. Checkpoints
    /// keep the real `vocab_size`.
    pub fn padded_vocab_size(&self) -> usize {
        self.vocab_size.next_multiple_of(VOCAB_ALIGN)
    }

    /// Parses a Hugging Face GPT-2 `config.json`.
    pub fn from_json(text: &str, origin: &str) -> Result<GptConfig> {
        let hf: HfConfig = serde_json::from_str(text)
            .map_err(|e| Error::Checkpoint(format!("{origin}: not a valid GPT-2 config.json: {e}")))?;
        let n_positions = hf
            .n_positions
            .or(hf.n_ctx)
            .ok_or_else(|| Error::Checkpoint(format!("{origin}: missing field \"n_positions\" (or \"n_ctx\")")))?;
        let config = GptConfig {
            vocab_size: hf.vocab_size,
            n_positions,
            n_embd: hf.n_embd,
            n_layer: hf.n_layer,
            n_head: hf.n_head,
            layer_norm_epsilon: hf.layer_norm_epsilon.unwrap_or(1e-5) as f32,
        };
        let unsupported = |what: String| Err(Error::Checkpoint(format!("{origin}: {what} is not supported")));
        if let Some(act) = hf.activation_function.filter(|a| a != "gelu_new" && a != "gelu_pytorch_tanh") {
            return unsupported(format!("activation_function \"{act}\" (expected \"gelu_new\", GPT-2's tanh GELU)"));
        }
        // Variants of GPT-2 the kernels do not implement.
        if let Some(inner) = hf.n_inner.filter(|&n| n != 4 * config.n_embd) {
            return unsupported(format!("n_inner {inner} (the MLP is 4·n_embd wide)"));
        }
        let flags = [
            ("scale_attn_by_inverse_layer_idx = true", hf.scale_attn_by_inverse_layer_idx == Some(true)),
            ("reorder_and_upcast_attn = true", hf.reorder_and_upcast_attn == Some(true)),
            ("add_cross_attention = true", hf.add_cross_attention == Some(true)),
            ("scale_attn_weights = false", hf.scale_attn_weights == Some(false)),
        ];
        if let Some((flag, _)) = flags.iter().find(|(_, set)| *set) {
            return unsupported(flag.to_string());
        }
        config.validate(origin)?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<GptConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Checks the shape rules the kernels rely on.
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |msg: String| Err(Error::Checkpoint(format!("{origin}: {msg}")));
        if self.vocab_size == 0 || self.n_positions == 0 || self.n_embd == 0 || self.n_layer == 0 || self.n_head == 0 {
            return bad(format!("every size must be positive, got {self:?}"));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!("n_embd {} is not divisible by n_head {}", self.n_embd, self.n_head));
        }
        let hd = self.n_embd / self.n_head;
        if !hd.is_multiple_of(4) || hd > crate::kernels::attention::MAX_HEAD_DIM {
            return bad(format!(
                "head dimension {hd} must be a multiple of 4 and at most {}",
                crate::kernels::attention::MAX_HEAD_DIM
            ));
        }
        Ok(())
    }

    /// A `config.json` that `transformers` loads as a `GPT2LMHeadModel`.
    pub fn to_json(&self) -> String {
        self.to_json_with_heads(Heads::default())
    }

    /// As `to_json`; a model with a reward head is declared a `GPT2ForSequenceClassification`
    /// with one label (so that `AutoModelForSequenceClassification` builds its `score` head).
    pub fn to_json_with_heads(&self, heads: Heads) -> String {
        let mut v = json!({
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_ctx": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": null,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "initializer_range": 0.02,
            "bos_token_id": self.vocab_size - 1,
            "eos_token_id": self.vocab_size - 1,
            "tie_word_embeddings": true,
            "torch_dtype": "float32"
        });
        if heads.reward {
            v["architectures"] = json!(["GPT2ForSequenceClassification"]);
            v["num_labels"] = json!(1);
            v["id2label"] = json!({ "0": "LABEL_0" });
            v["label2id"] = json!({ "LABEL_0": 0 });
            v["pad_token_id"] = json!(self.vocab_size - 1);
        }
        serde_json::to_string_pretty(&v).expect("a JSON value always serialises")
    }

    /// Every parameter, in storage order, with its checkpoint name (no `transformer.` prefix),
    /// its shape in the Hugging Face layout, and what kind of parameter it is.
    pub fn param_specs(&self, heads: Heads) -> Vec<ParamSpec> {
        use ParamKind::*;
        let (v, t, c) = (self.vocab_size, self.n_positions, self.n_embd);
        let spec = |name: String, shape: Vec<usize>, kind| ParamSpec { name, shape, kind };
        let mut specs =
            vec![spec("wte.weight".into(), vec![v, c], Embedding), spec("wpe.weight".into(), vec![t, c], Embedding)];
        for i in 0..self.n_layer {
            let layer: [(&str, Vec<usize>, ParamKind); 12] = [
                ("ln_1.weight", vec![c], LayerNormGain),
                ("ln_1.bias", vec![c], Bias),
                ("attn.c_attn.weight", vec![c, 3 * c], Linear),
                ("attn.c_attn.bias", vec![3 * c], Bias),
                ("attn.c_proj.weight", vec![c, c], ResidualProjection),
                ("attn.c_proj.bias", vec![c], Bias),
                ("ln_2.weight", vec![c], LayerNormGain),
                ("ln_2.bias", vec![c], Bias),
                ("mlp.c_fc.weight", vec![c, 4 * c], Linear),
                ("mlp.c_fc.bias", vec![4 * c], Bias),
                ("mlp.c_proj.weight", vec![4 * c, c], ResidualProjection),
                ("mlp.c_proj.bias", vec![c], Bias),
            ];
            specs.extend(layer.into_iter().map(|(name, shape, kind)| spec(format!("h.{i}.{name}"), shape, kind)));
        }
        specs.push(spec("ln_f.weight".into(), vec![c], LayerNormGain));
        specs.push(spec("ln_f.bias".into(), vec![c], Bias));
        if heads.value {
            specs.push(spec("v_head.summary.weight".into(), vec![1, c], Head));
            specs.push(spec("v_head.summary.bias".into(), vec![1], Head));
        }
        if heads.reward {
            specs.push(spec("score.weight".into(), vec![1, c], Head));
        }
        specs
    }
}

/// What a parameter is: it decides its initialisation and whether AdamW decays it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// wte, wpe: normal(0, 0.02), decayed.
    Embedding,
    /// c_attn, c_fc weights: normal(0, 0.02), decayed.
    Linear,
    /// attn.c_proj and mlp.c_proj weights, which write into the residual stream:
    /// normal(0, 0.02/sqrt(2·n_layer)) (GPT-2's scaling), decayed.
    ResidualProjection,
    /// Biases and LayerNorm shifts: zero, not decayed.
    Bias,
    /// LayerNorm gains: one, not decayed.
    LayerNormGain,
    /// The value and reward heads: zero (a new head predicts 0 until trained), not decayed.
    Head,
}

impl ParamKind {
    /// Whether AdamW's weight decay applies (to the matrices, as in GPT-2 training).
    pub fn decays(self) -> bool {
        matches!(self, ParamKind::Embedding | ParamKind::Linear | ParamKind::ResidualProjection)
    }
}

/// One parameter of the model: checkpoint name, shape (Hugging Face layout), kind.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
}

impl ParamSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The fields of a Hugging Face GPT-2 `config.json` that decide whether and how we can run it
/// (the rest are ignored).
#[derive(serde::Deserialize)]
struct HfConfig {
    vocab_size: usize,
    n_positions: Option<usize>,
    n_ctx: Option<usize>,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    layer_norm_epsilon: Option<f64>,
    activation_function: Option<String>,
    n_inner: Option<usize>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
    reorder_and_upcast_attn: Option<bool>,
    add_cross_attention: Option<bool>,
    scale_attn_weights: Option<bool>,
}
