use crate::common::*;
use ppo_wgpu::model::checkpoint::{self, CONFIG_FILE, Checkpoint, WEIGHTS_FILE};
use ppo_wgpu::model::{GptConfig, Heads};
use ppo_wgpu::rng::Rng;
use safetensors::{Dtype, tensor::TensorView};
use std::path::Path;

fn small_config() -> GptConfig {
    GptConfig { vocab_size: 19, n_positions: 8, n_embd: 8, n_layer: 2, n_head: 2, layer_norm_epsilon: 1e-5 }
}

fn random_checkpoint(config: &GptConfig, heads: Heads, seed: u64) -> Checkpoint {
    let mut rng = Rng::new(seed);
    let tensors = config
        .param_specs(heads)
        .into_iter()
        .map(|ppo_wgpu::model::ParamSpec { name, shape, .. }| {
            let n = shape.iter().product();
            let values = (0..n).map(|_| rng.normal() as f32).collect();
            (name, shape, values)
        })
        .collect();
    Checkpoint { config: config.clone(), heads, tensors }
}

/// Writes `tensors` (name, dtype, shape, raw bytes) as dir/model.safetensors and the config.
fn write_raw(dir: &Path, config: &GptConfig, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(dir.join(WEIGHTS_FILE), safetensors::serialize(views, None).unwrap()).unwrap();
    std::fs::write(dir.join(CONFIG_FILE), config.to_json()).unwrap();
}

fn as_raw(ck: &Checkpoint, prefix: &str, dtype: Dtype) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    ck.tensors
        .iter()
        .map(|(name, shape, values)| {
            let bytes: Vec<u8> = match dtype {
                Dtype::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
                Dtype::BF16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
                _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            };
            (format!("{prefix}{name}"), dtype, shape.clone(), bytes)
        })
        .collect()
}

fn load_err(dir: &Path) -> String {
    checkpoint::load(dir).expect_err("loading should fail").to_string()
}

#[test]
fn save_then_load_round_trips_and_leaves_no_temporary_files() {
    let config = small_config();
    for heads in [Heads::default(), Heads { value: true, reward: false }, Heads { value: false, reward: true }] {
        let ck = random_checkpoint(&config, heads, 1);
        let dir = scratch_dir(&format!("roundtrip-{}-{}", heads.value, heads.reward));
        checkpoint::save(&dir, &ck).unwrap();
        let back = checkpoint::load(&dir).unwrap();
        assert_eq!(back.config, config);
        assert_eq!(back.heads, heads);
        assert_eq!(back.tensors.len(), ck.tensors.len());
        for ((n1, s1, v1), (n2, s2, v2)) in ck.tensors.iter().zip(&back.tensors) {
            assert_eq!((n1, s1), (n2, s2));
            assert_eq!(v1, v2, "{n1} changed in the round trip");
        }
        let names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "temporary files left behind: {names:?}");
    }
}

#[test]
fn loads_both_name_forms_lm_head_mask_buffers_and_half_precision() {
    let config = small_config();
    let ck = random_checkpoint(&config, Heads::default(), 2);
    for (prefix, dtype) in [("", Dtype::F16), ("transformer.", Dtype::BF16), ("transformer.", Dtype::F32)] {
        let dir = scratch_dir(&format!("forms-{}-{dtype:?}", prefix.len()));
        let mut raw = as_raw(&ck, prefix, dtype);
        let wte = raw[0].3.clone();
        raw.push(("lm_head.weight".into(), dtype, vec![19, 8], wte));
        // The causal-mask buffers older checkpoints carry.
        raw.push((format!("{prefix}h.0.attn.bias"), Dtype::F32, vec![1, 1, 8, 8], vec![0; 256]));
        raw.push((format!("{prefix}h.1.attn.masked_bias"), Dtype::F32, vec![], vec![0; 4]));
        write_raw(&dir, &config, &raw);
        let back = checkpoint::load(&dir).unwrap();
        let tol = match dtype {
            Dtype::F16 => 1e-3,
            Dtype::BF16 => 1e-2,
            _ => 0.0,
        };
        for ((name, _, want), (_, _, got)) in ck.tensors.iter().zip(&back.tensors) {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= tol * w.abs().max(1.0), "{name} ({dtype:?}): {g} vs {w}");
            }
        }
    }
}

#[test]
fn missing_tensor_names_the_tensor_and_its_shape() {
    let config = small_config();
    let ck = random_checkpoint(&config, Heads::default(), 3);
    let dir = scratch_dir("missing");
    let raw: Vec<_> = as_raw(&ck, "", Dtype::F32).into_iter().filter(|t| t.0 != "h.1.mlp.c_fc.bias").collect();
    write_raw(&dir, &config, &raw);
    let err = load_err(&dir);
    assert!(err.contains("missing tensor h.1.mlp.c_fc.bias") && err.contains("[32]"), "{err}");
}

#[test]
fn wrong_shape_names_the_tensor_and_both_shapes() {
    let config = small_config();
    let ck = random_checkpoint(&config, Heads::default(), 4);
    let dir = scratch_dir("shape");
    let mut raw = as_raw(&ck, "", Dtype::F32);
    let at = raw.iter().position(|t| t.0 == "h.0.attn.c_attn.weight").unwrap();
    raw[at].2 = vec![24, 8]; // transposed: torch.nn.Linear layout instead of Conv1D
    write_raw(&dir, &config, &raw);
    let err = load_err(&dir);
    assert!(err.contains("h.0.attn.c_attn.weight") && err.contains("[24, 8]") && err.contains("[8, 24]"), "{err}");
}

#[test]
fn config_that_does_not_match_the_tensors_is_an_error() {
    let config = small_config();
    let ck = random_checkpoint(&config, Heads::default(), 5);
    let dir = scratch_dir("mismatch");
    write_raw(&dir, &GptConfig { n_layer: 1, ..config.clone() }, &as_raw(&ck, "", Dtype::F32));
    let err = load_err(&dir);
    assert!(err.contains("unexpected tensor h.1.") && err.contains("n_layer 1"), "{err}");

    write_raw(&dir, &GptConfig { n_embd: 12, n_head: 3, ..config.clone() }, &as_raw(&ck, "", Dtype::F32));
    let err = load_err(&dir);
    assert!(err.contains("wte.weight") && err.contains("[19, 8]") && err.contains("[19, 12]"), "{err}");
}

#[test]
fn malformed_files_give_errors_naming_the_file() {
    let config = small_config();
    let dir = scratch_dir("malformed");
    let err = load_err(&dir);
    assert!(err.contains(CONFIG_FILE), "missing config: {err}");

    std::fs::write(dir.join(CONFIG_FILE), "{ not json").unwrap();
    let err = load_err(&dir);
    assert!(err.contains("not a valid GPT-2 config.json") && err.contains("line 1"), "{err}");

    std::fs::write(dir.join(CONFIG_FILE), r#"{"vocab_size": 10, "n_embd": 8}"#).unwrap();
    assert!(load_err(&dir).contains("missing field `n_layer`"));
    std::fs::write(dir.join(CONFIG_FILE), r#"{"vocab_size": 10, "n_embd": 8, "n_layer": 1, "n_head": 2}"#).unwrap();
    assert!(load_err(&dir).contains("\"n_positions\""));
    std::fs::write(dir.join(CONFIG_FILE), r#"{"vocab_size": 10, "n_positions": 8, "n_embd": 8, "n_layer": 1, "n_head": 2, "activation_function": "relu"}"#).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("activation_function \"relu\"") && err.contains("is not supported"), "{err}");

    std::fs::write(dir.join(CONFIG_FILE), config.to_json()).unwrap();
    let err = load_err(&dir);
    assert!(err.contains(WEIGHTS_FILE), "missing weights: {err}");

    std::fs::write(dir.join(WEIGHTS_FILE), b"definitely not safetensors").unwrap();
    let err = load_err(&dir);
    assert!(err.contains("not a valid safetensors file"), "{err}");

    let ck = random_checkpoint(&config, Heads::default(), 6);
    let mut raw = as_raw(&ck, "", Dtype::F32);
    raw[1].1 = Dtype::I32;
    write_raw(&dir, &config, &raw);
    let err = load_err(&dir);
    assert!(err.contains("wpe.weight") && err.contains("I32"), "{err}");
}

#[test]
fn unsupported_head_dimension_is_rejected_by_the_config() {
    let text = GptConfig { n_embd: 30, n_head: 5, ..small_config() }.to_json();
    let err = GptConfig::from_json(&text, "config.json").unwrap_err().to_string();
    assert!(err.contains("head dimension 6"), "{err}");
}

#[test]
fn a_missing_value_head_is_added_zero_initialised() {
    let config = small_config();
    let ck = random_checkpoint(&config, Heads::default(), 7);
    let with = ppo_wgpu::model::init::with_heads(ck.clone(), Heads { value: true, reward: false });
    assert!(with.heads.value && !with.heads.reward);
    assert_eq!(with.get("v_head.summary.weight").unwrap(), &[0.0; 8][..]);
    assert_eq!(with.get("v_head.summary.bias").unwrap(), &[0.0][..]);
    for (name, _, values) in &ck.tensors {
        assert_eq!(with.get(name).unwrap(), &values[..], "{name} must be kept");
    }
    // A checkpoint that has the head keeps it as it is.
    let again = ppo_wgpu::model::init::with_heads(with.clone(), Heads { value: true, reward: false });
    assert_eq!(again.tensors.len(), with.tensors.len());
}

/// A directory save that fails midway (here: a file that cannot be created) leaves the previous
/// checkpoint whole and loadable, and no temporary directory behind; a temporary directory left
/// by a killed save does not disturb loading either.
#[test]
fn an_interrupted_directory_save_leaves_the_old_checkpoint_whole() {
    use ppo_wgpu::model::checkpoint::{model_files, write_dir_atomically};
    let dir = crate::common::scratch_dir("atomic-save");
    let config =
        GptConfig { vocab_size: 11, n_positions: 8, n_embd: 8, n_layer: 1, n_head: 2, layer_norm_epsilon: 1e-5 };
    let old = random_checkpoint(&config, Heads::default(), 1);
    let target = dir.join("checkpoint-1");
    write_dir_atomically(&target, &model_files(&old).unwrap()).unwrap();

    let new = random_checkpoint(&config, Heads::default(), 2);
    let mut files = model_files(&new).unwrap();
    files.push(("no/such/subdir", vec![1, 2, 3])); // fails after the weights and config are written
    assert!(write_dir_atomically(&target, &files).is_err());
    let loaded = checkpoint::load(&target).unwrap();
    assert_eq!(loaded.tensors, old.tensors, "the old checkpoint is intact");
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary directory is left: {leftovers:?}");

    // A save killed before its rename leaves only a temporary directory beside the old one.
    std::fs::create_dir_all(dir.join(".checkpoint-1.tmp-999-0")).unwrap();
    std::fs::write(dir.join(".checkpoint-1.tmp-999-0/model.safetensors"), b"half").unwrap();
    assert_eq!(checkpoint::load(&target).unwrap().tensors, old.tensors);

    // A successful save replaces the directory as a whole.
    write_dir_atomically(&target, &model_files(&new).unwrap()).unwrap();
    assert_eq!(checkpoint::load(&target).unwrap().tensors, new.tensors);
}

/// GRPO and RLOO train no value head: asking for a checkpoint without one drops it, and keeps
/// everything else as it is.
#[test]
fn an_unwanted_value_head_is_dropped() {
    let config = small_config();
    let ck = random_checkpoint(&config, Heads { value: true, reward: false }, 8);
    let without = ppo_wgpu::model::init::with_heads(ck.clone(), Heads::default());
    assert!(!without.heads.value);
    assert!(without.get("v_head.summary.weight").is_none() && without.get("v_head.summary.bias").is_none());
    assert_eq!(without.tensors.len(), ck.tensors.len() - 2);
    for (name, _, values) in &without.tensors {
        assert_eq!(ck.get(name).unwrap(), &values[..], "{name} must be kept");
    }
}
