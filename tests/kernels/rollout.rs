use crate::common::*;
use ppo_wgpu::gpu::{DType, Recorder};
use ppo_wgpu::kernels::rollout::{LossInputs, gather_rows, last_token_scores, pack_loss_inputs, values_per_token};

#[test]
fn values_shift_to_the_token_they_predict_and_pack_with_the_loss_inputs() {
    let gpu = gpu();
    let mut rng = Rng::new(320);
    let (b, t) = (4, 7);
    let values = rng.normals(b * t, 1.0);
    let cols: Vec<Vec<f64>> = (0..5).map(|_| rng.normals(b * t, 1.0)).collect();
    // Rows 0–2 with 4 or 5 trained tokens (position 0 never counts); row 3 with none.
    let mask: Vec<f64> =
        (0..b * t).map(|i| if i / t == 3 { (i % t == 0) as u8 as f64 } else { (i % 3 != 0) as u8 as f64 }).collect();
    let shifted = zeros(&[b, t]);
    let inputs = gpu.tensor(&[b * t, 8], DType::F32).unwrap();
    let mut rec = Recorder::new(&gpu);
    let up = |x: &[f64]| upload(x, &[b, t]);
    values_per_token(&mut rec, &shifted, &up(&values)).unwrap();
    let (mask_t, lp, adv, ret, reference) = (up(&mask), up(&cols[0]), up(&cols[2]), up(&cols[3]), up(&cols[4]));
    let x = LossInputs {
        mask: &mask_t,
        old_logprobs: &lp,
        old_values: &shifted,
        advantages: &adv,
        returns: &ret,
        ref_logprobs: &reference,
    };
    pack_loss_inputs(&mut rec, &inputs, &x).unwrap();
    rec.submit();
    let want: Vec<f64> = (0..b * t).map(|i| if i % t == 0 { 0.0 } else { to_f32(&values)[i - 1] as f64 }).collect();
    assert_close("per-token values", &download(&shifted), &want, 0.0, 0.0);
    let got = download(&inputs);
    for i in 0..b * t {
        let row = i / t;
        let trained: f64 = (row * t + 1..(row + 1) * t).map(|j| mask[j]).sum();
        let inv = if trained > 0.0 { 1.0 / trained } else { 0.0 };
        let want = [mask[i], cols[0][i], want[i], cols[2][i], cols[3][i], cols[4][i], inv, 0.0];
        assert_close(&format!("packed inputs row {i}"), &got[i * 8..i * 8 + 8], &want, 1e-7, 0.0);
    }
}

#[test]
fn gather_rows_and_last_token_scores_match_plain_indexing() {
    let gpu = gpu();
    let mut rng = Rng::new(321);
    let (n, w) = (9, 13);
    let src = rng.normals(n * w, 1.0);
    let rows = [4u32, 0, 8, 4];
    let dst = zeros(&[rows.len(), w]);
    let (b, t) = (4, 6);
    let x = rng.normals(b * t, 1.0);
    // Row 0: left padding then real tokens; row 1: right padding; row 2: none; row 3: all.
    let mask: Vec<u32> = [[0, 0, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [0; 6], [1; 6]].concat();
    let scores = zeros(&[b]);
    let mut rec = Recorder::new(&gpu);
    gather_rows(&mut rec, &dst, &upload(&src, &[n, w]), &gpu.upload_u32(&[rows.len()], &rows).unwrap()).unwrap();
    last_token_scores(&mut rec, &scores, &upload(&x, &[b, t]), &gpu.upload_u32(&[b, t], &mask).unwrap()).unwrap();
    rec.submit();
    let want: Vec<f64> = rows.iter().flat_map(|&r| src[r as usize * w..(r as usize + 1) * w].to_vec()).collect();
    assert_close("gathered rows", &download(&dst), &want, 1e-7, 0.0);
    let want = [x[4], x[t + 2], 0.0, x[3 * t + 5]];
    assert_close("last-token scores", &download(&scores), &want, 1e-7, 0.0);
}
