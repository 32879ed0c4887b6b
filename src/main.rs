//! The `ppo-wgpu` command line: each subcommand is a thin call into the library.

use clap::{Parser, Subcommand};
use ppo_wgpu::gpu::{self, Gpu, MatmulVariant};
use ppo_wgpu::kernels::ppo::STAT_NAMES;
use ppo_wgpu::model::checkpoint::TOKENIZER_FILE;
use ppo_wgpu::tokenizer::Tokenizer;
use ppo_wgpu::{Result, demo, generate, model, ppo, reward_train, score, selfcheck, sft};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ppo-wgpu",
    version,
    args_override_self = true,
    about = "RLHF with PPO for GPT-style language models, on any Vulkan, Metal or DX12 GPU"
)]
struct Cli {
    /// Use the GPU adapter whose name contains NAME (case-insensitive); see `ppo-wgpu info`.
    #[arg(long, global = true, value_name = "NAME", env = gpu::ADAPTER_ENV)]
    adapter: Option<String>,

    /// Print, at the end, the GPU time of every kernel (timestamp queries), the wall-clock time
    /// of each phase and the dispatches, submits and readbacks per iteration (on stderr).
    #[arg(long, global = true)]
    profile: bool,

    /// With --profile: also write the report as JSON to FILE, and a Chrome trace of one
    /// iteration (chrome://tracing, ui.perfetto.dev) beside it as FILE with .trace.json.
    #[arg(long, global = true, value_name = "FILE")]
    profile_out: Option<PathBuf>,

    /// With no command: the demo (PPO on the shipped models; `ppo-wgpu demo --help`).
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the chosen adapter, its backend and driver, the limits the kernels use, and every
    /// adapter found.
    Info,
    /// Run every kernel family once on the chosen adapter against its CPU reference.
    Selfcheck,
    /// The default run: PPO on the shipped models, before/after samples, metrics and a plot.
    Demo(demo::DemoOptions),
    /// Regenerate the shipped demo models (weights/) from nothing, deterministically.
    PrepareDemo(demo::prepare::PrepareOptions),
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
    /// Write a new model with GPT-2's random initialisation.
    Init {
        /// Architecture: "tiny", "gpt2-small", or a config.json file.
        #[arg(long, default_value = "tiny")]
        config: String,
        /// tokenizer.json to ship with the model; the vocabulary size follows it.
        #[arg(long, value_name = "FILE")]
        tokenizer: PathBuf,
        /// Output model directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Add a zero-initialised value head (v_head.summary.*).
        #[arg(long)]
        value_head: bool,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Supervised fine-tuning with token cross-entropy on JSONL ({"prompt","response"} or {"text"}).
    Sft(sft::SftOptions),
    /// Sample continuations of prompts on the GPU (KV-cached, batched).
    Generate(generate::GenerateArgs),
    /// Train a reward model (a score head) on preference pairs with the Bradley–Terry loss.
    RewardTrain(reward_train::RewardTrainOptions),
    /// RLHF with PPO: generate, score, penalise drift from the reference, update; repeat.
    Train(Box<ppo::trainer::TrainOptions>),
    /// Run the PPO update on a rollout batch file and write the new checkpoint.
    Update(ppo::update::UpdateArgs),
    /// Print the GPU memory a training step needs (weights, gradients, AdamW state, activations,
    /// the frozen reference).
    Memory {
        /// Architecture: "tiny", "gpt2-small", or a config.json file.
        #[arg(long, default_value = "gpt2-small")]
        config: String,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long, default_value_t = 256)]
        seq_len: usize,
        /// The algorithm: PPO trains a value head; GRPO and RLOO none.
        #[arg(long, value_enum, default_value_t = ppo::algo::Algo::Ppo)]
        algo: ppo::algo::Algo,
        /// β: 0 needs no reference model [default: the algorithm's, as in `train`].
        #[arg(long)]
        beta: Option<f32>,
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
    // On a headless Linux machine Mesa's device-select layer tries to reach a Wayland display
    // and prints "error: XDG_RUNTIME_DIR is invalid or not set" several times; the layer only
    // reorders adapters, which `Gpu::new` does itself, so turn it off there. (Set before any
    // thread exists.)
    if cfg!(target_os = "linux")
        && std::env::var_os("XDG_RUNTIME_DIR").is_none()
        && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        // SAFETY: single-threaded at this point; nothing else reads the environment concurrently.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
    let cli = match with_config_file(std::env::args().collect()) {
        Ok(args) => Cli::parse_from(args),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let command = cli.command.unwrap_or_else(|| Command::Demo(demo::DemoOptions::defaults()));
    // Commands that need no GPU.
    match &command {
        Command::TokenizerTrain { corpus, vocab_size, out } => {
            let tok = Tokenizer::train_byte_level_bpe(corpus, *vocab_size, out)?;
            eprintln!("wrote {} ({} tokens)", out.display(), tok.vocab_size());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Init { config, tokenizer, out, value_head, seed } => {
            let tok = Tokenizer::load(tokenizer)?;
            let mut cfg = named_config(config)?;
            cfg.vocab_size = tok.vocab_size();
            cfg.validate(config)?;
            let heads = model::Heads { value: *value_head, reward: false };
            model::checkpoint::save(out, &model::init::init_weights(&cfg, heads, *seed))?;
            model::checkpoint::copy_tokenizer(tokenizer, out)?;
            let n = model::gpt::ParamLayout::new(&cfg, heads).count();
            eprintln!("wrote {} ({n} parameters, {cfg:?})", out.display());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Memory { config, batch_size, seq_len, algo, beta } => {
            let cfg = named_config(config)?;
            let heads = model::Heads { value: algo.has_value_head(), reward: false };
            let m = model::gpt::memory_estimate(
                &cfg,
                heads,
                *batch_size,
                *seq_len,
                |_, _, _| MatmulVariant::WorkgroupTiled,
                false,
            );
            let cpu = model::gpt::memory_estimate(
                &cfg,
                heads,
                *batch_size,
                *seq_len,
                |_, _, _| MatmulVariant::RegisterTiled,
                false,
            );
            let tex =
                model::gpt::memory_estimate(&cfg, heads, *batch_size, *seq_len, |_, _, _| MatmulVariant::Texture, true);
            let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
            let n = model::gpt::ParamLayout::new(&cfg, heads).count();
            let beta = beta.unwrap_or(algo.default_beta());
            // The frozen reference: its weights, and its forward's activations (the rollout runs
            // it, not during the update, so only the weights add to the training step's peak).
            let reference =
                if beta != 0.0 { 4 * model::gpt::ParamLayout::new(&cfg, model::Heads::default()).count() } else { 0 };
            let head = if heads.value { "with a value head" } else { "no value head" };
            println!("{config} for {algo}: {n} parameters ({head}), batch {batch_size} x {seq_len} tokens");
            println!("  weights          {:>10.1} MiB", mib(m.params));
            println!("  gradients        {:>10.1} MiB", mib(m.grads));
            println!("  AdamW moments    {:>10.1} MiB", mib(m.adam_state));
            println!("  activations      {:>10.1} MiB", mib(m.activations));
            println!("  backward scratch {:>10.1} MiB", mib(m.backward_scratch));
            match reference {
                0 => println!("  reference model  {:>10} (β = 0: no KL, none loaded)", "-"),
                bytes => println!("  reference model  {:>10.1} MiB (frozen weights, β = {beta})", mib(bytes)),
            }
            println!("  total            {:>10.1} MiB", mib(m.total() + reference));
            println!(
                "  (on a CPU adapter, plus {:.1} MiB of transposed weights in the backward with the register-tiled matmul,",
                mib(cpu.transpose_scratch)
            );
            println!("   or {:.1} MiB of packed operands with the texture kernels)", mib(tex.texture_scratch));
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let gpu = Gpu::new(cli.adapter.as_deref())?;
    let profiling = cli.profile || cli.profile_out.is_some();
    if profiling {
        gpu.start_profiling();
    }
    let code = run_on_gpu(&gpu, command)?;
    if profiling {
        let profile = gpu.profile();
        eprint!("\n{}", profile.table());
        if let Some(path) = &cli.profile_out {
            let json = serde_json::to_string_pretty(&profile).expect("the profile serialises");
            model::checkpoint::write_atomically(path, json.as_bytes())?;
            let trace = path.with_extension("trace.json");
            model::checkpoint::write_atomically(&trace, profile.trace_json().as_bytes())?;
            eprintln!("profile in {}, trace of one iteration in {}", path.display(), trace.display());
        }
    }
    Ok(code)
}

/// Runs a command that needs the GPU.
fn run_on_gpu(gpu: &std::sync::Arc<Gpu>, command: Command) -> Result<ExitCode> {
    let gpu = gpu.clone();
    match command {
        Command::TokenizerTrain { .. } | Command::Memory { .. } | Command::Init { .. } => {
            unreachable!("handled above")
        }
        Command::Sft(opts) => {
            let report = sft::run(&gpu, &opts)?;
            eprintln!(
                "held-out loss {:.4} -> {:.4} over {} steps; checkpoint in {}",
                report.first_eval_loss,
                report.final_eval_loss,
                report.steps,
                opts.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Update(args) => {
            let stats = ppo::update::run(&gpu, &args)?;
            let json: serde_json::Map<String, serde_json::Value> =
                STAT_NAMES.iter().zip(stats.means).map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect();
            println!("{}", serde_json::Value::Object(json));
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate(args) => {
            generate::run(&gpu, &args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::RewardTrain(opts) => {
            let reports = reward_train::run(&gpu, &opts)?;
            if let Some(last) = reports.last() {
                eprintln!(
                    "held-out accuracy {:.3}, loss {:.4}; reward model in {}",
                    last.eval_accuracy,
                    last.eval_loss,
                    opts.out.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Train(opts) => {
            let report = ppo::trainer::run(&gpu, &opts)?;
            if let (Some(first), Some(last)) = (report.metrics.first(), report.metrics.last()) {
                eprintln!(
                    "score {:.3} -> {:.3} over iterations {}..={}; KL {:.4}; policy in {}; metrics in {}",
                    first.score_mean,
                    last.score_mean,
                    first.iteration,
                    last.iteration,
                    last.kl_mean,
                    report.policy.display(),
                    opts.out.join(ppo::trainer::METRICS_FILE).display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
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
        Command::Demo(opts) => {
            demo::run(&gpu, &opts)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::PrepareDemo(opts) => {
            let p = demo::prepare::run(&gpu, &opts)?;
            eprintln!(
                "wrote {} and {} (reward model held-out accuracy {:.3}) and {}",
                p.policy.display(),
                p.reward.display(),
                p.reward_accuracy,
                opts.out.join("README.md").display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Info => {
            info(&gpu)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Selfcheck => {
            info(&gpu)?;
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

/// `train --config FILE`: the file's options go right after `train`, before the user's flags,
/// which therefore win (later occurrences override earlier ones).
fn with_config_file(mut args: Vec<String>) -> Result<Vec<String>> {
    let Some(at) = args.iter().position(|a| a == "train") else { return Ok(args) };
    let path = args[at + 1..].iter().enumerate().find_map(|(i, a)| match a.strip_prefix("--config") {
        Some("") => args.get(at + 2 + i).cloned(),
        Some(rest) => rest.strip_prefix('=').map(str::to_string),
        None => None,
    });
    if let Some(path) = path {
        let extra = ppo::trainer::config_args(std::path::Path::new(&path))?;
        args.splice(at + 1..at + 1, extra);
    }
    Ok(args)
}

/// "tiny", "gpt2-small", or a config.json path.
fn named_config(name: &str) -> Result<model::GptConfig> {
    Ok(match name {
        "tiny" => model::GptConfig::tiny(),
        "gpt2-small" => model::GptConfig::gpt2_small(),
        path => model::GptConfig::load(std::path::Path::new(path))?,
    })
}

fn info(gpu: &std::sync::Arc<Gpu>) -> Result<()> {
    println!("adapter:  {}", gpu.info.name);
    println!("backend:  {:?} ({:?})", gpu.info.backend, gpu.info.device_type);
    println!("driver:   {} {}", gpu.info.driver, gpu.info.driver_info);
    println!("CPU:      {}", gpu::cpu_model());
    let (min, max, lanes) =
        (gpu.info.subgroup_min_size, gpu.info.subgroup_max_size, ppo_wgpu::kernels::BROADCAST_LANES);
    let subgroups = match (gpu.has_subgroups(), gpu.fixed_subgroup_size() == Some(lanes)) {
        (false, _) => "no subgroups (the subgroup variants are ruled out below)".into(),
        (true, false) => {
            format!("subgroups of {min}–{max} (texture-subgroup, written for {lanes} lanes, is ruled out below)")
        }
        (true, true) => format!("subgroups of {min}–{max}"),
    };
    let timestamps = if gpu.has_timestamps() { "timestamp queries" } else { "no timestamp queries" };
    println!("features: {subgroups}, {timestamps}");
    ppo_wgpu::kernels::matmul::variant(gpu)?;
    ppo_wgpu::kernels::matmul::narrow_variant(gpu)?;
    ppo_wgpu::kernels::matmul::few_rows_variant(gpu)?;
    ppo_wgpu::kernels::matmul::large_variant(gpu)?;
    ppo_wgpu::kernels::layernorm::variant(gpu)?;
    ppo_wgpu::kernels::layernorm::narrow_variant(gpu)?;
    ppo_wgpu::kernels::adamw::norm_variant(gpu)?;
    ppo_wgpu::kernels::cross_entropy::variant(gpu)?;
    ppo_wgpu::kernels::cross_entropy::long_variant(gpu)?;
    ppo_wgpu::kernels::ppo::row_variant(gpu)?;
    ppo_wgpu::kernels::ppo::long_row_variant(gpu)?;
    ppo_wgpu::kernels::attention::variant(gpu)?;
    ppo_wgpu::kernels::matmul::pack_method(gpu)?;
    ppo_wgpu::kernels::matmul::gelu_epilogue(gpu, ppo_wgpu::kernels::matmul::NARROW_ROWS)?;
    ppo_wgpu::kernels::matmul::gelu_epilogue(gpu, 1)?;
    ppo_wgpu::kernels::kv_cache::format(gpu)?;
    ppo_wgpu::kernels::kv_cache::attention_variant(gpu)?;
    ppo_wgpu::kernels::f16_weights::format(gpu, 1)?;
    ppo_wgpu::kernels::f16_weights::format(gpu, ppo_wgpu::kernels::matmul::TEXTURE_TILE)?;
    ppo_wgpu::kernels::sampling::lanes(gpu)?;
    let cache = gpu
        .variant_cache()
        .map_or(format!("no cache (${} is off)", gpu::CACHE_ENV), |p| format!("cached in {}", p.display()));
    let clock = if gpu.measures_on_gpu_clock() { "the GPU's clock" } else { "the wall clock" };
    println!(
        "kernel variants (chosen by measurement on first use, timed on {clock}, {cache}; PPO_WGPU_<FAMILY>=NAME forces one):"
    );
    for (family, choice) in gpu.variant_choices() {
        let figures: Vec<String> = choice
            .figures
            .iter()
            .map(|(v, rate)| format!("{v} {}", rate.map_or("ruled out".into(), |r| format!("{r:.2} {}", choice.unit))))
            .collect();
        println!(
            "  {family:<19} {:<19} ({}{}{})",
            choice.chosen,
            choice.source,
            if figures.is_empty() { "" } else { ": " },
            figures.join(", ")
        );
    }
    println!("limits:");
    for (name, value) in gpu.limit_rows() {
        println!("  {name:<40} {value}");
    }
    let all = gpu::list_adapters();
    println!("adapters found ({}; choose with --adapter NAME or ${}):", all.len(), gpu::ADAPTER_ENV);
    for a in all {
        println!("  {} ({:?}, {:?})", a.name, a.backend, a.device_type);
    }
    Ok(())
}
