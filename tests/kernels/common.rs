//! Shared test helpers: the GPU (opened once per test binary), seeded random inputs, comparison
//! with a stated tolerance that prints the worst mismatches, and finite differences.

use crate::suite_gpu::suite_gpu;
use ppo_wgpu::gpu::{DType, Gpu, Recorder, Tensor};
pub use ppo_wgpu::rng::Rng;
use std::sync::{Arc, OnceLock};

/// The adapter the tests run on: `$PPO_WGPU_ADAPTER` or the default (lavapipe on CI).
pub fn gpu() -> Arc<Gpu> {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| {
        let gpu = suite_gpu(Gpu::new(None).unwrap_or_else(|e| panic!("the kernel tests need a GPU adapter: {e}")));
        eprintln!("kernel tests on {}", gpu.describe());
        gpu
    })
    .clone()
}

/// An f16's bits as f32 (normal, subnormal and zero values).
pub fn f16_to_f32(h: u32) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let (exponent, mantissa) = ((h >> 10) & 0x1F, (h & 0x3FF) as f64);
    sign * if exponent == 0 {
        mantissa * 2f64.powi(-24)
    } else {
        (1.0 + mantissa / 1024.0) * 2f64.powi(exponent as i32 - 15)
    }
}

/// The values of f16 pairs packed into u32 words (pack2x16float: the low half first).
pub fn unpack_f16_pairs(words: &[u32]) -> Vec<f64> {
    words.iter().flat_map(|&w| [f16_to_f32(w & 0xFFFF), f16_to_f32(w >> 16)]).collect()
}

pub fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

pub fn upload(x: &[f64], shape: &[usize]) -> Tensor {
    gpu().upload(shape, &to_f32(x)).unwrap()
}

pub fn zeros(shape: &[usize]) -> Tensor {
    let gpu = gpu();
    let t = gpu.tensor(shape, DType::F32).unwrap();
    let mut rec = Recorder::new(&gpu);
    rec.zero(&t);
    rec.submit();
    t
}

pub fn download(t: &Tensor) -> Vec<f64> {
    gpu().download(t).unwrap().into_iter().map(f64::from).collect()
}

/// What an accumulating kernel added to `t`, which held `prior` before: its values less prior.
pub fn added(t: &Tensor, prior: &[f64]) -> Vec<f64> {
    download(t).iter().zip(prior).map(|(g, p)| g - p).collect()
}

/// Asserts |got − want| ≤ atol + rtol·|want| everywhere, both finite; on failure prints the
/// worst mismatch and the first few, with their indices.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs reference {}", got.len(), want.len());
    let mut worst: Option<(usize, f64)> = None;
    let mut bad = Vec::new();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        let excess = err - (atol + rtol * w.abs());
        // NaN anywhere (got or reference) counts as a mismatch.
        let bad_here = excess.is_nan() || excess > 0.0 || !g.is_finite() || !w.is_finite();
        if bad_here {
            if bad.len() < 5 {
                bad.push(format!("  [{i}] got {g:.7e} want {w:.7e} (|err| {err:.2e})"));
            }
            if worst.is_none_or(|(_, e)| excess > e || !excess.is_finite()) {
                worst = Some((i, excess));
            }
        }
    }
    if let Some((i, _)) = worst {
        panic!(
            "{what}: {} mismatches beyond atol {atol:.1e} + rtol {rtol:.1e}; worst at [{i}]: got {:.7e} want {:.7e}\n{}",
            bad.len(),
            got[i],
            want[i],
            bad.join("\n")
        );
    }
}

/// Central finite differences of a scalar function at the given coordinates of x.
pub fn finite_differences(f: impl Fn(&[f64]) -> f64, x: &[f64], coords: &[usize], h: f64) -> Vec<f64> {
    let mut x = x.to_vec();
    coords
        .iter()
        .map(|&i| {
            let orig = x[i];
            x[i] = orig + h;
            let up = f(&x);
            x[i] = orig - h;
            let down = f(&x);
            x[i] = orig;
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// `count` coordinates spread over 0..n (deterministic).
pub fn sample_coords(rng: &mut Rng, n: usize, count: usize) -> Vec<usize> {
    (0..count.min(n)).map(|_| rng.below(n as u32) as usize).collect()
}

/// Σ weights·values: the scalar loss whose gradient a backward kernel computes.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Checks a GPU gradient against finite differences of `loss` at sampled coordinates.
pub fn check_fd(
    what: &str,
    grad: &[f64],
    loss: impl Fn(&[f64]) -> f64,
    x: &[f64],
    rng: &mut Rng,
    atol: f64,
    rtol: f64,
) {
    let coords = sample_coords(rng, x.len(), 24);
    let fd = finite_differences(loss, x, &coords, 1e-4);
    let got: Vec<f64> = coords.iter().map(|&i| grad[i]).collect();
    assert_close(&format!("{what} vs finite differences"), &got, &fd, atol, rtol);
}

#[test]
#[should_panic(expected = "mismatches")]
fn assert_close_fails_on_a_nan_reference() {
    assert_close("NaN reference", &[1.0, 2.0], &[1.0, f64::NAN], 1e-3, 1e-3);
}

#[test]
#[should_panic(expected = "mismatches")]
fn assert_close_fails_on_a_nan_result() {
    assert_close("NaN result", &[f64::NAN], &[1.0], 1e-3, 1e-3);
}
