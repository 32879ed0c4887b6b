//! What the bench programs share: a figure they print can also go, as one JSON line
//! `{"workload", "value", "unit", "device", "framework"}`, to the file named by
//! `$PPO_WGPU_BENCH_JSON`, which benches/compare.sh sets to put them beside PyTorch's
//! (benches/pytorch_baseline.py writes the same lines).

use ppo_wgpu::gpu::Gpu;
use std::io::Write;

/// The environment variable naming the JSON-lines file of figures.
pub const JSON_ENV: &str = "PPO_WGPU_BENCH_JSON";

/// Appends `workload`'s figure to `$PPO_WGPU_BENCH_JSON`, when it is set.
pub fn record(gpu: &Gpu, workload: &str, value: f64, unit: &str) {
    let Some(path) = std::env::var_os(JSON_ENV) else { return };
    let line = serde_json::json!({
        "workload": workload,
        "value": value,
        "unit": unit,
        "device": format!("{} (CPU {})", gpu.info.name, ppo_wgpu::gpu::cpu_model()),
        "framework": format!("ppo-wgpu {} ({:?})", env!("CARGO_PKG_VERSION"), gpu.info.backend),
    });
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("the bench JSON file opens");
    writeln!(file, "{line}").expect("the bench JSON file takes a line");
}
