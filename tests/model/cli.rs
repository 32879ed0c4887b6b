//! The command line as users and scripts call it (DESIGN.md §6 is the contract).

use std::process::Command;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn ppo_wgpu(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ppo-wgpu")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn score_prints_one_json_object() {
    let model = format!("{FIXTURES}/gpt2-tiny");
    let (ok, stdout, stderr) = ppo_wgpu(&["score", "--model", &model, "--ids", "5,17,3"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("stdout is one JSON object");
    assert_eq!(v["ids"], serde_json::json!([5, 17, 3]));
    let lp = v["logprobs"].as_array().unwrap();
    assert!(lp.len() == 3 && lp[0].is_null() && lp[1].as_f64().unwrap() < 0.0 && lp[2].as_f64().unwrap() < 0.0);
    assert!(v.get("values").is_none() && v.get("reward").is_none(), "the fixture has no heads: {v}");
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let model = format!("{FIXTURES}/gpt2-tiny");
    let (ok, _, stderr) = ppo_wgpu(&["score", "--model", &model, "--ids", "5,64"]);
    assert!(!ok && stderr.contains("token id[1] = 64") && !stderr.contains("panicked"), "{stderr}");
    let (ok, _, stderr) = ppo_wgpu(&["score", "--model", "/nonexistent/model", "--ids", "1"]);
    assert!(!ok && stderr.contains("/nonexistent/model/config.json") && !stderr.contains("panicked"), "{stderr}");
    let (ok, _, stderr) = ppo_wgpu(&["score", "--model", &model, "--text", "hi"]);
    assert!(!ok && stderr.contains("tokenizer.json"), "no tokenizer in the fixture: {stderr}");
    let (ok, _, stderr) = ppo_wgpu(&["--adapter", "no-such-gpu-anywhere", "info"]);
    assert!(!ok && stderr.contains("no adapter name contains \"no-such-gpu-anywhere\""), "{stderr}");
}
