//! The crate's error type: every message names the thing that was wrong and what was expected.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// No adapter matched, or the system has no Vulkan/Metal/DX12 driver at all.
    NoAdapter(String),
    /// The adapter lacks a limit or feature the kernels need.
    MissingCapability(String),
    /// `request_device` failed, or the device was lost.
    Device(String),
    /// wgpu rejected a shader, a pipeline or a command (a bug in this crate, or out of memory).
    Gpu(String),
    /// A tensor has a shape that does not fit the operation.
    Shape(String),
    /// An input value is out of range (e.g. a token id >= vocab size).
    Input(String),
    /// Reading back from the GPU failed.
    Readback(String),
    /// A checkpoint, config or data file that is malformed or does not fit the model.
    Checkpoint(String),
    /// A data file (rollout batch, JSONL, corpus) that is malformed.
    Data(String),
    /// A tokenizer that cannot be loaded, trained or used.
    Tokenizer(String),
    /// The reward model or reward command failed or gave an unusable score.
    Reward(String),
    /// Training diverged (a non-finite loss, gradient or reward).
    Diverged(String),
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoAdapter(msg) => write!(f, "no usable GPU adapter: {msg}"),
            Error::MissingCapability(msg) => write!(f, "GPU adapter lacks a capability: {msg}"),
            Error::Device(msg) => write!(f, "GPU device failure: {msg}"),
            Error::Gpu(msg) => write!(f, "GPU error: {msg}"),
            Error::Shape(msg) => write!(f, "shape mismatch: {msg}"),
            Error::Input(msg) => write!(f, "bad input: {msg}"),
            Error::Readback(msg) => write!(f, "GPU readback failed: {msg}"),
            Error::Checkpoint(msg) => write!(f, "bad checkpoint: {msg}"),
            Error::Data(msg) => write!(f, "bad data file: {msg}"),
            Error::Tokenizer(msg) => write!(f, "tokenizer: {msg}"),
            Error::Reward(msg) => write!(f, "reward failed: {msg}"),
            Error::Diverged(msg) => write!(f, "training diverged: {msg}"),
            Error::Io { path, source } => write!(f, "{path}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Error {
        Error::Io { path: path.display().to_string(), source }
    }
}

/// Returns `Error::Shape` with the message unless `cond` holds.
pub fn ensure_shape(cond: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if cond { Ok(()) } else { Err(Error::Shape(msg())) }
}
