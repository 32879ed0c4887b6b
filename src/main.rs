//! The `ppo-wgpu` command line: each subcommand is a thin call into the library.

use clap::{Parser, Subcommand};
use ppo_wgpu::gpu::{self, Gpu};
use ppo_wgpu::{Result, selfcheck};
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
    let gpu = Gpu::new(cli.adapter.as_deref())?;
    match cli.command {
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
