//! The `ppo-wgpu` command line: each subcommand is a thin call into the library.

use clap::{Parser, Subcommand};
use ppo_wgpu::gpu::{self, Gpu};
use ppo_wgpu::model::checkpoint::TOKENIZER_FILE;
use ppo_wgpu::tokenizer::Tokenizer;
use ppo_wgpu::{Result, model, score, selfcheck};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ppo-wgpu",
    version,
    about = "RLHF with PPO for GPT-style language models, on any Vulkan, Metal or DX12 GPU"
)]
struct Cli {
    /// Use the GPU adapter whose name contains NAME (case-insensitive); see `ppo-wgpu info`.
    #[arg(long, global = true, value_name = "NAME", env = gpu::ADAPTER_ENV)]
    adapter: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the chosen adapter, its backend and driver, the limits the kernels use, and every
    /// adapter found.
    Info,
    /// Run every kernel family once on the chosen adapter against its CPU reference.
    Selfcheck,
    /// Print per-token log-probabilities, values and the reward of one sequence as JSON.
    Score {
        /// Model directory (config.json, model.safetensors, tokenizer.json for --text).
        #[arg(long, value_name = "DIR")]
        model: PathBuf,
        /// Token ids, comma-separated.
        #[arg(long, value_delimiter = ',', conflicts_with = "text", required_unless_present = "text")]
        ids: Vec<u32>,
        /// Text, tokenized with the model's tokenizer.json.
        #[arg(long)]
        text: Option<String>,
        /// Sampling temperature τ: log-probabilities are those of softmax(logits/τ).
        #[arg(long, default_value_t = 1.0)]
        temperature: f32,
    },
    /// Train a byte-level BPE tokenizer (GPT-2's scheme) on a text corpus.
    TokenizerTrain {
        /// Training text, one document or line after another.
        #[arg(long, value_name = "FILE")]
        corpus: PathBuf,
        /// Vocabulary size, the 256 byte tokens and <|endoftext|> included.
        #[arg(long, default_value_t = 512)]
        vocab_size: usize,
        /// Where to write tokenizer.json.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    // Commands that need no GPU.
    if let Command::TokenizerTrain { corpus, vocab_size, out } = &cli.command {
        let tok = Tokenizer::train_byte_level_bpe(corpus, *vocab_size, out)?;
        eprintln!("wrote {} ({} tokens)", out.display(), tok.vocab_size());
        return Ok(ExitCode::SUCCESS);
    }
    let gpu = Gpu::new(cli.adapter.as_deref())?;
    match cli.command {
        Command::TokenizerTrain { .. } => unreachable!("handled above"),
        Command::Score { model: dir, ids, text, temperature } => {
            let model = model::load(&gpu, &dir)?;
            let ids = match text {
                Some(text) => Tokenizer::load(&dir.join(TOKENIZER_FILE))?.encode(&text)?,
                None => ids,
            };
            let score = score::score(&model, &ids, temperature)?;
            println!("{}", score.to_json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Info => {
            info(&gpu);
            Ok(ExitCode::SUCCESS)
        }
        Command::Selfcheck => {
            info(&gpu);
            println!();
            let checks = selfcheck::run(&gpu)?;
            println!("{:<32} {:>12} {:>10}  result", "kernel family", "worst/tol", "ms");
            for c in &checks {
                println!(
                    "{:<32} {:>12.3} {:>10.1}  {}",
                    c.name,
                    c.worst,
                    c.millis,
                    if c.passed() { "ok" } else { "FAILED" }
                );
            }
            let failed = checks.iter().filter(|c| !c.passed()).count();
            if failed == 0 {
                println!("all {} kernel families match their CPU references", checks.len());
                Ok(ExitCode::SUCCESS)
            } else {
                println!("{failed} kernel families FAILED on {}", gpu.info.name);
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

fn info(gpu: &Gpu) {
    println!("adapter:  {}", gpu.info.name);
    println!("backend:  {:?} ({:?})", gpu.info.backend, gpu.info.device_type);
    println!("driver:   {} {}", gpu.info.driver, gpu.info.driver_info);
    println!("matmul:   {:?} kernel", gpu.matmul_variant);
    println!("limits:");
    for (name, value) in gpu.limit_rows() {
        println!("  {name:<40} {value}");
    }
    let all = gpu::list_adapters();
    println!("adapters found ({}; choose with --adapter NAME or ${}):", all.len(), gpu::ADAPTER_ENV);
    for a in all {
        println!("  {} ({:?}, {:?})", a.name, a.backend, a.device_type);
    }
}
