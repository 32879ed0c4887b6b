//! What the bench programs share.
//!
//! - Every figure a bench prints is also recorded, as one JSON line `{"workload", "value",
//!   "unit", "device", "framework"}`, in a summary file beside the bench binaries
//!   (`target/release/bench-summary.jsonl`), tagged with the `cargo bench` run that made it;
//!   each bench program ends with the table of the run so far, so the last one's is the table
//!   of the whole suite. With `$PPO_WGPU_BENCH_JSON` set (benches/compare.sh sets it), the
//!   lines also go there, to be put beside PyTorch's (benches/pytorch_baseline.py writes the
//!   same lines).
//! - `PPO_WGPU_BENCH_LARGE=1` asks for the slow workloads at the largest shapes (GPT-2 small's
//!   whole model and PPO iteration, the LM-head matmul, the matmul variant the adapter does not
//!   use), which take minutes on a software adapter; without it they are skipped, and say so.
//! - `PPO_WGPU_BENCH_PROFILE=1` asks the PPO-iteration bench for one more iteration, profiled
//!   as `--profile` profiles a command (GPU time per kernel, time per phase), and not counted.

#![allow(dead_code)] // each bench program uses a part

use ppo_wgpu::gpu::Gpu;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The environment variable naming an extra JSON-lines file for the figures.
pub const JSON_ENV: &str = "PPO_WGPU_BENCH_JSON";
/// The environment variable that asks for the large workloads.
pub const LARGE_ENV: &str = "PPO_WGPU_BENCH_LARGE";

/// The environment variable that asks for a profiled iteration.
pub const PROFILE_ENV: &str = "PPO_WGPU_BENCH_PROFILE";

/// Whether a profiled iteration was asked for.
pub fn profile_asked() -> bool {
    std::env::var_os(PROFILE_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Whether the large workloads were asked for.
pub fn large() -> bool {
    std::env::var_os(LARGE_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The `cargo bench` run this program belongs to: cargo's process id, which every bench
/// program of one run shares.
fn run_id() -> u32 {
    #[cfg(unix)]
    return std::os::unix::process::parent_id();
    #[cfg(not(unix))]
    return 0;
}

fn summary_path() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench knows its path");
    // target/<profile>/deps/<bench>: the summary goes in target/<profile>.
    exe.parent()
        .and_then(|deps| deps.parent())
        .map_or_else(|| PathBuf::from("."), |p| p.to_path_buf())
        .join("bench-summary.jsonl")
}

fn lines_of_this_run() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(summary_path()).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["run"] == run_id())
        .collect()
}

/// Starts a bench program: forgets the figures of earlier `cargo bench` runs, and prints the
/// adapter and the CPU.
pub fn begin(gpu: &Gpu) {
    let keep: Vec<String> = lines_of_this_run().iter().map(|v| v.to_string()).collect();
    let text = keep.iter().map(|l| format!("{l}\n")).collect::<String>();
    std::fs::write(summary_path(), text).expect("the bench summary file is writable");
    println!("benchmarking on {} (CPU: {})", gpu.describe(), ppo_wgpu::gpu::cpu_model());
}

/// Records one figure of `workload` (for the summary, and for compare.sh when it asks).
pub fn record(gpu: &Gpu, workload: &str, value: f64, unit: &str) {
    let mut line = serde_json::json!({
        "workload": workload,
        "value": value,
        "unit": unit,
        "device": format!("{} (CPU {})", gpu.info.name, ppo_wgpu::gpu::cpu_model()),
        "framework": format!("ppo-wgpu {} ({:?})", env!("CARGO_PKG_VERSION"), gpu.info.backend),
    });
    let mut paths = vec![summary_path()];
    paths.extend(std::env::var_os(JSON_ENV).map(PathBuf::from));
    for (i, path) in paths.iter().enumerate() {
        if i == 0 {
            line["run"] = run_id().into();
        } else if let Some(o) = line.as_object_mut() {
            o.remove("run");
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("the bench file opens");
        writeln!(file, "{line}").expect("the bench file takes a line");
    }
}

/// Prints the table of every figure this `cargo bench` run has recorded so far.
pub fn print_summary(gpu: &Gpu) {
    let rows = lines_of_this_run();
    println!("\nsummary on {} (CPU: {}):", gpu.describe(), ppo_wgpu::gpu::cpu_model());
    for r in rows {
        let (value, unit) = (r["value"].as_f64().unwrap_or(f64::NAN), r["unit"].as_str().unwrap_or(""));
        println!("  {:<64} {value:>12.2} {unit}", r["workload"].as_str().unwrap_or(""));
    }
}

/// Mean seconds per call of `f`, after one warm-up call, over about `budget` of calls (at
/// least two): a measurement that takes seconds on a fast adapter and stays bounded on a
/// slow one. `f` must wait for its GPU work.
pub fn seconds_per_call(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let (start, mut calls) = (Instant::now(), 0u32);
    while calls < 2 || start.elapsed() < budget {
        f();
        calls += 1;
    }
    start.elapsed().as_secs_f64() / calls as f64
}
