//! `cargo bench`: one criterion group per kernel family. Each bench first checks the kernel
//! against its CPU reference at the benched shape, then times many dispatches recorded into one
//! submit (the way the training loop runs them) and reports throughput: FLOP/s for matmul and
//! attention (criterion's "elem/s" there counts floating-point operations), bytes/s for the
//! memory-bound kernels. Every variant of every measured family runs, the adapter's choice
//! first and marked "(chosen)": matmul, layernorm, cross_entropy, attention, and the texture
//! packs, the GELU epilogue, the KV cache format, decode attention, the decode steps' weight
//! format, the sampler's lanes and the PPO loss's row walk (each timed through the work it
//! changes).
//! A summary table in GFLOP/s and GB/s ends the run (benches/common).
//! The LM-head matmul, and the matmul variants more than 4× slower than the chosen one in its
//! measurement, run only with PPO_WGPU_BENCH_LARGE=1 (each takes seconds per call on a
//! software adapter).
//!
//! Shapes: GPT-2 small (768 channels, 12 heads, vocab 50257) on 256 tokens, the tiny config
//! (128 channels, 4 heads, vocab 512) on a 32×64 batch, the shipped demo model's 64-channel MLP
//! projection (matmul), and matmul at 1024³.
//! `PPO_WGPU_ADAPTER` picks the adapter.

mod common;

use criterion::{Criterion, SamplingMode, Throughput};
use ppo_wgpu::gpu::{DType, Gpu, MatmulVariant, Recorder, Tensor, Work};
use ppo_wgpu::kernels::matmul::{Layout, matmul_with_variant};
use ppo_wgpu::kernels::{adamw, attention, cross_entropy, embedding, gelu, layernorm, residual};
use ppo_wgpu::reference;
use ppo_wgpu::rng::Rng;
use ppo_wgpu::selfcheck::worst_error;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A benchmark's throughput in floating-point operations per iteration (matmul, attention).
fn counting_flops(x: f64) -> Work {
    Work { flops: x, bytes: 0.0 }
}

/// A benchmark's throughput in bytes per iteration (the memory-bound kernels).
fn counting_bytes(x: f64) -> Work {
    Work { flops: 0.0, bytes: x }
}

struct Bench {
    gpu: Arc<Gpu>,
    rng: Rng,
}

impl Bench {
    fn up(&self, x: &[f64], shape: &[usize]) -> Tensor {
        let v: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        self.gpu.upload(shape, &v).unwrap()
    }
    fn empty(&self, shape: &[usize]) -> Tensor {
        let t = self.gpu.tensor(shape, DType::F32).unwrap();
        Recorder::new(&self.gpu).zero(&t);
        t
    }
    fn check(&self, name: &str, t: &Tensor, want: &[f64], atol: f64, rtol: f64) {
        let worst = worst_error(&self.gpu.download(t).unwrap(), want, atol, rtol);
        assert!(worst <= 1.0, "{name}: result does not match the CPU reference (worst error {worst:.2} × tolerance)");
    }

    /// Times `record` (one iteration's dispatches), `iters` iterations per submit.
    fn time(&self, c: &mut Criterion, group: &str, name: &str, work: Work, record: impl Fn(&mut Recorder)) {
        let mut g = c.benchmark_group(group);
        // Short: the whole suite must finish in minutes on a 2-core software adapter. Flat
        // sampling: a call slower than the measurement time runs 10 times, not the 55 of
        // criterion's linear sampling (1 + 2 + … + 10 calls).
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(800));
        g.throughput(if work.flops > 0.0 {
            Throughput::Elements(work.flops as u64)
        } else {
            Throughput::Bytes(work.bytes as u64)
        });
        // One untimed call first: it compiles the pipelines (on a GPU driver that can take
        // longer than the timed calls together) and touches the buffers.
        let mut rec = Recorder::new(&self.gpu);
        record(&mut rec);
        rec.submit();
        self.gpu.wait().unwrap();
        let mut total = (0.0, 0u64);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let mut rec = Recorder::new(&self.gpu);
                for _ in 0..iters {
                    record(&mut rec);
                }
                rec.submit();
                self.gpu.wait().unwrap();
                let elapsed = start.elapsed();
                total.0 += elapsed.as_secs_f64();
                total.1 += iters;
                elapsed
            })
        });
        g.finish();
        if total.1 > 0 {
            // (criterion runs nothing for a benchmark its filter leaves out)
            let secs = total.0 / total.1 as f64;
            let (rate, unit) = if work.flops > 0.0 { (work.flops, "GFLOP/s") } else { (work.bytes, "GB/s") };
            common::record(&self.gpu, &format!("{group}/{name}"), rate / secs / 1e9, unit);
        }
    }
}

/// A family's variants, the chosen one first.
fn chosen_first<V: Copy + PartialEq>(chosen: V, variants: &[(V, &str)]) -> Vec<V> {
    std::iter::once(chosen).chain(variants.iter().map(|&(v, _)| v).filter(|&v| v != chosen)).collect()
}

fn bench_matmul(bx: &mut Bench, c: &mut Criterion) {
    // (label, M, N, K, layout)
    let shapes = [
        ("1024^3", 1024, 1024, 1024, Layout::NN),
        ("gpt2 c_attn fwd 256x768x2304", 256, 2304, 768, Layout::NN),
        ("gpt2 c_attn dinp", 256, 768, 2304, Layout::NT),
        ("gpt2 c_attn dW", 768, 2304, 256, Layout::TN),
        // The LM head over GPT-2's vocabulary as it is, and padded to a multiple of 64 as the
        // model runs it (GptConfig::padded_vocab_size).
        ("gpt2 lm_head 256x768x50257", 256, 50257, 768, Layout::NT),
        ("gpt2 lm_head padded 256x768x50304", 256, 50304, 768, Layout::NT),
        ("tiny c_fc fwd 2048x128x512", 2048, 512, 128, Layout::NN),
        // The shipped demo model's MLP projection (64 channels: fewer than 8 texture tiles of
        // output columns) over a rollout's 32 × 32 tokens.
        ("demo c_proj fwd 1024x256x64", 1024, 64, 256, Layout::NN),
    ];
    // The adapter's chosen variant first (measured on first use and cached), then the others.
    let chosen = ppo_wgpu::kernels::matmul::variant(&bx.gpu).unwrap();
    matmul_ladder(bx, c, "matmul", chosen, &shapes);
}

/// The products of at least 4096 × 4096 outputs (family matmul_large, on a CPU adapter the
/// matmul family's choice): large enough to fill a real GPU (the f32-peak target), and GPT-2
/// small's LM head and its weight gradient over 1024 tokens; only when asked.
fn bench_matmul_large(bx: &mut Bench, c: &mut Criterion) {
    let shapes = [
        ("4096^3", 4096, 4096, 4096, Layout::NN),
        ("gpt2 lm_head 1024x768x50304", 1024, 50304, 768, Layout::NT),
        ("gpt2 lm_head dW 50304x1024x768", 50304, 768, 1024, Layout::TN),
    ];
    let chosen = ppo_wgpu::kernels::matmul::large_variant(&bx.gpu).unwrap();
    matmul_ladder(bx, c, "matmul_large", chosen, &shapes);
}

/// The products of fewer than 128 rows (family matmul_narrow): decode steps of 32 sequences of
/// the tiny model and of GPT-2 small (its LM head only when asked).
fn bench_matmul_narrow(bx: &mut Bench, c: &mut Criterion) {
    let chosen = ppo_wgpu::kernels::matmul::narrow_variant(&bx.gpu).unwrap();
    decode_ladder(bx, c, "matmul_narrow", 32, chosen);
}

/// The products of fewer than 16 rows (family matmul_few_rows): the same decode steps of 8
/// sequences.
fn bench_matmul_few_rows(bx: &mut Bench, c: &mut Criterion) {
    let chosen = ppo_wgpu::kernels::matmul::few_rows_variant(&bx.gpu).unwrap();
    decode_ladder(bx, c, "matmul_few_rows", 8, chosen);
}

/// `family`'s ladder at the products of a decode step of `rows` sequences.
fn decode_ladder(bx: &mut Bench, c: &mut Criterion, family: &str, rows: usize, chosen: MatmulVariant) {
    let products = [
        ("tiny decode c_fc", 512, 128, Layout::NN),
        ("tiny decode lm_head", 512, 128, Layout::NT),
        ("gpt2 decode c_attn", 2304, 768, Layout::NN),
        ("gpt2 decode mlp c_proj", 768, 3072, Layout::NN),
        ("gpt2 decode lm_head", 50304, 768, Layout::NT),
    ];
    // Labelled as M x K x N, the layer's input by its output.
    let labels: Vec<String> = products.iter().map(|(name, n, k, _)| format!("{name} {rows}x{k}x{n}")).collect();
    let shapes: Vec<_> =
        products.iter().zip(&labels).map(|(&(_, n, k, layout), label)| (label.as_str(), rows, n, k, layout)).collect();
    matmul_ladder(bx, c, family, chosen, &shapes);
}

/// One matmul family's ladder: at each (label, M, N, K, layout), checked against the CPU
/// reference first, the chosen variant and, at forward (NN) shapes, the others within 4× of it
/// in the family's measurement (all of them, at every layout, when asked: the slowest takes a
/// second per call at 1024³ on a software adapter). Variants the family has no figure for
/// (split-k, which the `matmul` family does not offer) run only where chosen.
fn matmul_ladder(
    bx: &mut Bench,
    c: &mut Criterion,
    family: &str,
    chosen: MatmulVariant,
    shapes: &[(&str, usize, usize, usize, Layout)],
) {
    let variants = chosen_first(chosen, &ppo_wgpu::kernels::matmul::VARIANTS);
    let choices = bx.gpu.variant_choices();
    let figures = choices.iter().find(|(name, _)| name == family).map(|(_, c)| c.figures.clone()).unwrap_or_default();
    let rate = |v: MatmulVariant| {
        let name = ppo_wgpu::kernels::matmul::VARIANTS.iter().find(|&&(x, _)| x == v).unwrap().1;
        figures.iter().find(|(n, _)| n == name).and_then(|(_, r)| *r)
    };
    let close_to_chosen = |v: MatmulVariant| match (rate(v), rate(chosen)) {
        (Some(r), Some(best)) => r >= best / 4.0,
        _ => v == chosen,
    };
    for &(label, m, n, k, layout) in shapes {
        let (sa, sb) = match layout {
            Layout::NN => ([m, k], [k, n]),
            Layout::NT => ([m, k], [n, k]),
            Layout::TN => ([k, m], [k, n]),
        };
        let (a, b) = (bx.rng.normals(m * k, 1.0), bx.rng.normals(k * n, 1.0));
        let (ta, tb, out) = (bx.up(&a, &sa), bx.up(&b, &sb), bx.empty(&[m, n]));
        // Check the first 16 rows (the full reference at 1024³ would dominate the bench's time).
        let rows = m.min(16);
        // GPT-2's LM head takes a second per call on any variant of a software adapter.
        if ((label.starts_with("gpt2") && label.contains("lm_head")) || family == "matmul_large") && !common::large() {
            println!("{family} {label}: skipped (set {}=1 to run it)", common::LARGE_ENV);
            continue;
        }
        let want = match layout {
            // A TN product's first rows are the first columns of A as stored ([K, M]).
            Layout::TN => {
                let columns: Vec<f64> = a.chunks(m).flat_map(|row| row[..rows].to_vec()).collect();
                reference::matmul(&columns, &b, rows, n, k, layout)
            }
            _ => reference::matmul(&a[..rows * k], &b, rows, n, k, layout),
        };
        let run_variants: Vec<MatmulVariant> = variants
            .iter()
            .copied()
            .filter(|&v| {
                v == chosen || (common::large() && rate(v).is_some()) || (layout == Layout::NN && close_to_chosen(v))
            })
            .collect();
        for variant in run_variants {
            let mut rec = Recorder::new(&bx.gpu);
            matmul_with_variant(&mut rec, variant, &out, &ta, &tb, None, layout, false).unwrap();
            rec.submit();
            let got = bx.gpu.download(&out).unwrap();
            let worst = worst_error(&got[..want.len()], &want, 1e-5 * (k as f64).sqrt() * 8.0, 1e-5);
            assert!(worst <= 1.0, "{family} {label} {variant:?}: result does not match the CPU reference");
            let flops = 2.0 * (m * n * k) as f64;
            let mark = if variant == chosen { " (chosen)" } else { "" };
            bx.time(c, family, &format!("{label} {layout:?} {variant:?}{mark}"), counting_flops(flops), |rec| {
                matmul_with_variant(rec, variant, &out, &ta, &tb, None, layout, false).unwrap()
            });
        }
    }
}

fn bench_texture_pack(bx: &mut Bench, c: &mut Criterion) {
    // The texture kernel with each way of filling its operand textures (family texture_pack),
    // the adapter's choice first and marked, at forward shapes whose operands a copy can fill.
    use ppo_wgpu::kernels::matmul::{PACK_METHODS, pack_method, texture_matmul_with_pack};
    let chosen = pack_method(&bx.gpu).unwrap();
    for (label, m, n, k) in
        [("gpt2 c_attn fwd 256x768x2304", 256, 2304, 768), ("tiny c_fc fwd 2048x128x512", 2048, 512, 128)]
    {
        let (a, b) = (bx.rng.normals(m * k, 1.0), bx.rng.normals(k * n, 1.0));
        let (ta, tb, out) = (bx.up(&a, &[m, k]), bx.up(&b, &[k, n]), bx.empty(&[m, n]));
        let want = reference::matmul(&a, &b, m, n, k, Layout::NN);
        for method in chosen_first(chosen, &PACK_METHODS) {
            let product = |rec: &mut Recorder| {
                texture_matmul_with_pack(rec, method, &out, &ta, &tb, None, Layout::NN, false).unwrap()
            };
            let mut rec = Recorder::new(&bx.gpu);
            product(&mut rec);
            rec.submit();
            bx.check("texture matmul", &out, &want, 1e-3, 1e-4);
            let mark = if method == chosen { " (chosen)" } else { "" };
            let flops = (2 * m * n * k) as f64;
            bx.time(c, "texture_pack", &format!("{label} {method:?}{mark}"), counting_flops(flops), product);
        }
    }
}

fn bench_bias_gelu(bx: &mut Bench, c: &mut Criterion) {
    // c_fc's forward with each GELU epilogue (families bias_gelu and, for a decode step's rows,
    // bias_gelu_narrow) on the adapter's matmul variant, the adapter's choice first and marked.
    use ppo_wgpu::kernels::matmul::{GELU_EPILOGUES, gelu_epilogue, linear_forward_gelu_with, variant_for};
    let shapes = [
        ("gpt2 c_fc 256x768x3072", 256, 768),
        ("tiny c_fc 2048x128x512", 2048, 128),
        ("tiny c_fc decode 32x128x512", 32, 128),
    ];
    for (label, m, ch) in shapes {
        let chosen = gelu_epilogue(&bx.gpu, m).unwrap();
        let (x, w, bias) =
            (bx.rng.normals(m * ch, 1.0), bx.rng.normals(ch * 4 * ch, 0.05), bx.rng.normals(4 * ch, 0.1));
        let (tx, tw, tb) = (bx.up(&x, &[m, ch]), bx.up(&w, &[ch, 4 * ch]), bx.up(&bias, &[4 * ch]));
        let (pre, post) = (bx.empty(&[m, 4 * ch]), bx.empty(&[m, 4 * ch]));
        let want = reference::gelu_forward(&reference::linear_forward(&x, &w, Some(&bias), m, ch, 4 * ch));
        let variant = variant_for(&bx.gpu, Layout::NN, m, 4 * ch).unwrap();
        for epilogue in chosen_first(chosen, &GELU_EPILOGUES) {
            let forward = |rec: &mut Recorder| {
                linear_forward_gelu_with(rec, variant, epilogue, &pre, &post, &tx, &tw, &tb).unwrap()
            };
            let mut rec = Recorder::new(&bx.gpu);
            forward(&mut rec);
            rec.submit();
            bx.check("c_fc with GELU", &post, &want, 1e-4, 1e-4);
            let mark = if epilogue == chosen { " (chosen)" } else { "" };
            let flops = (2 * m * ch * 4 * ch) as f64;
            bx.time(c, "bias_gelu", &format!("{label} {variant:?} {epilogue:?}{mark}"), counting_flops(flops), forward);
        }
    }
}

fn bench_kv_cache(bx: &mut Bench, c: &mut Criterion) {
    // A decode step's attention over the cache in each format (family kv_cache) on each kernel
    // (family decode_attention), the adapter's choices first and marked: a small model's rollout
    // (32 rows of 64 positions) and GPT-2's width over 256 positions.
    use ppo_wgpu::kernels::kv_cache::{
        self, CacheShape, FORMATS, KvFormat, decode_attention, decode_attention_with, kv_cache_write,
    };
    let (chosen, chosen_variant) = (kv_cache::format(&bx.gpu).unwrap(), kv_cache::attention_variant(&bx.gpu).unwrap());
    for (label, shape) in [
        ("gpt2 4x256 C=768", CacheShape { b: 4, t_max: 256, c: 768, n_head: 12 }),
        ("tiny 32x64 C=128", CacheShape { b: 32, t_max: 64, c: 128, n_head: 4 }),
    ] {
        let CacheShape { b, t_max, c: ch, n_head } = shape;
        let qkv = bx.rng.normals(b * t_max * 3 * ch, 1.0);
        let t_qkv = bx.up(&qkv, &[b, t_max, 3 * ch]);
        let last: Vec<f64> =
            (0..b).flat_map(|r| qkv[(r * t_max + t_max - 1) * 3 * ch..(r * t_max + t_max) * 3 * ch].to_vec()).collect();
        let (t_last, out) = (bx.up(&last, &[b, 3 * ch]), bx.empty(&[b, ch]));
        let mask = bx.gpu.upload_u32(&[b, t_max], &vec![1; b * t_max]).unwrap();
        for format in chosen_first(chosen, &FORMATS) {
            let cache = kv_cache::new_cache(&bx.gpu, shape, format).unwrap();
            let mut rec = Recorder::new(&bx.gpu);
            kv_cache_write(&mut rec, &cache, &t_qkv, shape, 0).unwrap();
            decode_attention(&mut rec, &out, &t_last, &cache, &mask, shape, t_max, false).unwrap();
            rec.submit();
            // The reference over keys and values as the cache holds them.
            let held = reference::qkv_as_cached(&qkv, ch, format == KvFormat::F16);
            let all = reference::attention_forward(&held, &vec![1; b * t_max], b, t_max, ch, n_head).0;
            let want: Vec<f64> =
                (0..b).flat_map(|r| all[(r * t_max + t_max - 1) * ch..(r * t_max + t_max) * ch].to_vec()).collect();
            bx.check("decode attention", &out, &want, 1e-5, 1e-4);
            for variant in chosen_first(chosen_variant, &kv_cache::ATTENTION_VARIANTS) {
                let name = kv_cache::ATTENTION_VARIANTS.iter().find(|(v, _)| *v == variant).map_or("", |(_, n)| n);
                let mut rec = Recorder::new(&bx.gpu);
                decode_attention_with(&mut rec, variant, &out, &t_last, &cache, &mask, shape, t_max, false).unwrap();
                rec.submit();
                bx.check("decode attention", &out, &want, 1e-5, 1e-4);
                let mark = if format == chosen && variant == chosen_variant { " (chosen)" } else { "" };
                let flops = (2 * 2 * b * t_max * ch) as f64; // q·k and p·v over every cached position
                let name = format!("decode {label} {format:?} {name}{mark}");
                bx.time(c, "kv_cache", &name, counting_flops(flops), |rec| {
                    decode_attention_with(rec, variant, &out, &t_last, &cache, &mask, shape, t_max, false).unwrap()
                });
            }
        }
    }
}

fn bench_decode_weights(bx: &mut Bench, c: &mut Criterion) {
    // A decode step's products (c_attn, attn.c_proj, c_fc, mlp.c_proj and the LM head) reading
    // their weights in each format (families decode_weights and decode_weights_wide, by the
    // rows), the adapter's choice first and marked: a small model's rollout (32 rows, C = 128,
    // V = 512) and GPT-2's (8 rows, C = 768; its LM head over the padded 50304 only with
    // PPO_WGPU_BENCH_LARGE=1). The matmul variant is the one those rows run on.
    use ppo_wgpu::kernels::f16_weights::{self, FORMATS, WeightFormat, in_format};
    use ppo_wgpu::kernels::matmul::matmul;
    let gpt2_vocab = if common::large() { 50304 } else { 0 };
    for (label, m, ch, v) in [("gpt2 8 rows C=768", 8, 768, gpt2_vocab), ("tiny 32 rows C=128", 32, 128, 512)] {
        let chosen = f16_weights::format(&bx.gpu, m).unwrap();
        let mut products =
            vec![(Layout::NN, 3 * ch, ch), (Layout::NN, ch, ch), (Layout::NN, 4 * ch, ch), (Layout::NN, ch, 4 * ch)];
        if v > 0 {
            products.push((Layout::NT, v, ch));
        }
        let x = bx.rng.normals(m * 4 * ch, 1.0);
        let operands: Vec<_> = products
            .iter()
            .map(|&(layout, n, k)| {
                let w = bx.rng.normals(n * k, 0.02);
                let shape = if layout == Layout::NT { [n, k] } else { [k, n] };
                (layout, n, k, bx.up(&x[..m * k], &[m, k]), w.clone(), bx.up(&w, &shape), bx.empty(&[m, n]))
            })
            .collect();
        for format in chosen_first(chosen, &FORMATS) {
            let mut rec = Recorder::new(&bx.gpu);
            let weights: Vec<Tensor> =
                operands.iter().map(|(_, _, _, _, _, w, _)| in_format(&mut rec, w, format).unwrap()).collect();
            for ((layout, _, _, a, _, _, out), w) in operands.iter().zip(&weights) {
                matmul(&mut rec, out, a, w, None, *layout, false).unwrap();
            }
            rec.submit();
            for (layout, n, k, _, w, _, out) in &operands {
                let held: Vec<f64> = match format {
                    WeightFormat::F32 => w.clone(),
                    WeightFormat::F16 => w.iter().map(|&x| reference::f16_weight(x as f32) as f64).collect(),
                };
                let want = reference::matmul(&x[..m * k], &held, m, *n, *k, *layout);
                bx.check("decode product", out, &want, 1e-5, 1e-4);
            }
            let mark = if format == chosen { " (chosen)" } else { "" };
            let flops: usize = products.iter().map(|&(_, n, k)| 2 * m * n * k).sum();
            bx.time(
                c,
                "decode_weights",
                &format!("step products {label} {format:?}{mark}"),
                counting_flops(flops as f64),
                |rec| {
                    for ((layout, _, _, a, _, _, out), w) in operands.iter().zip(&weights) {
                        matmul(rec, out, a, w, None, *layout, false).unwrap();
                    }
                },
            );
        }
    }
}

fn bench_sampling(bx: &mut Bench, c: &mut Criterion) {
    // Drawing a token per row (family sampling: 256, 32 or 8 lanes per row), the adapter's choice
    // first and marked: a small model's rollout (32 rows of 512, plain and with top-k and top-p)
    // and GPT-2's vocabulary (8 rows of 50257, where 32 and 8 lanes would loop too long and run
    // 256: their rows there are left out, unless chosen).
    use ppo_wgpu::kernels::sampling::{self, LANES, LogitRows, SamplerState, Sampling, sample_tokens_with};
    let chosen = sampling::lanes(&bx.gpu).unwrap();
    let plain = Sampling { temperature: 1.0, top_k: 0, top_p: 1.0 };
    let cuts = Sampling { temperature: 0.7, top_k: 50, top_p: 0.95 };
    for (label, b, v, s) in
        [("tiny 32x512", 32, 512, plain), ("tiny 32x512 top-k top-p", 32, 512, cuts), ("gpt2 8x50257", 8, 50257, plain)]
    {
        let x = bx.rng.normals(b * v, 2.0);
        let logits = bx.up(&x, &[b, v]);
        let state = SamplerState::new(&bx.gpu, &vec![1; b], 1).unwrap();
        let rows = LogitRows { rows: b, v, stride: v, base: 0 };
        for lanes in chosen_first(chosen, &LANES) {
            let runs_wider = 32 * v.div_ceil(lanes.count()) > ppo_wgpu::kernels::MAX_SERIAL_STEPS;
            if runs_wider && lanes != chosen {
                continue;
            }
            let name = LANES.iter().find(|(l, _)| *l == lanes).map_or("", |(_, n)| n);
            // The check: greedy draws are each row's first maximum.
            let mut rec = Recorder::new(&bx.gpu);
            let greedy = Sampling { temperature: 0.0, top_k: 0, top_p: 1.0 };
            sample_tokens_with(&mut rec, lanes, &logits, rows, &state, greedy, 7, 0, 0, None, 0).unwrap();
            rec.submit();
            let got = bx.gpu.download_u32(&state.tokens).unwrap();
            for (row, &token) in got.iter().enumerate() {
                // (In f32, as the GPU compares them: two values may round to one.)
                let z: Vec<f32> = x[row * v..(row + 1) * v].iter().map(|&l| l as f32).collect();
                let first_max = (0..v).fold(0, |best, i| if z[i] > z[best] { i } else { best });
                assert_eq!(token as usize, first_max, "sampling {label} {name}: greedy row {row}");
            }
            let mark = if lanes == chosen { " (chosen)" } else { "" };
            // Each draw reads the row 3 times, plus 32 per threshold search.
            let passes = 3 + 32 * ((s.top_k > 0) as usize + (s.top_p < 1.0) as usize);
            bx.time(
                c,
                "sampling",
                &format!("{label} {name}{mark}"),
                counting_bytes((4 * passes * b * v) as f64),
                |rec| sample_tokens_with(rec, lanes, &logits, rows, &state, s, 7, 0, 0, None, 0).unwrap(),
            );
        }
    }
}

fn bench_layernorm(bx: &mut Bench, c: &mut Criterion) {
    // Every variant, the adapter's choice (measured on first use and cached) first and marked.
    let chosen = layernorm::variant(&bx.gpu).unwrap();
    let variants = chosen_first(chosen, &layernorm::VARIANTS);
    for (label, rows, ch) in [("gpt2 256x768", 256, 768), ("tiny 2048x128", 2048, 128)] {
        let (x, w, b) = (bx.rng.normals(rows * ch, 1.0), bx.rng.normals(ch, 1.0), bx.rng.normals(ch, 1.0));
        let (tx, tw, tb) = (bx.up(&x, &[rows, ch]), bx.up(&w, &[ch]), bx.up(&b, &[ch]));
        let (out, mean, rstd) = (bx.empty(&[rows, ch]), bx.empty(&[rows]), bx.empty(&[rows]));
        let (dinp, dw, db) = (bx.empty(&[rows, ch]), bx.empty(&[ch]), bx.empty(&[ch]));
        for &variant in &variants {
            let mut rec = Recorder::new(&bx.gpu);
            layernorm::forward_with_variant(&mut rec, variant, &out, &mean, &rstd, &tx, &tw, &tb, 1e-5).unwrap();
            rec.submit();
            bx.check("layernorm", &out, &reference::layernorm_forward(&x, &w, &b, ch, 1e-5).0, 1e-5, 1e-4);
            let bytes = (2 * rows * ch * 4) as f64;
            let mark = if variant == chosen { " (chosen)" } else { "" };
            bx.time(c, "layernorm", &format!("forward {label} {variant:?}{mark}"), counting_bytes(bytes), |rec| {
                layernorm::forward_with_variant(rec, variant, &out, &mean, &rstd, &tx, &tw, &tb, 1e-5).unwrap()
            });
            bx.time(
                c,
                "layernorm",
                &format!("backward {label} {variant:?}{mark}"),
                counting_bytes(2.0 * bytes),
                |rec| {
                    layernorm::backward_with_variant(rec, variant, &dinp, &dw, &db, &out, &tx, &tw, &mean, &rstd)
                        .unwrap()
                },
            );
            // Fused with the residual add before it: reads two summands, writes the sum and
            // the normalised rows (dinp holds the sum here).
            let fused = |rec: &mut Recorder| {
                layernorm::residual_forward_with_variant(
                    rec, variant, &dinp, &out, &mean, &rstd, &tx, &tx, &tw, &tb, 1e-5,
                )
                .unwrap()
            };
            let mut rec = Recorder::new(&bx.gpu);
            fused(&mut rec);
            rec.submit();
            let twice: Vec<f64> = x.iter().map(|v| 2.0 * v).collect();
            bx.check("residual layernorm", &dinp, &twice, 1e-6, 1e-6);
            bx.check("residual layernorm", &out, &reference::layernorm_forward(&twice, &w, &b, ch, 1e-5).0, 1e-5, 1e-4);
            let name = format!("residual forward {label} {variant:?}{mark}");
            bx.time(c, "layernorm", &name, counting_bytes(2.0 * bytes), fused);
        }
    }
}

/// The shapes of the element-wise benches: the project's two models, and when asked 16M values
/// (enough to reach a real GPU's memory bandwidth, which the small shapes do not).
fn elementwise_shapes() -> Vec<(&'static str, usize)> {
    let mut shapes = vec![("gpt2 256x3072", 256 * 3072), ("tiny 2048x512", 2048 * 512)];
    if common::large() {
        shapes.push(("16M", 16 << 20));
    }
    shapes
}

/// The ceiling for the memory-bound kernels: a buffer-to-buffer copy, counting bytes read and
/// written.
fn bench_copy(bx: &mut Bench, c: &mut Criterion) {
    for (label, n) in elementwise_shapes() {
        let x = bx.rng.normals(n, 1.0);
        let (tx, out) = (bx.up(&x, &[n]), bx.empty(&[n]));
        let mut rec = Recorder::new(&bx.gpu);
        rec.copy(&tx, &out);
        rec.submit();
        bx.check("copy", &out, &x, 0.0, 1e-7);
        bx.time(c, "copy", &format!("buffer copy {label}"), counting_bytes((2 * n * 4) as f64), |rec| {
            rec.copy(&tx, &out)
        });
    }
}

fn bench_elementwise(bx: &mut Bench, c: &mut Criterion) {
    for (label, n) in elementwise_shapes() {
        let x = bx.rng.normals(n, 1.0);
        let (tx, out, dinp) = (bx.up(&x, &[n]), bx.empty(&[n]), bx.empty(&[n]));
        let mut rec = Recorder::new(&bx.gpu);
        gelu::gelu_forward(&mut rec, &out, &tx).unwrap();
        rec.submit();
        bx.check("gelu", &out, &reference::gelu_forward(&x), 1e-6, 1e-5);
        let bytes = (2 * n * 4) as f64;
        bx.time(c, "gelu", &format!("forward {label}"), counting_bytes(bytes), |rec| {
            gelu::gelu_forward(rec, &out, &tx).unwrap()
        });
        bx.time(c, "gelu", &format!("backward {label}"), counting_bytes(1.5 * bytes), |rec| {
            gelu::gelu_backward(rec, &dinp, &tx, &out).unwrap()
        });
        let mut rec = Recorder::new(&bx.gpu);
        residual::residual_forward(&mut rec, &dinp, &tx, &out).unwrap();
        rec.submit();
        let sum: Vec<f64> = x.iter().zip(reference::gelu_forward(&x)).map(|(a, b)| a + b).collect();
        bx.check("residual", &dinp, &sum, 1e-6, 1e-5);
        bx.time(c, "residual", &format!("forward {label}"), counting_bytes(1.5 * bytes), |rec| {
            residual::residual_forward(rec, &dinp, &tx, &out).unwrap()
        });
    }
}

fn bench_embedding(bx: &mut Bench, c: &mut Criterion) {
    for (label, n, vocab, positions, ch) in
        [("gpt2 256 tokens", 256, 50257, 1024, 768), ("tiny 2048 tokens", 2048, 512, 64, 128)]
    {
        let ids: Vec<u32> = (0..n).map(|_| bx.rng.below(vocab as u32)).collect();
        let pos: Vec<u32> = (0..n).map(|i| (i % positions) as u32).collect();
        let (wte, wpe) = (bx.rng.normals(vocab * ch, 0.02), bx.rng.normals(positions * ch, 0.02));
        let (t_ids, t_pos) = (bx.gpu.upload_u32(&[n], &ids).unwrap(), bx.gpu.upload_u32(&[n], &pos).unwrap());
        let (t_wte, t_wpe, out) = (bx.up(&wte, &[vocab, ch]), bx.up(&wpe, &[positions, ch]), bx.empty(&[n, ch]));
        let dwte = bx.empty(&[vocab, ch]);
        let buckets = embedding::Buckets::new(&bx.gpu, &ids, vocab).unwrap();
        let mut rec = Recorder::new(&bx.gpu);
        embedding::embedding_forward(&mut rec, &out, &t_ids, &t_pos, &t_wte, &t_wpe).unwrap();
        rec.submit();
        bx.check("embedding", &out, &reference::embedding_forward(&ids, &pos, &wte, &wpe, ch), 1e-7, 1e-6);
        let bytes = (3 * n * ch * 4) as f64;
        bx.time(c, "embedding", &format!("forward {label}"), counting_bytes(bytes), |rec| {
            embedding::embedding_forward(rec, &out, &t_ids, &t_pos, &t_wte, &t_wpe).unwrap()
        });
        bx.time(c, "embedding", &format!("backward wte {label}"), counting_bytes(bytes), |rec| {
            embedding::embedding_backward(rec, &dwte, &out, &buckets).unwrap()
        });
    }
}

fn bench_attention(bx: &mut Bench, c: &mut Criterion) {
    // Every variant, the adapter's choice first and marked.
    let chosen = attention::variant(&bx.gpu).unwrap();
    let variants = chosen_first(chosen, &attention::VARIANTS);
    for (label, shape) in [
        ("gpt2 B=1 T=256", attention::AttentionShape { b: 1, t: 256, c: 768, n_head: 12 }),
        ("tiny B=32 T=64", attention::AttentionShape { b: 32, t: 64, c: 128, n_head: 4 }),
    ] {
        let attention::AttentionShape { b, t, c: ch, n_head } = shape;
        let qkv = bx.rng.normals(b * t * 3 * ch, 1.0);
        let mask = vec![1u32; b * t];
        let (t_qkv, t_mask) = (bx.up(&qkv, &[b, t, 3 * ch]), bx.gpu.upload_u32(&[b, t], &mask).unwrap());
        let (out, lse, delta, dqkv) =
            (bx.empty(&[b, t, ch]), bx.empty(&[b, n_head, t]), bx.empty(&[b, n_head, t]), bx.empty(&[b, t, 3 * ch]));
        // Causal: QKᵀ and PV over the lower triangle, 2 FLOPs per multiply-add.
        let flops = 2.0 * 2.0 * (b * n_head * t * (t + 1) / 2 * (ch / n_head)) as f64;
        for &variant in &variants {
            let mut rec = Recorder::new(&bx.gpu);
            attention::forward_with_variant(&mut rec, variant, &out, &lse, &t_qkv, &t_mask, shape).unwrap();
            rec.submit();
            bx.check("attention", &out, &reference::attention_forward(&qkv, &mask, b, t, ch, n_head).0, 1e-5, 1e-4);
            let mark = if variant == chosen { " (chosen)" } else { "" };
            bx.time(c, "attention", &format!("forward {label} {variant:?}{mark}"), counting_flops(flops), |rec| {
                attention::forward_with_variant(rec, variant, &out, &lse, &t_qkv, &t_mask, shape).unwrap()
            });
            let name = format!("backward {label} {variant:?}{mark}");
            bx.time(c, "attention", &name, counting_flops(2.5 * flops), |rec| {
                attention::backward_with_variant(rec, variant, &dqkv, &delta, &out, &t_qkv, &out, &lse, &t_mask, shape)
                    .unwrap()
            });
        }
    }
}

fn bench_cross_entropy(bx: &mut Bench, c: &mut Criterion) {
    // Every variant, the adapter's choice first and marked, at the vocabularies the GPU model
    // holds: the tiny model's (family cross_entropy) and GPT-2's padded to 50304, past
    // cross_entropy::SERIAL_MAX_COLUMNS (family cross_entropy_long).
    for (label, rows, v) in [("gpt2 vocab 64x50304", 64, 50304), ("tiny vocab 2048x512", 2048, 512)] {
        let (chosen, variants) = if v <= cross_entropy::SERIAL_MAX_COLUMNS {
            let chosen = cross_entropy::variant(&bx.gpu).unwrap();
            (chosen, chosen_first(chosen, &cross_entropy::VARIANTS))
        } else {
            let chosen = cross_entropy::long_variant(&bx.gpu).unwrap();
            (chosen, chosen_first(chosen, &cross_entropy::LONG_VARIANTS))
        };
        let logits = bx.rng.normals(rows * v, 2.0);
        let targets: Vec<u32> = (0..rows).map(|_| bx.rng.below(v as u32)).collect();
        let t_targets = bx.gpu.upload_u32(&[rows], &targets).unwrap();
        let (loss, lse, dloss) = (bx.empty(&[rows]), bx.empty(&[rows]), bx.up(&vec![1.0; rows], &[rows]));
        let bytes = (rows * v * 4) as f64;
        for &variant in &variants {
            // Fresh logits for each variant: the backward below overwrites them with gradients.
            let t_logits = bx.up(&logits, &[rows, v]);
            let mut rec = Recorder::new(&bx.gpu);
            cross_entropy::forward_with_variant(&mut rec, variant, &loss, &lse, &t_logits, &t_targets, 1.0).unwrap();
            rec.submit();
            bx.check("cross-entropy", &loss, &reference::cross_entropy_forward(&logits, &targets, v), 1e-4, 1e-5);
            let mark = if variant == chosen { " (chosen)" } else { "" };
            bx.time(c, "cross_entropy", &format!("forward {label} {variant:?}{mark}"), counting_bytes(bytes), |rec| {
                cross_entropy::forward_with_variant(rec, variant, &loss, &lse, &t_logits, &t_targets, 1.0).unwrap()
            });
            // In place: the logits become gradients, so each timed iteration rewrites the same
            // buffer.
            let name = format!("backward {label} {variant:?}{mark}");
            bx.time(c, "cross_entropy", &name, counting_bytes(2.0 * bytes), |rec| {
                cross_entropy::backward_with_variant(rec, variant, &t_logits, &dloss, &lse, &t_targets, 1.0).unwrap()
            });
        }
    }
}

fn bench_adamw(bx: &mut Bench, c: &mut Criterion) {
    // The tiny model's ~0.9M parameters and a 16M slice of GPT-2 small's 124M.
    for (label, n) in [("tiny 0.9M params", 900_000), ("16M params", 16 << 20)] {
        let (p, g) = (bx.rng.normals(n, 1.0), bx.rng.normals(n, 1.0));
        let (tp, tg, tm, tv) = (bx.up(&p, &[n]), bx.up(&g, &[n]), bx.empty(&[n]), bx.empty(&[n]));
        let (norm_scale, partial) = (bx.empty(&[2]), bx.empty(&[adamw::NORM_PARTIALS]));
        let chosen = adamw::norm_variant(&bx.gpu).unwrap();
        for variant in chosen_first(chosen, &adamw::NORM_VARIANTS) {
            let mut rec = Recorder::new(&bx.gpu);
            adamw::grad_norm_with_variant(&mut rec, variant, &norm_scale, &partial, &tg, 1.0).unwrap();
            rec.submit();
            let (norm, scale) = reference::grad_norm(&g, 1.0);
            bx.check("grad norm", &norm_scale, &[norm, scale], 1e-5, 1e-4);
            let mark = if variant == chosen { " (chosen)" } else { "" };
            bx.time(
                c,
                "adamw",
                &format!("grad norm {label} {variant:?}{mark}"),
                counting_bytes((n * 4) as f64),
                |rec| adamw::grad_norm_with_variant(rec, variant, &norm_scale, &partial, &tg, 1.0).unwrap(),
            );
        }
        let hp = adamw::AdamW::default();
        // Reads param, grad, m, v; writes param, m, v.
        bx.time(c, "adamw", &format!("update {label}"), counting_bytes((7 * n * 4) as f64), |rec| {
            adamw::adamw_update(rec, &tp, &tm, &tv, &tg, &norm_scale, &hp, 1).unwrap()
        });
    }
}

fn bench_ppo(bx: &mut Bench, c: &mut Criterion) {
    use ppo_wgpu::kernels::cross_entropy::SERIAL_MAX_COLUMNS;
    use ppo_wgpu::kernels::ppo::{
        LONG_ROW_VARIANTS, PpoLossConfig, PpoMinibatch, ROW_VARIANTS, long_row_variant, ppo_loss_fused_with_variant,
        ppo_loss_unfused, row_variant,
    };
    let cfg = PpoLossConfig { ent_coef: 0.01, ..Default::default() };
    // The fused loss with each row walk, the adapter's choice first, at the vocabularies the GPU
    // model holds: the tiny model's (family ppo_rows) and GPT-2's padded to 50304 (ppo_rows_long).
    for (label, b, t, v) in [("gpt2 vocab 4x16x50304", 4, 16, 50304), ("tiny vocab 32x64x512", 32, 64, 512)] {
        let rows = b * t;
        let logits_host = bx.rng.normals(rows * v, 2.0);
        let tokens: Vec<u32> = (0..rows).map(|_| bx.rng.below(v as u32)).collect();
        let mut inputs = vec![0.0; rows * 8];
        for i in 0..rows {
            let row = [
                (i % t >= t / 4) as u8 as f64,
                -3.0 + bx.rng.uniform(),
                bx.rng.normal(),
                bx.rng.normal(),
                bx.rng.normal(),
            ];
            inputs[i * 8..i * 8 + 5].copy_from_slice(&row);
        }
        let count = (0..rows).filter(|&r| r % t + 1 < t && inputs[(r + 1) * 8] != 0.0).count();
        let values_host = bx.rng.normals(rows, 1.0);
        let (logits, values) = (bx.up(&logits_host, &[rows, v]), bx.up(&values_host, &[rows]));
        let (inputs_t, tokens) = (bx.up(&inputs, &[rows, 8]), bx.gpu.upload_u32(&[rows], &tokens).unwrap());
        let (dvalues, stats, logp, scalars) =
            (bx.empty(&[rows]), bx.empty(&[rows, 8]), bx.empty(&[rows, v]), bx.empty(&[rows, 4]));
        let mb = PpoMinibatch {
            logits: &logits,
            tokens: &tokens,
            inputs: &inputs_t,
            values: Some(&values),
            seq: t,
            count,
            sequences: b,
        };
        let rcfg = reference::PpoConfig {
            temperature: 1.0,
            cliprange: 0.2,
            cliprange_value: 0.2,
            vf_coef: 0.1,
            ent_coef: 0.01,
            kl_coef: 0.0,
            sequence_mean: false,
        };
        let token_ids = bx.gpu.download_u32(&tokens).unwrap();
        let want = reference::ppo_loss(&logits_host, &token_ids, &inputs, Some(&values_host), t, v, &rcfg);
        // Effective bandwidth over the logits (rows·V·4 bytes per call) for both, so the two
        // figures compare directly; the fused kernel reads them twice and writes once, the
        // unfused sequence makes five passes.
        let bytes = (rows * v * 4) as f64;
        let (chosen, walks) = if v <= SERIAL_MAX_COLUMNS {
            let chosen = row_variant(&bx.gpu).unwrap();
            (chosen, chosen_first(chosen, &ROW_VARIANTS))
        } else {
            let chosen = long_row_variant(&bx.gpu).unwrap();
            (chosen, chosen_first(chosen, &LONG_ROW_VARIANTS))
        };
        for walk in walks {
            // Check first, on the logits as uploaded (the loss overwrites them with their
            // gradient): the fused kernel against the reference loss.
            let name = ROW_VARIANTS.iter().find(|&&(w, _)| w == walk).unwrap().1; // the same names in both
            bx.gpu.write(&logits, &logits_host.iter().map(|&x| x as f32).collect::<Vec<f32>>()).unwrap();
            let mut rec = Recorder::new(&bx.gpu);
            ppo_loss_fused_with_variant(&mut rec, walk, &mb, &cfg, Some(&dvalues), &stats).unwrap();
            rec.submit();
            bx.check(&format!("ppo_loss_fused {name}"), &logits, &want.dlogits, 1e-7, 1e-4);
            let mark = if walk == chosen { " (chosen)" } else { "" };
            bx.time(c, "ppo_loss", &format!("fused {label} {name}{mark}"), counting_bytes(bytes), |rec| {
                ppo_loss_fused_with_variant(rec, walk, &mb, &cfg, Some(&dvalues), &stats).unwrap()
            });
        }
        bx.time(c, "ppo_loss", &format!("unfused {label}"), counting_bytes(bytes), |rec| {
            ppo_loss_unfused(rec, &mb, &cfg, &dvalues, &stats, &logp, &scalars).unwrap()
        });
    }
}

fn bench_gae(bx: &mut Bench, c: &mut Criterion) {
    use ppo_wgpu::kernels::gae::{GaeKernel, gae};
    let (b, t) = (512, 1024);
    let (rewards, values) = (bx.rng.normals(b * t, 1.0), bx.rng.normals(b * t, 1.0));
    let mask: Vec<f64> = (0..b * t).map(|i| (i % t >= 100 && i % t < 900) as u8 as f64).collect();
    let (tr, tv, tm) = (bx.up(&rewards, &[b, t]), bx.up(&values, &[b, t]), bx.up(&mask, &[b, t]));
    let (adv, ret) = (bx.empty(&[b, t]), bx.empty(&[b, t]));
    let (want, _) = reference::gae(&rewards, &values, &mask, t, 1.0, 0.95);
    for kernel in [GaeKernel::PerSequence, GaeKernel::Scan] {
        let mut rec = Recorder::new(&bx.gpu);
        gae(&mut rec, kernel, &adv, &ret, &tr, &tv, &tm, 1.0, 0.95).unwrap();
        rec.submit();
        bx.check("gae", &adv, &want, 1e-3, 1e-4);
        // Reads rewards, values, mask; writes advantages, returns.
        bx.time(c, "gae", &format!("{kernel:?} B=512 T=1024"), counting_bytes((5 * b * t * 4) as f64), |rec| {
            gae(rec, kernel, &adv, &ret, &tr, &tv, &tm, 1.0, 0.95).unwrap()
        });
    }
}

fn main() {
    let gpu = Gpu::new(None).expect("the benches need a GPU adapter");
    common::begin(&gpu);
    let mut bx = Bench { gpu, rng: Rng::new(7) };
    let mut c = Criterion::default().configure_from_args();
    let families: [fn(&mut Bench, &mut Criterion); 18] = [
        bench_matmul,
        bench_matmul_narrow,
        bench_matmul_few_rows,
        bench_matmul_large,
        bench_copy,
        bench_texture_pack,
        bench_bias_gelu,
        bench_kv_cache,
        bench_decode_weights,
        bench_sampling,
        bench_layernorm,
        bench_elementwise,
        bench_embedding,
        bench_attention,
        bench_cross_entropy,
        bench_adamw,
        bench_ppo,
        bench_gae,
    ];
    for family in families {
        family(&mut bx, &mut c);
    }
    c.final_summary();
    common::print_summary(&bx.gpu);
}
