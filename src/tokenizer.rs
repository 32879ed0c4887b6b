//! Text ↔ token ids through a Hugging Face `tokenizer.json` (the `tokenizers` crate, offline),
//! and training a byte-level BPE tokenizer like GPT-2's on a corpus.

use crate::error::{Error, Result};
use crate::model::checkpoint::write_atomically;
use std::path::Path;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer as HfTokenizer};

/// GPT-2's end-of-text token: the separator between documents and the end of a response.
pub const EOS_TOKEN: &str = "<|endoftext|>";

pub struct Tokenizer {
    inner: HfTokenizer,
    origin: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({}, {} tokens)", self.origin, self.vocab_size())
    }
}

fn tok_err(origin: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{origin}: {what}: {e}"))
}

/// Moves `<|endoftext|>` from the first id (where the BPE trainer puts special tokens) to the
/// last, as in GPT-2 (50256 of 50257), shifting the others down by one: then the
/// `eos_token_id = vocab_size − 1` that config.json declares is true for our tokenizers too, and
/// `transformers` generation stops where ours does. Merges name tokens by string, so they hold.
fn eos_last(json: &str) -> std::result::Result<String, String> {
    let mut v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let vocab = v["model"]["vocab"].as_object_mut().ok_or("no model.vocab")?;
    let eos = vocab.get(EOS_TOKEN).and_then(serde_json::Value::as_u64).ok_or("no <|endoftext|> in the vocabulary")?;
    let last = vocab.len() as u64 - 1;
    for (token, id) in vocab.iter_mut() {
        let old = id.as_u64().ok_or("a non-integer id")?;
        *id = serde_json::json!(if token == EOS_TOKEN {
            last
        } else if old > eos {
            old - 1
        } else {
            old
        });
    }
    for added in v["added_tokens"].as_array_mut().ok_or("no added_tokens")? {
        if added["content"] == EOS_TOKEN {
            added["id"] = serde_json::json!(last);
        }
    }
    Ok(v.to_string())
}

impl Tokenizer {
    /// Loads a `tokenizer.json`.
    pub fn load(path: &Path) -> Result<Tokenizer> {
        let origin = path.display().to_string();
        if !path.exists() {
            return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no tokenizer.json here")));
        }
        let inner = HfTokenizer::from_file(path).map_err(|e| tok_err(&origin, "not a valid tokenizer.json", e))?;
        Ok(Tokenizer { inner, origin })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| tok_err(&self.origin, "encoding failed", e))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| tok_err(&self.origin, "decoding failed", e))
    }

    /// The id of `<|endoftext|>`, if the vocabulary has it.
    pub fn eos_id(&self) -> Option<u32> {
        self.inner.token_to_id(EOS_TOKEN)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Trains a byte-level BPE (GPT-2's scheme: every byte is a base token, so any text encodes)
    /// with `vocab_size` tokens, `<|endoftext|>` included, on the lines of `corpus`, and writes
    /// it to `out` (through a temporary file).
    pub fn train_byte_level_bpe(corpus: &Path, vocab_size: usize, out: &Path) -> Result<Tokenizer> {
        if !corpus.is_file() {
            return Err(Error::io(corpus, std::io::Error::new(std::io::ErrorKind::NotFound, "corpus file not found")));
        }
        let base = ByteLevel::alphabet().len() + 1;
        if vocab_size < base {
            return Err(Error::Input(format!(
                "--vocab-size {vocab_size} is below the {base} byte tokens plus {EOS_TOKEN}"
            )));
        }
        let trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(2)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(vec![AddedToken::from(EOS_TOKEN, true)])
            .build();
        let mut inner = HfTokenizer::new(BPE::default());
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevel::default()));
        inner.with_post_processor(Some(ByteLevel::default()));
        let origin = corpus.display().to_string();
        let mut trainer = TrainerWrapper::BpeTrainer(trainer);
        inner
            .train_from_files(&mut trainer, vec![origin.clone()])
            .map_err(|e| tok_err(&origin, "training failed", e))?;
        let json = inner.to_string(false).map_err(|e| tok_err(&origin, "serialising", e))?;
        let json = eos_last(&json).map_err(|e| tok_err(&origin, "placing <|endoftext|> last", e))?;
        write_atomically(out, json.as_bytes())?;
        Tokenizer::load(out)
    }
}
