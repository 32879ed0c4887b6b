//! The generation engine: batched, KV-cached sampling on the GPU (`ppo-wgpu generate`, and the
//! rollouts of `train`).
//!
//! Prompts of different lengths are left-padded into one batch; one prefill pass over the
//! distinct prompts fills the KV cache (rows with the same prompt share theirs) and samples the
//! first token, then one decode step per token. The sampled tokens stay
//! on the GPU (each step's token is the next step's input) and are read back once at the end;
//! every `check_every` steps the host reads the B "ended" flags to stop early once every row
//! has drawn its end-of-sequence token.

use crate::error::{Error, Result};
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::f16_weights::WeightFormat;
use crate::kernels::kv_cache::KvFormat;
use crate::kernels::ppo::logprob_entropy;
use crate::kernels::sampling::{LogitRows, SamplerState, sample_tokens};
use crate::model::checkpoint::TOKENIZER_FILE;
use crate::model::{Batch, Model};
use crate::tokenizer::Tokenizer;
use std::collections::HashMap;
use std::path::PathBuf;

pub use crate::kernels::sampling::Sampling;

#[derive(Clone, Copy, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// The random stream of row b is (seed, first_sample + b, step): a sample draws the same
    /// tokens whatever batch it is generated in.
    pub first_sample: usize,
    /// The token that ends a row (its later positions are padding).
    pub eos: Option<u32>,
    /// Read the ended flags every this many steps to stop early (0: never, one readback in all).
    pub check_every: usize,
    /// The KV cache's format; None: the adapter's (chosen by measurement: f16 halves the
    /// cache and changes the sampled distribution by f16's rounding of keys and values).
    pub kv_format: Option<KvFormat>,
    /// What the decode steps read their weights in; None: the adapter's (chosen by
    /// measurement: f16 halves the bytes each step reads and changes the sampled distribution
    /// by f16's rounding of the weights). The prefill reads the f32 weights either way.
    pub weight_format: Option<WeightFormat>,
}

/// What a batch of prompts produced.
#[derive(Clone, Debug)]
pub struct Generation {
    /// P: the padded prompt length (every row's prompt ends at position P − 1).
    pub prompt_len: usize,
    /// Per row, the real prompt tokens.
    pub prompts: Vec<Vec<u32>>,
    /// Per row, the sampled tokens up to and including the first `eos` (or all of them).
    pub responses: Vec<Vec<u32>>,
    /// Decode steps run (≤ max_new_tokens; fewer when every row ended early).
    pub steps: usize,
}

impl Generation {
    /// Whether row b ended with the end-of-sequence token.
    pub fn ended(&self, b: usize, eos: Option<u32>) -> bool {
        eos.is_some() && self.responses[b].last().copied() == eos
    }

    /// Row b's response without its end-of-sequence token: the text's tokens.
    pub fn completion(&self, b: usize, eos: Option<u32>) -> &[u32] {
        let r = &self.responses[b];
        if self.ended(b, eos) { &r[..r.len() - 1] } else { r }
    }
}

/// Left-pads `prompts` into [B, P] ids and mask (pad id 0, mask 0).
pub fn left_pad(prompts: &[Vec<u32>]) -> (Vec<u32>, Vec<u32>, usize) {
    let p = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let (mut ids, mut mask) = (vec![0u32; prompts.len() * p], vec![0u32; prompts.len() * p]);
    for (row, prompt) in prompts.iter().enumerate() {
        let start = row * p + p - prompt.len();
        ids[start..start + prompt.len()].copy_from_slice(prompt);
        mask[start..start + prompt.len()].iter_mut().for_each(|m| *m = 1);
    }
    (ids, mask, p)
}

/// Samples up to `max_new_tokens` tokens after each prompt.
/// The distinct prompts, in the order they first appear, and for each row the index of its
/// prompt among them.
pub fn distinct_prompts(prompts: &[Vec<u32>]) -> (Vec<Vec<u32>>, Vec<u32>) {
    let mut index: HashMap<&[u32], u32> = HashMap::new();
    let mut distinct = Vec::new();
    let rows = prompts
        .iter()
        .map(|prompt| {
            *index.entry(prompt.as_slice()).or_insert_with(|| {
                distinct.push(prompt.clone());
                distinct.len() as u32 - 1
            })
        })
        .collect();
    (distinct, rows)
}

pub fn generate(model: &Model, prompts: &[Vec<u32>], opts: &GenerateOptions) -> Result<Generation> {
    opts.sampling.validate()?;
    let gpu = model.gpu();
    // The sampler reads the V real columns of rows Vp wide.
    let (b, v, vp) = (prompts.len(), model.config.vocab_size, model.config.padded_vocab_size());
    if b == 0 {
        return Err(Error::Input("generate needs at least one prompt".into()));
    }
    if let Some(row) = prompts.iter().position(Vec::is_empty) {
        return Err(Error::Input(format!("prompt {row} is empty: generation needs at least one prompt token")));
    }
    let (ids, mask, p) = left_pad(prompts);
    let steps = opts.max_new_tokens;
    let t_max = p + steps;
    if t_max > model.config.n_positions {
        return Err(Error::Input(format!(
            "a prompt of {p} tokens plus {steps} new tokens exceeds the model's n_positions {}",
            model.config.n_positions
        )));
    }
    if steps == 0 {
        let responses = vec![Vec::new(); b];
        return Ok(Generation { prompt_len: p, prompts: prompts.to_vec(), responses, steps: 0 });
    }
    // Rows with the same prompt (GRPO's and RLOO's groups, `--num-samples`) share its prefill.
    let (distinct, rows) = distinct_prompts(prompts);
    let (batch, rows) = if distinct.len() < b {
        let (d_ids, d_mask, _) = left_pad(&distinct);
        (Batch::new(gpu, &model.config, &d_ids, &d_mask, distinct.len(), p)?, Some(gpu.upload_u32(&[b], &rows)?))
    } else {
        (Batch::new(gpu, &model.config, &ids, &mask, b, p)?, None)
    };
    let cache_mask: Vec<u32> = (0..b)
        .flat_map(|row| mask[row * p..(row + 1) * p].iter().copied().chain(std::iter::repeat_n(1, steps)))
        .collect();
    let cache = match opts.kv_format {
        Some(format) => model.kv_cache_with_format(b, t_max, &cache_mask, format)?,
        None => model.kv_cache(b, t_max, &cache_mask)?,
    };
    let scratch = model.decode_scratch(b)?;
    let lens: Vec<u32> = prompts.iter().map(|x| x.len() as u32).collect();
    let state = SamplerState::new(gpu, &lens, steps)?;
    let pad = opts.eos.unwrap_or(0);
    let sample = |rec: &mut Recorder, logits: &Tensor, rows: LogitRows, step: usize| {
        sample_tokens(rec, logits, rows, &state, opts.sampling, opts.seed, opts.first_sample, step, opts.eos, pad)
    };

    let mut rec = Recorder::new(gpu);
    let weights = match opts.weight_format {
        Some(format) => model.decode_weights_in(&mut rec, format)?,
        None => model.decode_weights(&mut rec, b)?,
    };
    model.prefill(&mut rec, &cache, &batch, rows.as_ref(), &scratch)?;
    sample(&mut rec, &scratch.logits, LogitRows { rows: b, v, stride: vp, base: 0 }, 0)?;
    let mut ran = steps;
    for step in 1..steps {
        if opts.check_every > 0 && step % opts.check_every == 0 && opts.eos.is_some() {
            rec.flush();
            if gpu.download_u32(&state.done)?.iter().all(|&d| d != 0) {
                ran = step;
                break;
            }
        }
        model.decode_step(&mut rec, &weights, &cache, &scratch, &state.next_ids, &state.next_pos, p + step - 1)?;
        sample(&mut rec, &scratch.logits, LogitRows { rows: b, v, stride: vp, base: 0 }, step)?;
    }
    rec.submit();
    let all = gpu.download_u32(&state.tokens)?;
    let responses = (0..b)
        .map(|row| {
            let sampled = &all[row * steps..row * steps + ran];
            let end = opts.eos.and_then(|e| sampled.iter().position(|&t| t == e)).map_or(ran, |i| i + 1);
            sampled[..end].to_vec()
        })
        .collect();
    Ok(Generation { prompt_len: p, prompts: prompts.to_vec(), responses, steps: ran })
}

/// The options of `ppo-wgpu generate` (also its command-line arguments).
#[derive(Clone, Debug, clap::Args)]
pub struct GenerateArgs {
    /// Model directory (with tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// The prompt.
    #[arg(long, conflicts_with = "prompts", required_unless_present = "prompts")]
    pub prompt: Option<String>,
    /// Prompts from a file: one per line, or JSONL {"prompt": …}; all generated as one batch.
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// New tokens per completion (completions end earlier at <|endoftext|>) [default: 48, or
    /// what n_positions leaves after the longest prompt when that is less].
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Softmax temperature (0: greedy).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample among the most likely tokens holding probability p.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Samples per prompt.
    #[arg(long, default_value_t = 1)]
    pub num_samples: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// One JSON line per sample: prompt, completion, tokens, logprob (Σ log p of the completion
    /// tokens at the sampling temperature, or at 1 when greedy).
    #[arg(long)]
    pub json: bool,
}

/// Runs `ppo-wgpu generate`: prints each completion (without special tokens), or JSON lines.
pub fn run(gpu: &std::sync::Arc<crate::gpu::Gpu>, args: &GenerateArgs) -> Result<()> {
    let model = crate::model::load(gpu, &args.model)?;
    let tok = Tokenizer::load(&args.model.join(TOKENIZER_FILE))?;
    let texts = match (&args.prompt, &args.prompts) {
        (Some(p), _) => vec![p.clone()],
        (None, Some(path)) => crate::ppo::trainer::read_prompts(path)?,
        (None, None) => return Err(Error::Input("generate needs --prompt TEXT or --prompts FILE".into())),
    };
    if args.num_samples == 0 {
        return Err(Error::Input("--num-samples must be positive".into()));
    }
    let encoded: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t)).collect::<Result<_>>()?;
    let n_positions = model.config.n_positions;
    let longest = encoded.iter().map(Vec::len).max().unwrap_or(0);
    let max_new_tokens = args.max_new_tokens.unwrap_or(48.min(n_positions.saturating_sub(longest)).max(1));
    if max_new_tokens >= n_positions {
        return Err(Error::Input(format!(
            "--max-new-tokens {max_new_tokens} leaves no room for a prompt in n_positions {n_positions}"
        )));
    }
    // Prompts longer than the room left keep their last tokens.
    let room = n_positions - max_new_tokens;
    let mut prompts = Vec::new();
    for ids in encoded {
        let ids = ids[ids.len().saturating_sub(room)..].to_vec();
        prompts.extend(std::iter::repeat_n(ids, args.num_samples));
    }
    let eos = tok.eos_id();
    let opts = GenerateOptions {
        max_new_tokens,
        sampling: Sampling { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p },
        seed: args.seed,
        first_sample: 0,
        eos,
        check_every: 16,
        kv_format: None,
        weight_format: None,
    };
    let generation = {
        let _phase = gpu.phase("generation");
        generate(&model, &prompts, &opts)?
    };
    let logprobs = if args.json {
        let _phase = gpu.phase("log-probs of the completions");
        let temperature = if args.temperature > 0.0 { args.temperature } else { 1.0 };
        Some(completion_logprobs(&model, &generation, max_new_tokens, eos, temperature)?)
    } else {
        None
    };
    for (row, response) in generation.responses.iter().enumerate() {
        let completion = tok.decode(generation.completion(row, eos))?;
        let prompt = &texts[row / args.num_samples];
        match &logprobs {
            Some(lp) => println!(
                "{}",
                serde_json::json!({ "prompt": prompt, "completion": completion, "tokens": response, "logprob": lp[row] })
            ),
            None => println!("{prompt}{completion}"),
        }
    }
    Ok(())
}

/// Σ log softmax(z/τ) of each row's response tokens: one forward over the whole sequences.
fn completion_logprobs(
    model: &Model,
    generation: &Generation,
    response_len: usize,
    eos: Option<u32>,
    temperature: f32,
) -> Result<Vec<f32>> {
    let seqs = crate::ppo::rollout::Sequences::new(generation, response_len, eos);
    let gpu = model.gpu();
    let (b, l, vp) = (seqs.b, seqs.l, model.config.padded_vocab_size());
    // The LM head runs where response tokens are predicted only.
    let window = seqs.head_window();
    let w = window.len;
    let tokens = gpu.upload_u32(&[b * w], &window.slice(&seqs.input_ids, l))?;
    let (logprobs, entropy) = (gpu.tensor(&[b * w], DType::F32)?, gpu.tensor(&[b * w], DType::F32)?);
    let mut rec = Recorder::new(gpu);
    let acts = model.forward_window(&mut rec, &seqs.batch(model)?, window)?;
    logprob_entropy(&mut rec, &logprobs, &entropy, &acts.logits()?.reshape(&[b * w, vp])?, &tokens, w, temperature)?;
    rec.submit();
    let lp = window.expand(&gpu.download(&logprobs)?, l);
    Ok((0..b).map(|row| (0..l).map(|j| lp[row * l + j] * seqs.response_mask[row * l + j]).sum()).collect())
}
