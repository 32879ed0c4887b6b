//! The command line as users and scripts call it (docs/design.md §6 is the contract).

use crate::common::FIXTURES;
use std::process::Command;

fn ppo_wgpu(args: &[&str]) -> (bool, String, String) {
    ppo_wgpu_env(args, &[])
}

fn ppo_wgpu_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ppo-wgpu"))
        .args(args)
        .envs(crate::suite_gpu::suite_env())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// `init` and `tokenizer-train` need no GPU: they work where no adapter matches.
#[test]
fn init_needs_no_gpu() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-init-no-gpu");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, "the cat sees the dog.\n".repeat(50)).unwrap();
    let tok = dir.join("tok.json");
    let no_gpu = [("PPO_WGPU_ADAPTER", "no-such-gpu-anywhere")];
    let (ok, _, stderr) = ppo_wgpu_env(
        &[
            "tokenizer-train",
            "--corpus",
            corpus.to_str().unwrap(),
            "--vocab-size",
            "270",
            "--out",
            tok.to_str().unwrap(),
        ],
        &no_gpu,
    );
    assert!(ok, "{stderr}");
    let out = dir.join("model");
    let (ok, _, stderr) =
        ppo_wgpu_env(&["init", "--tokenizer", tok.to_str().unwrap(), "--out", out.to_str().unwrap()], &no_gpu);
    assert!(ok && out.join("model.safetensors").is_file(), "{stderr}");
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

#[test]
fn update_writes_a_checkpoint_the_gradient_dump_and_statistics() {
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-update");
    let _ = std::fs::remove_dir_all(&out);
    let dump = out.join("grads.safetensors");
    let (model, batch) = (format!("{FIXTURES}/ppo-tiny"), format!("{FIXTURES}/ppo-batch.safetensors"));
    let args = ["update", "--model", &model, "--batch", &batch, "--out", out.to_str().unwrap(), "--epochs", "2"];
    let (ok, stdout, stderr) =
        ppo_wgpu(&[&args[..], &["--minibatches", "2", "--dump-grads", dump.to_str().unwrap()]].concat());
    assert!(ok, "{stderr}");
    let stats: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for key in ["loss", "pg_loss", "vf_loss", "entropy", "approx_kl", "clipfrac"] {
        assert!(stats[key].as_f64().unwrap().is_finite(), "{key} in {stats}");
    }
    let bytes = std::fs::read(&dump).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("transformer.h.1.mlp.c_fc.weight").unwrap().shape(), [32, 128]);
    assert_eq!(st.tensor("v_head.summary.weight").unwrap().shape(), [1, 32]);
    assert_eq!(st.tensor("clipfrac").unwrap().shape(), [1]);
    // The new policy loads, and differs from the old.
    let before = ppo_wgpu::model::checkpoint::load(std::path::Path::new(&model)).unwrap();
    let after = ppo_wgpu::model::checkpoint::load(&out).unwrap();
    assert!(after.heads.value);
    assert_ne!(before.get("h.0.attn.c_attn.weight"), after.get("h.0.attn.c_attn.weight"));
}

#[test]
fn a_bad_batch_file_names_the_tensor() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-bad-batch");
    let _ = std::fs::create_dir_all(&dir);
    let mut batch =
        ppo_wgpu::ppo::batch::RolloutBatch::load(std::path::Path::new(&format!("{FIXTURES}/ppo-batch.safetensors")))
            .unwrap();
    batch.returns.as_mut().unwrap().pop();
    batch.l = 15; // now every [B, L] tensor has the wrong size for L
    let path = dir.join("bad.safetensors");
    assert!(batch.save(&path).is_err(), "a batch whose fields do not match its shape cannot be saved");
    // A missing tensor and a wrong shape are named.
    let good =
        ppo_wgpu::ppo::batch::RolloutBatch::load(std::path::Path::new(&format!("{FIXTURES}/ppo-batch.safetensors")))
            .unwrap();
    let bytes = std::fs::read(format!("{FIXTURES}/ppo-batch.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let rewrite = |skip: &str, reshape: &str| {
        let views: Vec<(String, safetensors::tensor::TensorView)> = st
            .tensors()
            .into_iter()
            .filter(|(n, _)| n != skip)
            .map(|(n, v)| {
                if n == reshape {
                    let shape = vec![v.shape()[1], v.shape()[0]];
                    (n, safetensors::tensor::TensorView::new(v.dtype(), shape, v.data()).unwrap())
                } else {
                    (n, v)
                }
            })
            .collect();
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        ppo_wgpu::ppo::batch::RolloutBatch::load(&path).map(|_| ()).map_err(|e| e.to_string())
    };
    let missing = rewrite("advantages", "").unwrap_err();
    assert!(missing.contains("bad data file") && missing.contains("missing tensor advantages"), "{missing}");
    // A batch without PPO's returns loads (GRPO's and RLOO's batches have none), but a PPO
    // update on it names what it lacks.
    rewrite("returns", "").unwrap();
    let model = format!("{FIXTURES}/ppo-tiny");
    let (ok, _, stderr) =
        ppo_wgpu(&["update", "--model", &model, "--batch", path.to_str().unwrap(), "--out", dir.to_str().unwrap()]);
    assert!(!ok && stderr.contains("the ppo update needs tensor(s) returns"), "{stderr}");
    let shaped = rewrite("", "returns").unwrap_err();
    let want = format!("tensor returns has shape [{}, {}], expected [{}, {}]", good.l, good.b, good.b, good.l);
    assert!(shaped.contains(&want), "{shaped}");
    // A batch of no positions is refused on load, before anything runs.
    let empty = ppo_wgpu::ppo::batch::RolloutBatch {
        l: 0,
        input_ids: vec![],
        attention_mask: vec![],
        response_mask: vec![],
        old_logprobs: vec![],
        old_values: None,
        advantages: vec![],
        returns: None,
        ref_logprobs: None,
        ..good.clone()
    };
    empty.save(&path).unwrap();
    let err = ppo_wgpu::ppo::batch::RolloutBatch::load(&path).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains(&format!("input_ids has shape [{}, 0], expected [B, L] with B, L ≥ 1", good.b)), "{err}");
    std::fs::write(&path, b"nope").unwrap();
    let (ok, _, stderr) =
        ppo_wgpu(&["update", "--model", &model, "--batch", path.to_str().unwrap(), "--out", dir.to_str().unwrap()]);
    assert!(!ok && stderr.contains("bad.safetensors") && stderr.contains("not a valid safetensors file"), "{stderr}");
}

#[test]
fn selfcheck_passes_and_prints_clean_output() {
    let (ok, stdout, stderr) = ppo_wgpu(&["selfcheck"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("kernel families match their CPU references") && !stdout.contains("FAILED"), "{stdout}");
}

/// `update --seed` shuffles the rows into minibatches: the same seed gives the same weights, a
/// different seed (or row order) different ones.
#[test]
fn update_seed_shuffles_the_minibatches_reproducibly() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-update-seed");
    let _ = std::fs::remove_dir_all(&dir);
    let (model, batch) = (format!("{FIXTURES}/ppo-tiny"), format!("{FIXTURES}/ppo-batch.safetensors"));
    let weights = |name: &str, seed: Option<&str>| {
        let out = dir.join(name);
        let mut args = vec!["update", "--model", &model, "--batch", &batch, "--out", out.to_str().unwrap()];
        args.extend(["--epochs", "2", "--minibatches", "2", "--lr", "1e-3"]);
        if let Some(seed) = seed {
            args.extend(["--seed", seed]);
        }
        let (ok, _, stderr) = ppo_wgpu(&args);
        assert!(ok, "{stderr}");
        std::fs::read(out.join("model.safetensors")).unwrap()
    };
    let (a, b, c, d) = (weights("a", Some("1")), weights("b", Some("1")), weights("c", Some("2")), weights("d", None));
    assert!(a == b, "the same seed gives the same update");
    assert!(a != c && a != d, "another shuffle gives another update");
}

/// `memory --algo grpo` shows what the critic-free algorithm saves: no value head, and with
/// GRPO's β = 0 no reference model.
#[test]
fn memory_shows_what_grpo_saves() {
    let total = |args: &[&str]| {
        let (ok, stdout, stderr) = ppo_wgpu(&[&["memory", "--config", "tiny"], args].concat());
        assert!(ok, "{stderr}");
        let line = stdout.lines().find(|l| l.trim_start().starts_with("total")).unwrap().to_string();
        (stdout, line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap())
    };
    let ((ppo_out, ppo), (grpo_out, grpo), (_, rloo)) =
        (total(&[]), total(&["--algo", "grpo"]), total(&["--algo", "rloo"]));
    assert!(ppo_out.contains("with a value head") && grpo_out.contains("no value head"), "{grpo_out}");
    assert!(grpo_out.contains("β = 0: no KL, none loaded"), "{grpo_out}");
    // The value head is small (C + 1 weights and one value per token): at one decimal of a MiB
    // it may not show.
    assert!(grpo < rloo && rloo <= ppo, "ppo {ppo} MiB, rloo {rloo} MiB, grpo {grpo} MiB");
}

/// The shipped policy generates with the defaults (its n_positions is 48: the default length
/// fits itself to it), and `--profile --profile-out` print the report and write it as JSON with
/// a Chrome trace beside it; stdout keeps only the completion.
#[test]
fn generate_on_the_shipped_policy_with_a_profile() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-profile");
    let _ = std::fs::create_dir_all(&dir);
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/weights/policy");
    let out = dir.join("profile.json");
    let (ok, stdout, stderr) =
        ppo_wgpu(&["generate", "--model", model, "--prompt", "the film was", "--profile-out", out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("the film was"), "{stdout}");
    assert!(stderr.contains("GPU time per kernel") && stderr.contains("per iteration:"), "{stderr}");
    let profile: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(
        profile["kernels"].as_array().unwrap().iter().any(|k| k["kernel"] == "sampling:sample_tokens"),
        "{profile}"
    );
    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("profile.trace.json")).unwrap()).unwrap();
    assert!(trace["traceEvents"].as_array().unwrap().iter().any(|e| e["name"] == "generation"), "{trace}");
}

/// `info` shows each family's variant and how it was chosen; PPO_WGPU_MATMUL forces one, and a
/// name that is not a variant is an error naming the variable.
#[test]
fn info_shows_the_kernel_choice_and_the_environment_forces_one() {
    let cache = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-variants.json");
    let cache = cache.to_str().unwrap();
    let (ok, stdout, stderr) = ppo_wgpu_env(&["info"], &[("PPO_WGPU_VARIANT_CACHE", cache)]);
    assert!(ok && stdout.contains("GFLOP/s") && stdout.contains("GB/s"), "{stdout}{stderr}");
    // It names the clock the variants were timed on: a GPU's own where it has timestamps, the
    // wall clock on a CPU adapter (the same adapter as the process: neither names one).
    let gpu = ppo_wgpu::gpu::Gpu::new(None).unwrap();
    let clock = if gpu.measures_on_gpu_clock() { "the GPU's clock" } else { "the wall clock" };
    assert!(stdout.contains(&format!("timed on {clock}")), "{clock}: {stdout}");
    let families = [
        "matmul",
        "matmul_narrow",
        "matmul_few_rows",
        "layernorm",
        "layernorm_narrow",
        "grad_norm",
        "cross_entropy",
        "cross_entropy_long",
        "ppo_rows",
        "ppo_rows_long",
        "attention",
        "texture_pack",
        "bias_gelu",
        "bias_gelu_narrow",
        "kv_cache",
    ];
    for family in families {
        assert!(stdout.lines().any(|l| l.trim_start().starts_with(&format!("{family} "))), "{family}: {stdout}");
    }
    let forced = [("PPO_WGPU_VARIANT_CACHE", cache), ("PPO_WGPU_MATMUL", "workgroup-tiled")];
    let (ok, stdout, _) = ppo_wgpu_env(&["info"], &forced);
    let line = stdout.lines().find(|l| l.trim_start().starts_with("matmul ")).unwrap_or_default();
    assert!(ok && line.contains("workgroup-tiled") && line.contains("(forced)"), "{stdout}");
    let (ok, _, stderr) = ppo_wgpu_env(&["info"], &[("PPO_WGPU_VARIANT_CACHE", cache), ("PPO_WGPU_MATMUL", "fast")]);
    assert!(
        !ok && stderr.contains("PPO_WGPU_MATMUL=fast: expected one of register-tiled, workgroup-tiled"),
        "{stderr}"
    );
}
