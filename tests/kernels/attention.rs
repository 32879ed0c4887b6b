use crate::common::*;
use ppo_wgpu::gpu::Recorder;
use ppo_wgpu::kernels::attention::{
    AttentionShape, AttentionVariant, VARIANTS, attention_forward, backward_with_variant, forward_with_variant,
};
use ppo_wgpu::reference;

/// Left padding on row 0, right padding on row 1, a fully real row 2 (rows beyond repeat).
fn padding_mask(b: usize, t: usize) -> Vec<u32> {
    (0..b * t)
        .map(|i| {
            let (row, j) = (i / t, i % t);
            match row % 3 {
                0 => (j >= t / 3) as u32,
                1 => (j < t - t / 4) as u32,
                _ => 1,
            }
        })
        .collect()
}

/// Checks each variant against the references.
fn run(shape: AttentionShape, rng: &mut Rng, check_gradients_by_fd: bool) {
    for (variant, _) in VARIANTS {
        run_variant(variant, shape, rng, check_gradients_by_fd);
    }
}

fn run_variant(variant: AttentionVariant, shape: AttentionShape, rng: &mut Rng, check_gradients_by_fd: bool) {
    let AttentionShape { b, t, c, n_head } = shape;
    let qkv = rng.normals(b * t * 3 * c, 1.0);
    let dout = rng.normals(b * t * c, 1.0);
    let mask = padding_mask(b, t);
    let gpu = gpu();
    let (t_qkv, t_mask) = (upload(&qkv, &[b, t, 3 * c]), gpu.upload_u32(&[b, t], &mask).unwrap());
    // delta is the backward's scratch, written by its query kernel before the key/value kernel
    // reads it: NaN to start with, so that a row left unwritten shows in dk and dv.
    let (out, lse, delta, dqkv) = (
        zeros(&[b, t, c]),
        zeros(&[b, n_head, t]),
        upload(&vec![f64::NAN; b * n_head * t], &[b, n_head, t]),
        zeros(&[b, t, 3 * c]),
    );
    let mut rec = Recorder::new(&gpu);
    forward_with_variant(&mut rec, variant, &out, &lse, &t_qkv, &t_mask, shape).unwrap();
    let t_dout = upload(&dout, &[b, t, c]);
    backward_with_variant(&mut rec, variant, &dqkv, &delta, &t_dout, &t_qkv, &out, &lse, &t_mask, shape).unwrap();
    rec.submit();

    let what = format!("attention {variant:?} B={b} T={t} C={c} NH={n_head}");
    let (r_out, r_lse) = reference::attention_forward(&qkv, &mask, b, t, c, n_head);
    // Softmax-weighted sums over up to T keys in f32.
    assert_close(&format!("{what} out"), &download(&out), &r_out, 1e-5, 1e-4);
    assert_close(&format!("{what} lse"), &download(&lse), &r_lse, 1e-5, 1e-5);
    let g = download(&dqkv);
    assert_close(
        &format!("{what} dqkv"),
        &g,
        &reference::attention_backward(&dout, &qkv, &mask, b, t, c, n_head),
        1e-4,
        1e-4,
    );
    if check_gradients_by_fd {
        let loss = |x: &[f64]| dot(&dout, &reference::attention_forward(x, &mask, b, t, c, n_head).0);
        check_fd(&format!("{what} dqkv"), &g, loss, &qkv, rng, 1e-4, 1e-3);
    }
}

#[test]
fn attention_small_and_unaligned() {
    let mut rng = Rng::new(40);
    run(AttentionShape { b: 3, t: 37, c: 32, n_head: 4 }, &mut rng, true);
    run(AttentionShape { b: 2, t: 1, c: 8, n_head: 2 }, &mut rng, true);
}

/// Each head dimension the texture-subgroup entry points take (16, 32 and 64; the other
/// shapes here run it as texture), with T a multiple of 8 and not (the lanes past T standing
/// in for T − 1): padded rows, keys shared across subgroups whose queries see different
/// windows, gradients checked by finite differences too.
#[test]
fn attention_subgroup_shapes() {
    let mut rng = Rng::new(44);
    run(AttentionShape { b: 3, t: 40, c: 32, n_head: 2 }, &mut rng, true);
    run(AttentionShape { b: 3, t: 13, c: 32, n_head: 2 }, &mut rng, true);
    run(AttentionShape { b: 2, t: 24, c: 64, n_head: 2 }, &mut rng, true);
    run(AttentionShape { b: 2, t: 21, c: 64, n_head: 2 }, &mut rng, false);
    run(AttentionShape { b: 3, t: 16, c: 128, n_head: 2 }, &mut rng, false);
    run(AttentionShape { b: 1, t: 5, c: 128, n_head: 2 }, &mut rng, false);
}

#[test]
fn attention_longer_than_a_block() {
    // T = 150: three blocks of 64 queries (the last ragged) in the blocked variant, whose key
    // tiles then start inside an earlier block.
    let mut rng = Rng::new(43);
    run(AttentionShape { b: 3, t: 150, c: 32, n_head: 2 }, &mut rng, false);
}

#[test]
fn attention_tiny_model_shape() {
    let mut rng = Rng::new(41);
    run(AttentionShape { b: 4, t: 64, c: 128, n_head: 4 }, &mut rng, false);
}

#[test]
fn attention_gpt2_small_head_shape() {
    // GPT-2 small's heads (768 channels, 12 heads of 64) on a short batch.
    let mut rng = Rng::new(42);
    run(AttentionShape { b: 1, t: 48, c: 768, n_head: 12 }, &mut rng, false);
}

#[test]
fn attention_rejects_bad_head_dimension() {
    let gpu = gpu();
    let shape = AttentionShape { b: 1, t: 4, c: 30, n_head: 5 }; // head dim 6
    let (qkv, mask, out, lse) =
        (zeros(&[1, 4, 90]), gpu.upload_u32(&[1, 4], &[1; 4]).unwrap(), zeros(&[1, 4, 30]), zeros(&[1, 5, 4]));
    let mut rec = Recorder::new(&gpu);
    let err = attention_forward(&mut rec, &out, &lse, &qkv, &mask, shape).unwrap_err().to_string();
    assert!(err.contains("head dimension 6"), "{err}");
}
