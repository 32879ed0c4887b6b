//! Scores for a rollout's responses: a reward model on the GPU (a GPT-2 with a `score.weight`
//! head, as `GPT2ForSequenceClassification`, read at each sequence's last real token), or any
//! program as a long-lived child process speaking JSON lines.
//!
//! A reward that fails — a crash, a timeout, a non-number, NaN or ±∞, a missing line — is an
//! error naming the sample, never a silent zero.

use super::rollout::Sequences;
use crate::error::{Error, Result};
use crate::generate::{Generation, left_pad};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::rollout::last_token_scores;
use crate::model::checkpoint::TOKENIZER_FILE;
use crate::model::{Batch, Model};
use crate::tokenizer::Tokenizer;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// One response to score: its prompt and response as text.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sample {
    pub prompt: String,
    pub response: String,
}

/// The samples of a generation as text: each prompt and its completion (without the end token).
pub fn samples(generation: &Generation, tok: &Tokenizer) -> Result<Vec<Sample>> {
    (0..generation.prompts.len())
        .map(|b| {
            let response = tok.decode(generation.completion(b, tok.eos_id()))?;
            Ok(Sample { prompt: tok.decode(&generation.prompts[b])?, response })
        })
        .collect()
}

/// A reward model on the GPU.
pub struct RewardModel {
    model: Model,
    /// The reward model's own tokenizer when it differs from the policy's (responses are then
    /// decoded and re-encoded); `None` when the token ids can be used as they are.
    tokenizer: Option<Tokenizer>,
}

impl RewardModel {
    /// Loads `dir` (which must have a `score.weight` head); `policy_tokenizer` is the policy's
    /// tokenizer.json, compared with the reward model's.
    pub fn load(gpu: &Arc<Gpu>, dir: &Path, policy_tokenizer: &Path) -> Result<RewardModel> {
        let model = crate::model::load(gpu, dir)?;
        if !model.heads.reward {
            return Err(Error::Checkpoint(format!(
                "{}: not a reward model: it has no score.weight head (GPT2ForSequenceClassification's layout)",
                dir.display()
            )));
        }
        let mut rm = RewardModel::new(model)?;
        let own = dir.join(TOKENIZER_FILE);
        let same = match (std::fs::read(&own), std::fs::read(policy_tokenizer)) {
            (Ok(a), Ok(b)) => a == b,
            (Err(_), _) => true, // no tokenizer of its own: it reads the policy's ids
            (Ok(_), Err(e)) => return Err(Error::io(policy_tokenizer, e)),
        };
        if !same {
            rm.tokenizer = Some(Tokenizer::load(&own)?);
        }
        Ok(rm)
    }

    /// A reward model on the GPU that reads the policy's token ids as they are.
    pub fn new(model: Model) -> Result<RewardModel> {
        if !model.heads.reward {
            return Err(Error::Checkpoint("not a reward model: it has no score.weight head".into()));
        }
        Ok(RewardModel { model, tokenizer: None })
    }

    /// The score of each sequence: one forward, the head read at the last real token, one
    /// readback of B values.
    pub fn score(&self, seqs: &Sequences, samples: &[Sample]) -> Result<Vec<f32>> {
        let gpu = self.model.gpu();
        let mut rec = Recorder::new(gpu);
        let scores = self.record_scores(&mut rec, seqs, samples)?;
        rec.submit();
        let scores = gpu.download(&scores)?;
        check_scores(&scores, samples, "the reward model")?;
        Ok(scores)
    }

    /// Records the forward that scores each sequence into `rec`; the scores [B] stay on the GPU
    /// (the trainer reads them back with the rollout's statistics, saving a readback).
    pub fn record_scores(&self, rec: &mut Recorder, seqs: &Sequences, samples: &[Sample]) -> Result<Tensor> {
        let gpu = self.model.gpu();
        let batch = match &self.tokenizer {
            None => seqs.batch(&self.model)?,
            Some(tok) => {
                let max = self.model.config.n_positions;
                let mut rows = Vec::with_capacity(samples.len());
                for (s, ended) in samples.iter().zip(&seqs.ended) {
                    let mut ids = tok.encode(&format!("{}{}", s.prompt, s.response))?;
                    if let (true, Some(eos)) = (*ended, tok.eos_id()) {
                        ids.push(eos);
                    }
                    let cut = ids.len().saturating_sub(max);
                    rows.push(ids[cut..].to_vec());
                }
                let (ids, mask, t) = left_pad(&rows);
                Batch::new(gpu, &self.model.config, &ids, &mask, rows.len(), t)?
            }
        };
        let scores = gpu.tensor(&[batch.b], DType::F32)?;
        let acts = self.model.forward_without_logits(rec, &batch)?;
        let rewards = acts.rewards.as_ref().expect("a reward head was checked on load");
        last_token_scores(rec, &scores, rewards, &batch.mask)?;
        Ok(scores)
    }
}

fn describe(i: usize, s: &Sample) -> String {
    let short: String = s.prompt.chars().take(40).collect();
    format!("sample {i} (prompt {short:?})")
}

/// An error naming the first sample whose score is not finite, and who gave it.
pub fn check_scores(scores: &[f32], samples: &[Sample], who: &str) -> Result<()> {
    match scores.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(Error::Reward(format!("{who} gave {} for {}", scores[i], describe(i, &samples[i])))),
        None => Ok(()),
    }
}

/// A scoring program kept running for the whole run: it reads one JSON line
/// `{"prompt": …, "response": …}` per sample on stdin and answers one number per line on stdout.
pub struct RewardCommand {
    command: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<std::io::Result<String>>,
    timeout: Duration,
}

impl RewardCommand {
    /// Starts `command` through the shell (`sh -c`, or `cmd /C` on Windows).
    pub fn spawn(command: &str, timeout: Duration) -> Result<RewardCommand> {
        let mut cmd = if cfg!(windows) {
            let mut c = Command::new("cmd");
            c.args(["/C", command]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", command]);
            c
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::Reward(format!("could not start the reward command {command:?}: {e}")))?;
        let stdout = child.stdout.take().expect("stdout was piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Ok(RewardCommand { command: command.to_string(), child, stdin, lines, timeout })
    }

    fn exited(&mut self, answered: usize, n: usize) -> Error {
        // Its output is closed: give the process a moment to finish so its status can be named.
        let mut status = "closed its output".to_string();
        for _ in 0..100 {
            if let Ok(Some(s)) = self.child.try_wait() {
                status = format!("exited ({s})");
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Error::Reward(format!(
            "the reward command {:?} {status} after answering {answered} of {n} samples",
            self.command
        ))
    }

    /// One score per sample, in order; waits at most the timeout for each batch.
    pub fn score(&mut self, samples: &[Sample]) -> Result<Vec<f32>> {
        let n = samples.len();
        let mut text = String::new();
        for s in samples {
            text.push_str(&serde_json::to_string(s).expect("strings serialise"));
            text.push('\n');
        }
        let written = match self.stdin.as_mut() {
            Some(stdin) => stdin.write_all(text.as_bytes()).and_then(|_| stdin.flush()),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        };
        if written.is_err() {
            return Err(self.exited(0, n));
        }
        let deadline = Instant::now() + self.timeout;
        let mut scores = Vec::with_capacity(n);
        for (i, s) in samples.iter().enumerate() {
            let line = match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Ok(line)) => line,
                Ok(Err(e)) => return Err(Error::Reward(format!("reading the reward command's output: {e}"))),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(Error::Reward(format!(
                        "the reward command {:?} gave no score for {} within {:.0?} (--reward-timeout)",
                        self.command,
                        describe(i, s),
                        self.timeout
                    )));
                }
                Err(RecvTimeoutError::Disconnected) => return Err(self.exited(i, n)),
            };
            let value: f64 = line.trim().parse().map_err(|_| {
                Error::Reward(format!(
                    "the reward command {:?} answered {line:?} for {}: expected one number per line",
                    self.command,
                    describe(i, s)
                ))
            })?;
            scores.push(value as f32);
        }
        check_scores(&scores, samples, &format!("the reward command {:?}", self.command))?;
        Ok(scores)
    }
}

impl Drop for RewardCommand {
    fn drop(&mut self) {
        drop(self.stdin.take()); // EOF: a well-behaved scorer exits by itself
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the scores come from.
pub enum RewardSource {
    Model(Box<RewardModel>),
    Command(RewardCommand),
}

impl RewardSource {
    /// The scores [B] on the GPU: a reward model's forward recorded into `rec` (not yet run,
    /// nor checked: see `check_scores`), or the command's answers, checked and uploaded.
    pub fn record_scores(&mut self, rec: &mut Recorder, seqs: &Sequences, samples: &[Sample]) -> Result<Tensor> {
        match self {
            RewardSource::Model(m) => m.record_scores(rec, seqs, samples),
            RewardSource::Command(c) => rec.gpu().upload(&[samples.len()], &c.score(samples)?),
        }
    }

    /// Who gives the scores, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            RewardSource::Model(_) => "the reward model",
            RewardSource::Command(_) => "the reward command",
        }
    }
}
