//! Checkpoint I/O in the Hugging Face GPT-2 layout: a directory with `config.json` and
//! `model.safetensors` (and usually `tokenizer.json`).
//!
//! Loading accepts both tensor-name forms (`wte.weight` and `transformer.wte.weight`), an
//! `lm_head.weight` (tied to `wte`, so only its shape is checked), the causal-mask buffers old
//! checkpoints carry (`h.N.attn.bias`, `h.N.attn.masked_bias`), and f32, f16 or bf16 tensors.
//! Saving writes each file to a temporary name and renames it, so a crash never leaves a
//! half-written checkpoint.

use super::config::{GptConfig, Heads, ParamSpec};
use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A model's weights on the host, in `GptConfig::param_specs` order.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub config: GptConfig,
    pub heads: Heads,
    /// (name without `transformer.`, shape, values).
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Checkpoint {
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.tensors.iter().find(|(n, _, _)| n == name).map(|(_, _, v)| v.as_slice())
    }
}

/// Converts a tensor's bytes to f32, naming the tensor if its dtype is not a float we read.
fn to_f32(name: &str, view: &TensorView) -> Result<Vec<f32>> {
    let bytes = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => {
            return Err(Error::Checkpoint(format!("tensor {name} has dtype {other:?}; expected F32, F16 or BF16")));
        }
    })
}

/// Tensors a GPT-2 checkpoint may hold that we do not use.
fn is_ignored(name: &str) -> bool {
    name.ends_with(".attn.bias") && name.starts_with("h.") && !name.contains("c_attn")
        || name.ends_with(".attn.masked_bias")
}

/// Loads `dir/config.json` and `dir/model.safetensors`.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let config = GptConfig::load(&dir.join(CONFIG_FILE))?;
    let path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let origin = path.display().to_string();
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::Checkpoint(format!("{origin}: not a valid safetensors file: {e}")))?;

    let mut found: HashMap<String, TensorView> = HashMap::new();
    let mut lm_head = None;
    for (name, view) in st.tensors() {
        let short = name.strip_prefix("transformer.").unwrap_or(&name).to_string();
        if short == "lm_head.weight" {
            lm_head = Some(view);
        } else if !is_ignored(&short) {
            found.insert(short, view);
        }
    }
    let heads =
        Heads { value: found.contains_key("v_head.summary.weight"), reward: found.contains_key("score.weight") };
    let specs = config.param_specs(heads);
    let mut tensors = Vec::with_capacity(specs.len());
    for ParamSpec { name, shape, .. } in &specs {
        let view = found.remove(name).ok_or_else(|| {
            Error::Checkpoint(format!(
                "{origin}: missing tensor {name} (expected shape {shape:?} for the config in {CONFIG_FILE})"
            ))
        })?;
        if view.shape() != shape.as_slice() {
            return Err(Error::Checkpoint(format!(
                "{origin}: tensor {name} has shape {:?}, but the config needs {shape:?}",
                view.shape()
            )));
        }
        tensors.push((name.clone(), shape.clone(), to_f32(name, &view)?));
    }
    if let Some(view) = lm_head {
        let want = [config.vocab_size, config.n_embd];
        if view.shape() != want {
            return Err(Error::Checkpoint(format!(
                "{origin}: tensor lm_head.weight has shape {:?}, but the config needs {want:?}",
                view.shape()
            )));
        }
    }
    if let Some(extra) = found.keys().min() {
        return Err(Error::Checkpoint(format!(
            "{origin}: unexpected tensor {extra} ({} not used by a GPT-2 with n_layer {}); does {CONFIG_FILE} match the weights?",
            if found.len() > 1 { format!("and {} more", found.len() - 1) } else { "it is".into() },
            config.n_layer
        )));
    }
    Ok(Checkpoint { config, heads, tensors })
}

/// A name no other writer uses at the same time: `.{stem}.tmp-{pid}-{counter}` beside `path`.
fn temporary_sibling(path: &Path) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Writes `bytes` to `path` and flushes them to the disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    file.write_all(bytes).and_then(|_| file.sync_all()).map_err(|e| Error::io(path, e))
}

/// Flushes a directory's entries (a rename inside it) to the disk, where the platform can.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all(); // not supported everywhere (Windows); the rename is still atomic
    }
}

/// Writes `bytes` to `path` through a uniquely named temporary file in the same directory,
/// synced, then renamed over `path` (creating the directory if needed): a reader sees the old
/// file or the new one, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = temporary_sibling(path);
    if let Err(e) = write_synced(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(dir);
    Ok(())
}

/// Writes a whole directory of `files` (name, bytes) at `dir`: into a temporary directory beside
/// it, each file synced, then renamed into place (an existing `dir` is moved aside first and
/// removed after). A crash at any point leaves either the old directory or the new one whole,
/// plus at most a leftover temporary directory (named `.NAME.tmp-…`), never a mix of both.
pub fn write_dir_atomically(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    let parent = dir.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = temporary_sibling(dir);
    let written = (|| {
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        for (name, bytes) in files {
            write_synced(&tmp.join(name), bytes)?;
        }
        sync_dir(&tmp);
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = if dir.exists() {
        let old = temporary_sibling(dir);
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
        Some(old)
    } else {
        None
    };
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    sync_dir(parent);
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(())
}

/// Copies the tokenizer file `from` into model directory `dir` as tokenizer.json (atomically).
pub fn copy_tokenizer(from: &Path, dir: &Path) -> Result<()> {
    let bytes = std::fs::read(from).map_err(|e| Error::io(from, e))?;
    write_atomically(&dir.join(TOKENIZER_FILE), &bytes)
}

/// The name a parameter is saved under: `transformer.` + name for the body, as
/// `GPT2LMHeadModel` writes it; the value and reward heads under their own names.
pub fn saved_name(name: &str) -> String {
    if name.starts_with("v_head.") || name == "score.weight" { name.to_string() } else { format!("transformer.{name}") }
}

/// One tensor for `safetensors_bytes`: name, dtype, shape, little-endian bytes.
pub type Entry<'a> = (String, Dtype, Vec<usize>, &'a [u8]);

/// An F32 entry.
pub fn f32_entry<'a>(name: impl Into<String>, shape: Vec<usize>, values: &'a [f32]) -> Entry<'a> {
    (name.into(), Dtype::F32, shape, bytemuck::cast_slice(values))
}

/// The crate's one safetensors writer: the file bytes for `entries` (each shape checked against
/// its bytes), with optional metadata. `what` names the file in errors.
pub fn safetensors_bytes(
    entries: Vec<Entry>,
    metadata: Option<HashMap<String, String>>,
    what: &str,
) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView)> = entries
        .into_iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(dtype, shape, data)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Shape(format!("{what}: tensor {name}: {e}")))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, metadata).map_err(|e| Error::Shape(format!("{what}: {e}")))
}

/// The `model.safetensors` bytes of a checkpoint: the body under `transformer.` names (as
/// `GPT2LMHeadModel` writes it), the value and reward heads under their own names; f32, or f16
/// when `f16` (half the size, for shipped weights; loading converts back).
pub fn weights_bytes(ck: &Checkpoint, f16: bool) -> Result<Vec<u8>> {
    let halves: Vec<Vec<u8>> = match f16 {
        true => ck
            .tensors
            .iter()
            .map(|(_, _, values)| values.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect())
            .collect(),
        false => Vec::new(),
    };
    let entries = ck
        .tensors
        .iter()
        .enumerate()
        .map(|(i, (name, shape, values))| match f16 {
            true => (saved_name(name), Dtype::F16, shape.clone(), halves[i].as_slice()),
            false => f32_entry(saved_name(name), shape.clone(), values),
        })
        .collect();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors_bytes(entries, Some(metadata), WEIGHTS_FILE)
}

/// The files of a model directory: `config.json` and `model.safetensors` (f32).
pub fn model_files(ck: &Checkpoint) -> Result<Vec<(&'static str, Vec<u8>)>> {
    model_files_as(ck, false)
}

/// As `model_files`, with the weights in f16 when `f16`.
pub fn model_files_as(ck: &Checkpoint, f16: bool) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let config = ck.config.to_json_with_heads(ck.heads).into_bytes();
    Ok(vec![(WEIGHTS_FILE, weights_bytes(ck, f16)?), (CONFIG_FILE, config)])
}

/// Saves a checkpoint's weights and config into `dir` (each file atomically; other files in
/// `dir` are left alone). For a directory written as a whole, see `write_dir_atomically`.
pub fn save(dir: &Path, ck: &Checkpoint) -> Result<()> {
    for (name, bytes) in model_files(ck)? {
        write_atomically(&dir.join(name), &bytes)?;
    }
    Ok(())
}

/// The checkpoint directory a `--resume DIR` means: `dir` itself when it holds `state_file`,
/// else the run directory's latest `checkpoint-N` that does.
pub fn to_resume(dir: &Path, state_file: &str) -> Result<PathBuf> {
    if dir.join(state_file).is_file() {
        return Ok(dir.to_path_buf());
    }
    let latest = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_str()?.strip_prefix("checkpoint-")?.parse::<usize>().ok()?;
            e.path().join(state_file).is_file().then_some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n);
    latest.map(|(_, p)| p).ok_or_else(|| {
        Error::Checkpoint(format!(
            "{}: neither a checkpoint ({state_file}) nor a run with checkpoint-N directories",
            dir.display()
        ))
    })
}
