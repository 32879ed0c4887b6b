//! How both test binaries open a device: with the kernel choices (docs/design.md §2) cached in
//! a file of the suite's own under the target directory, not the user's
//! (~/.cache/ppo-wgpu/variants.json). The suite measures the families with many tests running
//! at once, and a choice measured so is no guide to a training run: one such cache put the GELU
//! kernel after every decode step's c_fc of the default run. An explicit PPO_WGPU_VARIANT_CACHE
//! (`.ci/run` leaves it unset) is followed as it is.

use ppo_wgpu::gpu::{CACHE_ENV, Gpu};
use std::path::PathBuf;
use std::sync::Arc;

/// The suite's variant cache file, unless PPO_WGPU_VARIANT_CACHE says otherwise (None: leave
/// the choice of file to it).
fn suite_variant_cache() -> Option<PathBuf> {
    let own = std::env::var_os(CACHE_ENV).is_none();
    own.then(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("variants.json"))
}

/// `gpu`, caching its kernel choices in the suite's file.
pub fn suite_gpu(gpu: Arc<Gpu>) -> Arc<Gpu> {
    if let Some(path) = suite_variant_cache() {
        gpu.set_variant_cache(Some(path));
    }
    gpu
}

/// The environment a `ppo-wgpu` process the suite starts gets for the same cache.
#[allow(dead_code)] // the kernel tests start no process
pub fn suite_env() -> Vec<(&'static str, PathBuf)> {
    suite_variant_cache().map(|path| (CACHE_ENV, path)).into_iter().collect()
}
