use crate::common::*;
use ppo_wgpu::gpu::Recorder;
use ppo_wgpu::kernels::sampling::{LANES, Lanes, LogitRows, SamplerState, Sampling, sample_tokens, sample_tokens_with};
use ppo_wgpu::reference::{sample_threshold, sampling_distribution, uniform_at};

/// The sampler's per-row state for `b` rows (prompt lengths 3, 4, …) and `steps` columns, with
/// the `done` flags given.
fn state(b: usize, steps: usize, done: &[u32]) -> SamplerState {
    let gpu = gpu();
    let lens: Vec<u32> = (0..b as u32).map(|i| 3 + i).collect();
    SamplerState { done: gpu.upload_u32(&[b], done).unwrap(), ..SamplerState::new(&gpu, &lens, steps).unwrap() }
}

/// Samples step 0 of `b` rows of `logits` [b, v] on the GPU, with the adapter's lanes.
fn sample_gpu(logits: &[f32], b: usize, v: usize, s: Sampling, seed: u64, first: usize) -> Vec<u32> {
    let gpu = gpu();
    let state = state(b, 1, &vec![0; b]);
    let t = gpu.upload(&[b, v], logits).unwrap();
    let mut rec = Recorder::new(&gpu);
    let rows = LogitRows { rows: b, v, stride: v, base: 0 };
    sample_tokens(&mut rec, &t, rows, &state, s, seed, first, 0, None, 0).unwrap();
    rec.submit();
    gpu.download_u32(&state.tokens).unwrap()
}

/// As `sample_gpu`, with the lanes named.
fn sample_gpu_with(lanes: Lanes, logits: &[f32], b: usize, v: usize, s: Sampling, seed: u64, first: usize) -> Vec<u32> {
    let gpu = gpu();
    let state = state(b, 1, &vec![0; b]);
    let t = gpu.upload(&[b, v], logits).unwrap();
    let mut rec = Recorder::new(&gpu);
    let rows = LogitRows { rows: b, v, stride: v, base: 0 };
    sample_tokens_with(&mut rec, lanes, &t, rows, &state, s, seed, first, 0, None, 0).unwrap();
    rec.submit();
    gpu.download_u32(&state.tokens).unwrap()
}

fn random_logits(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    rng.normals(n, std).into_iter().map(|x| x as f32).collect()
}

#[test]
fn greedy_picks_the_lowest_index_maximum() {
    let mut rng = Rng::new(300);
    for (b, v) in [(5, 37), (3, 300), (4, 1031)] {
        let mut logits = random_logits(&mut rng, b * v, 2.0);
        // Row 0: a tie for the maximum at two indices; the lower must win.
        let max = logits[..v].iter().cloned().fold(f32::MIN, f32::max) + 1.0;
        logits[v / 2] = max;
        logits[v / 3] = max;
        for (lanes, name) in LANES {
            let got = sample_gpu_with(lanes, &logits, b, v, Sampling { temperature: 0.0, top_k: 0, top_p: 1.0 }, 1, 0);
            for row in 0..b {
                let want = sampling_distribution(&logits[row * v..(row + 1) * v], 0.0, 0, 1.0)[0].0;
                assert_eq!(got[row], want, "greedy {name} row {row} of {b}×{v}");
            }
            assert_eq!(got[0], (v / 3) as u32);
        }
    }
}

/// With the same uniform numbers, the GPU draws the token the CPU reference draws (f32 against
/// f64 sums can disagree only when u falls within rounding of a boundary), and never a token
/// outside the reference's top-k / top-p set.
#[test]
fn sampling_matches_the_reference_for_the_same_random_numbers() {
    let mut rng = Rng::new(301);
    let (b, seed) = (128, 0x1234_5678_9abc_def0u64);
    for (v, s) in [
        (50, Sampling { temperature: 1.0, top_k: 0, top_p: 1.0 }),
        (257, Sampling { temperature: 0.7, top_k: 10, top_p: 1.0 }),
        (257, Sampling { temperature: 1.3, top_k: 0, top_p: 0.8 }),
        (1000, Sampling { temperature: 0.9, top_k: 40, top_p: 0.6 }),
        (33, Sampling { temperature: 1.0, top_k: 1, top_p: 1.0 }),
    ] {
        let logits = random_logits(&mut rng, b * v, 1.5);
        for (lanes, name) in LANES {
            let got = sample_gpu_with(lanes, &logits, b, v, s, seed, 7);
            let mut mismatches = 0;
            for row in 0..b {
                let z = &logits[row * v..(row + 1) * v];
                let kept = sampling_distribution(z, s.temperature, s.top_k, s.top_p);
                assert!(
                    kept.iter().any(|&(i, _)| i == got[row]),
                    "{name} {s:?} V={v} row {row}: token {} is outside the reference's kept set of {}",
                    got[row],
                    kept.len()
                );
                let u = uniform_at(seed, 7 + row as u32, 0);
                mismatches += (sample_threshold(z, s.temperature, s.top_k, s.top_p, u) != got[row]) as usize;
            }
            assert!(mismatches <= 2, "{name} {s:?} V={v}: {mismatches} of {b} rows differ from the reference draw");
        }
    }
}

/// Frequencies over many draws of one row follow the reference distribution (temperature,
/// nucleus cutoff): within 4.5 standard deviations per token.
#[test]
fn sampling_frequencies_follow_the_reference_distribution() {
    let mut rng = Rng::new(302);
    let (b, v) = (4096, 24);
    let row = random_logits(&mut rng, v, 1.0);
    for s in [Sampling { temperature: 0.8, top_k: 0, top_p: 0.7 }, Sampling { temperature: 1.5, top_k: 6, top_p: 1.0 }]
    {
        let logits: Vec<f32> = row.iter().cycle().take(b * v).copied().collect();
        let got = sample_gpu(&logits, b, v, s, 99, 0);
        let dist = sampling_distribution(&row, s.temperature, s.top_k, s.top_p);
        for i in 0..v as u32 {
            let p = dist.iter().find(|d| d.0 == i).map_or(0.0, |d| d.1);
            let count = got.iter().filter(|&&t| t == i).count() as f64;
            let sd = (b as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (count - b as f64 * p).abs() <= 4.5 * sd + 1e-9,
                "{s:?} token {i}: drawn {count} times in {b}, expected {:.1} ± {sd:.1}",
                b as f64 * p
            );
        }
    }
}

/// A row's tokens depend on (seed, sample index, step) only: rows sampled in another batch at
/// the same sample index draw the same tokens.
#[test]
fn a_rows_draw_does_not_depend_on_the_batch() {
    let mut rng = Rng::new(303);
    let (b, v) = (8, 100);
    let logits = random_logits(&mut rng, b * v, 1.0);
    let s = Sampling { temperature: 1.0, top_k: 0, top_p: 0.9 };
    let all = sample_gpu(&logits, b, v, s, 5, 0);
    let tail = sample_gpu(&logits[3 * v..], b - 3, v, s, 5, 3);
    assert_eq!(&all[3..], &tail[..]);
    assert_eq!(all, sample_gpu(&logits, b, v, s, 5, 0), "same seed, same tokens");
    assert_ne!(all, sample_gpu(&logits, b, v, s, 6, 0), "another seed, other tokens");
}

/// Rows that ended emit the pad token; a row that draws EOS is marked ended; positions advance.
#[test]
fn ended_rows_emit_padding_and_eos_ends_a_row() {
    let gpu = gpu();
    let (b, v, steps, eos, pad) = (3, 10, 4, 7u32, 9u32);
    let mut logits = vec![0.0f32; b * v];
    for row in 0..b {
        logits[row * v + if row == 1 { eos as usize } else { 2 }] = 10.0; // greedy: row 1 draws EOS
    }
    let state = state(b, steps, &[0, 0, 1]);
    let t = gpu.upload(&[b, v], &logits).unwrap();
    let mut rec = Recorder::new(&gpu);
    let greedy = Sampling { temperature: 0.0, top_k: 0, top_p: 1.0 };
    let rows = LogitRows { rows: b, v, stride: v, base: 0 };
    sample_tokens(&mut rec, &t, rows, &state, greedy, 0, 0, 2, Some(eos), pad).unwrap();
    rec.submit();
    let tokens = gpu.download_u32(&state.tokens).unwrap();
    assert_eq!([tokens[2], tokens[steps + 2], tokens[2 * steps + 2]], [2, eos, pad]);
    assert_eq!(gpu.download_u32(&state.done).unwrap(), vec![0, 1, 1]);
    assert_eq!(gpu.download_u32(&state.next_ids).unwrap(), vec![2, eos, pad]);
    assert_eq!(gpu.download_u32(&state.next_pos).unwrap(), vec![3 + 2, 4 + 2, 5 + 2]);
}

/// GPT-2's vocabulary with top-k and top-p both on: each invocation of the row's workgroup walks
/// its slice of the row 32 times in each cut's bisection, where llvmpipe stops a loop nest after
/// 65535 steps without a word (32 lanes would walk 50304 there: a request for them, or for 8,
/// runs 256, and draws the same tokens).
#[test]
fn sampling_a_gpt2_sized_vocabulary_with_both_cuts() {
    let mut rng = Rng::new(303);
    let (b, v, seed) = (8, 50257, 0x0bad_cafe_u64);
    let s = Sampling { temperature: 0.9, top_k: 50, top_p: 0.9 };
    let logits = random_logits(&mut rng, b * v, 2.0);
    let got = sample_gpu_with(Lanes::Wide, &logits, b, v, s, seed, 3);
    assert_eq!(sample_gpu_with(Lanes::Narrow, &logits, b, v, s, seed, 3), got, "32 lanes asked for at V = {v}");
    assert_eq!(sample_gpu_with(Lanes::Vector, &logits, b, v, s, seed, 3), got, "8 lanes asked for at V = {v}");
    let mut mismatches = 0;
    for row in 0..b {
        let z = &logits[row * v..(row + 1) * v];
        let kept = sampling_distribution(z, s.temperature, s.top_k, s.top_p);
        assert!(kept.iter().any(|&(i, _)| i == got[row]), "row {row}: token {} outside the kept set", got[row]);
        let u = uniform_at(seed, 3 + row as u32, 0);
        mismatches += (sample_threshold(z, s.temperature, s.top_k, s.top_p, u) != got[row]) as usize;
    }
    // (A draw within rounding of a boundary may differ, as in the test above.)
    assert!(mismatches <= 1, "{mismatches} of {b} rows differ from the reference draw");
}
