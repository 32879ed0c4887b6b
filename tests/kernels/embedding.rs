use crate::common::*;
use crate::suite_gpu::suite_gpu;
use ppo_wgpu::gpu::Recorder;
use ppo_wgpu::kernels::embedding::{Buckets, check_indices, embedding_backward, embedding_forward, position_ids};
use ppo_wgpu::reference;

#[test]
fn position_ids_follow_hugging_face_left_padding() {
    // max(cumsum(mask) − 1, 0) per row.
    let mask = [0, 0, 1, 1, 1, /* row 2 */ 1, 1, 1, 0, 0];
    assert_eq!(position_ids(&mask, 5), vec![0, 0, 0, 1, 2, 0, 1, 2, 2, 2]);
}

#[test]
fn out_of_range_ids_are_an_error_naming_the_index() {
    let err = check_indices(&[1, 2, 512], 512, "input_ids").unwrap_err().to_string();
    assert!(err.contains("input_ids[2] = 512") && err.contains("512 rows"), "{err}");
}

#[test]
fn embedding_forward_and_backward_match_reference() {
    let mut rng = Rng::new(30);
    // (tokens, vocab, positions, channels): unaligned and the tiny model's shape. Few distinct
    // ids so that many tokens share a row (the race an atomic-free backward must avoid).
    // C = 29: the scalar kernels; 28 and 128: the vec4 forms.
    for (n, vocab, positions, c) in [(37, 11, 53, 29), (37, 11, 53, 28), (32 * 64, 512, 64, 128)] {
        let ids: Vec<u32> = (0..n).map(|_| rng.below(vocab as u32)).collect();
        let mask: Vec<u32> = (0..n).map(|i| (i % 13 != 0) as u32).collect();
        let pos = position_ids(&mask, positions.min(n));
        let (wte, wpe) = (rng.normals(vocab * c, 1.0), rng.normals(positions * c, 1.0));
        let dout = rng.normals(n * c, 1.0);
        let gpu = gpu();
        let (t_ids, t_pos) = (gpu.upload_u32(&[n], &ids).unwrap(), gpu.upload_u32(&[n], &pos).unwrap());
        let out = zeros(&[n, c]);
        let prior = rng.normals(vocab * c, 1.0);
        let (dwte, dwpe) = (upload(&prior, &[vocab, c]), zeros(&[positions, c]));
        let t_dout = upload(&dout, &[n, c]);
        let mut rec = Recorder::new(&gpu);
        embedding_forward(&mut rec, &out, &t_ids, &t_pos, &upload(&wte, &[vocab, c]), &upload(&wpe, &[positions, c]))
            .unwrap();
        embedding_backward(&mut rec, &dwte, &t_dout, &Buckets::new(&gpu, &ids, vocab).unwrap()).unwrap();
        embedding_backward(&mut rec, &dwpe, &t_dout, &Buckets::new(&gpu, &pos, positions).unwrap()).unwrap();
        rec.submit();
        let what = format!("embedding n={n} V={vocab} T={positions} C={c}");
        assert_close(
            &format!("{what} forward"),
            &download(&out),
            &reference::embedding_forward(&ids, &pos, &wte, &wpe, c),
            1e-6,
            1e-6,
        );
        let g_wte = added(&dwte, &prior);
        // Sums of up to n/vocab gradients in f32.
        assert_close(
            &format!("{what} dwte"),
            &g_wte,
            &reference::embedding_backward(&dout, &ids, vocab, c),
            1e-4,
            1e-5,
        );
        assert_close(
            &format!("{what} dwpe"),
            &download(&dwpe),
            &reference::embedding_backward(&dout, &pos, positions, c),
            1e-4,
            1e-5,
        );
        let loss = |wte: &[f64]| dot(&dout, &reference::embedding_forward(&ids, &pos, wte, &wpe, c));
        check_fd(&format!("{what} dwte"), &g_wte, loss, &wte, &mut rng, 1e-4, 1e-4);
    }
}

#[test]
fn embedding_splits_a_table_larger_than_the_binding_limit() {
    // Bindings of at most 16 KiB (4096 floats) against a 300 × 32 table: the forward and the
    // backward each run over 3 row slices of 128 rows (GPT-2's 154 MB wte on a 128 MiB adapter).
    let gpu = suite_gpu(ppo_wgpu::gpu::Gpu::with_binding_limit(None, Some(16 * 1024)).unwrap());
    let mut rng = Rng::new(31);
    let (n, vocab, positions, c) = (64, 300, 16, 32);
    let ids: Vec<u32> = (0..n).map(|_| rng.below(vocab as u32)).collect();
    let pos: Vec<u32> = (0..n as u32).map(|i| i % positions as u32).collect();
    let (wte, wpe, dout) = (rng.normals(vocab * c, 1.0), rng.normals(positions * c, 1.0), rng.normals(n * c, 1.0));
    let up = |x: &[f64], shape: &[usize]| gpu.upload(shape, &to_f32(x)).unwrap();
    let (out, dwte) = (up(&vec![0.0; n * c], &[n, c]), up(&vec![0.0; vocab * c], &[vocab, c]));
    let mut rec = Recorder::new(&gpu);
    let (t_ids, t_pos) = (gpu.upload_u32(&[n], &ids).unwrap(), gpu.upload_u32(&[n], &pos).unwrap());
    embedding_forward(&mut rec, &out, &t_ids, &t_pos, &up(&wte, &[vocab, c]), &up(&wpe, &[positions, c])).unwrap();
    embedding_backward(&mut rec, &dwte, &up(&dout, &[n, c]), &Buckets::new(&gpu, &ids, vocab).unwrap()).unwrap();
    assert!(rec.dispatch_count() >= 5, "the table should have been split");
    rec.submit();
    let got = |t| gpu.download(t).unwrap().into_iter().map(f64::from).collect::<Vec<_>>();
    assert_close(
        "split embedding forward",
        &got(&out),
        &reference::embedding_forward(&ids, &pos, &wte, &wpe, c),
        1e-6,
        1e-6,
    );
    assert_close(
        "split embedding backward",
        &got(&dwte),
        &reference::embedding_backward(&dout, &ids, vocab, c),
        1e-5,
        1e-5,
    );
}
