//! The kernel tests that use subgroups, again on subgroups of 16 lanes. lavapipe's subgroups
//! have 8 (its 256-bit SIMD), a GPU's have 16, 32 or 64, and every kernel that assumes a width
//! must hold at the others: on an H100's 32 the texture-subgroup matmul, asked for by name,
//! once left rows unwritten while the whole suite passed here. lavapipe's SIMD width is
//! LP_NATIVE_VECTOR_WIDTH (read once per process), so on lavapipe this test runs those tests in
//! a child process of this binary at 512 bits. Mesa's shader cache does not key on that width
//! (a 256-bit shader from the cache runs 16 lanes wrong), so the child has a cache of its own.

use crate::common::gpu;
use ppo_wgpu::gpu::CACHE_ENV;
use std::path::PathBuf;
use std::process::Command;

/// Set in the child: its tests run at 16 lanes.
const CHILD_ENV: &str = "PPO_WGPU_TEST_WIDE_SUBGROUPS";

/// This test, which in the child checks the width.
const THIS: &str = "wide_subgroups::the_subgroup_kernels_pass_on_subgroups_of_16_lanes";

/// Each family with a subgroup variant or a width of its own, and the variant cache.
const TESTS: [&str; 14] = [
    "matmul::matmul_unaligned_shapes",
    "matmul::texture_subgroup_is_measured_where_subgroups_have_8_lanes_and_runs_as_texture_elsewhere",
    "matmul::linear_forward_gelu_epilogues_match_reference",
    "matmul::linear_backward_gelu_matches_reference_and_finite_differences",
    "attention::attention_small_and_unaligned",
    "attention::attention_subgroup_shapes",
    "layernorm::layernorm_forward_and_backward_match_reference_and_finite_differences",
    "cross_entropy::cross_entropy_unaligned_and_tiny_vocab",
    "ppo::ppo_loss_unaligned_vocab_with_entropy_and_temperature",
    "ppo::logprob_entropy_matches_reference",
    "adamw::grad_norm_and_clip_scale_match_reference",
    "sampling::sampling_matches_the_reference_for_the_same_random_numbers",
    "kv_cache::decode_attention_matches_the_causal_reference",
    "variants::a_measured_choice_is_cached_and_a_cached_choice_is_used_as_it_is",
];

#[test]
fn the_subgroup_kernels_pass_on_subgroups_of_16_lanes() {
    let gpu = gpu();
    if std::env::var_os(CHILD_ENV).is_some() {
        assert_eq!(gpu.fixed_subgroup_size(), Some(16), "the child runs on 16 lanes: {}", gpu.describe());
        return;
    }
    if !gpu.info.name.contains("llvmpipe") || !gpu.has_subgroups() {
        // A GPU runs the whole suite at its own width; only lavapipe's can be changed, and
        // without subgroups every kernel runs its other variants at any width.
        eprintln!("note: {}: the suite ran at this adapter's own subgroup width", gpu.describe());
        return;
    }
    let exe = std::env::current_exe().expect("the test binary knows its path");
    // Caches of the child's own: Mesa's shaders, and the kernel choices (which this process,
    // running beside it, writes to the suite's file).
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let out = Command::new(exe)
        .args(TESTS)
        .args([THIS, "--exact"])
        .env("LP_NATIVE_VECTOR_WIDTH", "512")
        .env("MESA_SHADER_CACHE_DIR", tmp.join("mesa-shader-cache-512-bits"))
        .env(CACHE_ENV, tmp.join("variants-16-lanes.json"))
        .env(CHILD_ENV, "1")
        .output()
        .expect("the test binary starts again");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let ran = format!("test result: ok. {} passed", TESTS.len() + 1);
    assert!(out.status.success() && stdout.contains(&ran), "at 16 lanes:\n{stdout}\n{stderr}");
}
