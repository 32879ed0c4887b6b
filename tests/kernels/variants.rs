//! Kernel variants chosen by measurement (gpu::variants, kernels::matmul::variant): the choice
//! is measured once and cached per adapter, driver, CPU and version; a cached choice is used
//! as it is; a corrupt, stale or unknown cache entry, or one made among other variants, is
//! ignored and rewritten.

use crate::suite_gpu::suite_gpu;
use ppo_wgpu::gpu::{CACHE_FORMAT, Gpu, MatmulVariant};
use ppo_wgpu::kernels::matmul::variant;
use std::path::Path;
use std::sync::Arc;

fn gpu_with_cache(path: &Path) -> Arc<Gpu> {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    gpu.set_variant_cache(Some(path.to_path_buf()));
    gpu
}

fn cache_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One family's choice of `chosen` among `names` (a figure each), as the cache writes it.
fn choice_among(chosen: &str, names: &[&str]) -> serde_json::Value {
    let figures: Vec<(&str, f64)> = names.iter().map(|&name| (name, 1.0)).collect();
    serde_json::json!({ "chosen": chosen, "figures": figures, "unit": "GFLOP/s" })
}

/// The cache file's entry for `gpu` with the matmul family choosing `chosen` among `names`.
fn entry_among(gpu: &Gpu, chosen: &str, names: &[&str]) -> serde_json::Value {
    serde_json::json!({ "format": CACHE_FORMAT, "entries": { gpu.variant_key(): {
        "matmul": choice_among(chosen, names) } } })
}

/// … among the current variants.
fn entry(gpu: &Gpu, chosen: &str) -> serde_json::Value {
    entry_among(gpu, chosen, &ppo_wgpu::kernels::matmul::BATCH_VARIANTS.map(|(_, name)| name))
}

#[test]
fn a_measured_choice_is_cached_and_a_cached_choice_is_used_as_it_is() {
    let path = cache_dir("variants-cache").join("sub/variants.json");
    let gpu = gpu_with_cache(&path);
    let measured = variant(&gpu).unwrap();
    let (_, choice) = gpu.variant_choices().into_iter().find(|(f, _)| f == "matmul").unwrap();
    assert_eq!(choice.source, "measured");
    // Every variant has a figure, but texture-subgroup where its fixed lanes do not fit the
    // adapter's subgroups (an H100's are 32 wide): it would run as texture, and has none. Split-k
    // takes products of few rows only, so only the matmul_narrow and matmul_few_rows families
    // (below) offer it.
    let lanes_fit = gpu.fixed_subgroup_size() == Some(ppo_wgpu::kernels::BROADCAST_LANES);
    assert!(
        choice.figures.len() == ppo_wgpu::kernels::matmul::BATCH_VARIANTS.len()
            && choice.figures.iter().all(|(name, rate)| name != "split-k"
                && match rate {
                    Some(r) => *r > 0.0 && (name != "texture-subgroup" || lanes_fit),
                    None => name == "texture-subgroup" && !lanes_fit,
                }),
        "{choice:?}"
    );
    ppo_wgpu::kernels::matmul::narrow_variant(&gpu).unwrap();
    ppo_wgpu::kernels::matmul::few_rows_variant(&gpu).unwrap();
    for family in ["matmul_narrow", "matmul_few_rows"] {
        let (_, choice) = gpu.variant_choices().into_iter().find(|(f, _)| f == family).unwrap();
        assert!(
            choice.figures.iter().any(|(name, rate)| name == "split-k" && rate.is_some_and(|r| r > 0.0)),
            "{choice:?}"
        );
    }
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(file["entries"][gpu.variant_key()]["matmul"]["chosen"], choice.chosen);

    // A second device reads the cache instead of measuring, and asks for the same variant.
    let again = gpu_with_cache(&path);
    assert_eq!(variant(&again).unwrap(), measured);
    assert_eq!(again.variant_choices()[0].1.source, "cached");

    // The choice is the cache's, whatever it says: here the other variant.
    let other = if measured == MatmulVariant::RegisterTiled { "workgroup-tiled" } else { "register-tiled" };
    std::fs::write(&path, entry(&gpu, other).to_string()).unwrap();
    let from_file = gpu_with_cache(&path);
    assert_ne!(variant(&from_file).unwrap(), measured);
}

#[test]
fn a_corrupt_stale_or_unknown_cache_entry_is_ignored_and_rewritten() {
    let dir = cache_dir("variants-bad-cache");
    let probe = suite_gpu(Gpu::new(None).unwrap());
    let stale_key = probe.variant_key().replace("ppo-wgpu ", "ppo-wgpu 0.0.0-old ");
    let stale = serde_json::json!({ "format": CACHE_FORMAT, "entries": { stale_key.clone(): {
        "matmul": { "chosen": "workgroup-tiled", "figures": [] } } } });
    // Made by this version with other kernels (the fingerprint of an earlier build's WGSL).
    let fingerprint = format!("kernels {:016x}", ppo_wgpu::gpu::kernels_fingerprint());
    assert!(probe.variant_key().ends_with(&fingerprint), "{}", probe.variant_key());
    let old_kernels_key = probe.variant_key().replace(&fingerprint, "kernels 0123456789abcdef");
    let old_kernels = serde_json::json!({ "format": CACHE_FORMAT, "entries": { old_kernels_key: {
        "matmul": { "chosen": "workgroup-tiled", "figures": [] } } } });
    let cases = [
        ("corrupt", "{ this is not json".to_string()),
        ("stale", stale.to_string()),
        ("other kernels", old_kernels.to_string()),
        ("unknown variant", entry(&probe, "texture-tiled").to_string()),
        // Made before a variant was added: the new one was never measured.
        ("fewer variants", entry_among(&probe, "register-tiled", &["register-tiled", "workgroup-tiled"]).to_string()),
        ("other format", serde_json::json!({ "format": 99, "entries": {} }).to_string()),
    ];
    for (what, text) in cases {
        let path = dir.join(format!("{}.json", what.replace(' ', "-")));
        std::fs::write(&path, &text).unwrap();
        let gpu = gpu_with_cache(&path);
        variant(&gpu).unwrap();
        assert_eq!(gpu.variant_choices()[0].1.source, "measured", "{what}: the cache must not be trusted");
        let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{what}: the rewritten cache does not parse: {e}"));
        assert_eq!(file["format"], CACHE_FORMAT, "{what}");
        let chosen = file["entries"][gpu.variant_key()]["matmul"]["chosen"].as_str().unwrap();
        assert!(ppo_wgpu::kernels::matmul::BATCH_VARIANTS.iter().any(|(_, name)| *name == chosen), "{what}: {file}");
        if what == "stale" {
            assert!(file["entries"].get(&stale_key).is_some(), "another version's entry is kept, not used");
        }
    }
}

#[test]
fn without_a_cache_the_choice_is_measured_and_kept_in_memory() {
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    gpu.set_variant_cache(None);
    let first = variant(&gpu).unwrap();
    assert_eq!(variant(&gpu).unwrap(), first, "measured once per device");
    assert_eq!(gpu.variant_choices().len(), 1);
}

/// A product runs on its family's choice by its rows and outputs: fewer than 16 rows
/// `matmul_few_rows`, fewer than 128 `matmul_narrow` (NN and NT; a weight gradient's rows are
/// never a decode step's), at least 4096 × 4096 outputs `matmul_large` (on a GPU; on a CPU
/// adapter the `matmul` family's choice, unmeasured), the rest `matmul`. Each family's choice
/// here comes from the cache file, a different variant each.
#[test]
fn a_product_runs_on_the_family_of_its_rows_and_outputs() {
    use ppo_wgpu::kernels::matmul::{BATCH_VARIANTS, Layout, VARIANTS, variant_for};
    let forced = ["PPO_WGPU_MATMUL", "PPO_WGPU_MATMUL_NARROW", "PPO_WGPU_MATMUL_FEW_ROWS", "PPO_WGPU_MATMUL_LARGE"];
    if forced.iter().any(|v| std::env::var_os(v).is_some()) {
        return; // a forced variant is not the cache's
    }
    let path = cache_dir("variants-families").join("variants.json");
    let gpu = gpu_with_cache(&path);
    let family = |chosen: &str, variants: &[(MatmulVariant, &str)]| {
        choice_among(chosen, &variants.iter().map(|&(_, name)| name).collect::<Vec<_>>())
    };
    let file = serde_json::json!({ "format": CACHE_FORMAT, "entries": { gpu.variant_key(): {
        "matmul": family("register-tiled", &BATCH_VARIANTS),
        "matmul_large": family("workgroup-tiled-128", &BATCH_VARIANTS),
        "matmul_narrow": family("texture", &VARIANTS),
        "matmul_few_rows": family("split-k", &VARIANTS),
    } } });
    std::fs::write(&path, file.to_string()).unwrap();
    let on_cpu = gpu.info.device_type == wgpu::DeviceType::Cpu;
    let large = if on_cpu { MatmulVariant::RegisterTiled } else { MatmulVariant::WorkgroupTiledLarge };
    let cases = [
        (Layout::NN, 1, 768, MatmulVariant::SplitK),
        (Layout::NT, 15, 50304, MatmulVariant::SplitK),
        (Layout::NN, 16, 768, MatmulVariant::Texture),
        (Layout::NT, 127, 50304, MatmulVariant::Texture),
        (Layout::NN, 128, 768, MatmulVariant::RegisterTiled),
        (Layout::TN, 8, 768, MatmulVariant::RegisterTiled),
        (Layout::NT, 256, 50304, MatmulVariant::RegisterTiled),
        (Layout::NN, 4096, 4096, large),
        (Layout::NT, 1024, 50304, large),
        (Layout::TN, 50304, 768, large),
    ];
    for (layout, m, n, want) in cases {
        assert_eq!(variant_for(&gpu, layout, m, n).unwrap(), want, "{layout:?} {m}×{n}");
    }
    let families: Vec<String> = gpu.variant_choices().into_iter().map(|(f, _)| f).collect();
    assert_eq!(families.contains(&"matmul_large".to_string()), !on_cpu, "{families:?}");
    assert!(gpu.variant_choices().iter().all(|(_, c)| c.source == "cached"), "nothing measured");
}

/// The PPO losses' row walk (family ppo_rows) is measured on the PPO kernels themselves, the
/// fastest chosen; a cached choice is used as it is. Rows past an invocation's loop limit
/// (GPT-2's vocabulary) have families of their own, for the PPO kernels and for cross-entropy.
#[test]
fn the_ppo_row_walk_is_a_family_of_its_own_measured_on_the_ppo_kernels() {
    use ppo_wgpu::kernels::cross_entropy::{self, RowVariant};
    use ppo_wgpu::kernels::ppo::{LONG_ROW_VARIANTS, ROW_VARIANTS, long_row_variant, row_variant};
    let forced = ["PPO_WGPU_PPO_ROWS", "PPO_WGPU_PPO_ROWS_LONG", "PPO_WGPU_CROSS_ENTROPY_LONG"];
    if forced.iter().any(|v| std::env::var_os(v).is_some()) {
        return; // forced: nothing is measured or read from the cache
    }
    // Measured: every walk the adapter can run has a figure, and the fastest is chosen; rows
    // past an invocation's loop limit (GPT-2's vocabulary) have a family of their own.
    let gpu = suite_gpu(Gpu::new(None).unwrap());
    gpu.set_variant_cache(None);
    let families = [
        ("ppo_rows", row_variant(&gpu).unwrap(), &ROW_VARIANTS[..]),
        ("ppo_rows_long", long_row_variant(&gpu).unwrap(), &LONG_ROW_VARIANTS[..]),
        ("cross_entropy_long", cross_entropy::long_variant(&gpu).unwrap(), &cross_entropy::LONG_VARIANTS[..]),
    ];
    let choices = gpu.variant_choices();
    for (family, chosen, variants) in families {
        let (_, choice) = choices.iter().find(|(f, _)| f == family).unwrap();
        let rate = |name: &str| choice.figures.iter().find(|(n, _)| n == name).and_then(|(_, r)| *r);
        let rates: Vec<(RowVariant, f64)> = variants.iter().filter_map(|&(v, name)| Some((v, rate(name)?))).collect();
        // The subgroup walk has a figure exactly where the adapter has subgroups.
        assert_eq!(rates.len(), variants.len() - usize::from(!gpu.has_subgroups()), "{family}: {:?}", choice.figures);
        let fastest = rates.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0;
        assert_eq!(chosen, fastest, "{family}: {:?}", choice.figures);
    }
    // Cached: used as it is, whatever the cross-entropy family chose.
    let dir = cache_dir("variants-ppo-rows");
    for (variant, name) in ROW_VARIANTS {
        let path = dir.join(format!("{name}.json"));
        let gpu = gpu_with_cache(&path);
        let figures: Vec<(&str, f64)> = ROW_VARIANTS.iter().map(|&(_, n)| (n, 1.0)).collect();
        let file = serde_json::json!({ "format": CACHE_FORMAT, "entries": { gpu.variant_key(): {
            "ppo_rows": { "chosen": name, "figures": figures, "unit": "GB/s" } } } });
        std::fs::write(&path, file.to_string()).unwrap();
        assert_eq!(row_variant(&gpu).unwrap(), variant);
    }
}

/// A family measured on top of another (c_fc's GELU epilogue runs on the matmul chosen for its
/// rows): the choice the measurement makes on the way goes to the device's cache file like its
/// own, not to the default one (the measuring device is a twin of the device, opened for the
/// purpose).
#[test]
fn a_measurement_keeps_the_choices_it_makes_on_the_way_where_the_device_keeps_its_own() {
    use ppo_wgpu::kernels::matmul::gelu_epilogue;
    let path = cache_dir("variants-nested").join("variants.json");
    let gpu = gpu_with_cache(&path);
    gelu_epilogue(&gpu, 32).unwrap();
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let entry = &file["entries"][gpu.variant_key()];
    assert!(entry["bias_gelu_narrow"]["chosen"].is_string() && entry["matmul_narrow"]["chosen"].is_string(), "{file}");
}
