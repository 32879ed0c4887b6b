use crate::common::*;
use ppo_wgpu::gpu::Recorder;
use ppo_wgpu::kernels::window::{window_gather, window_scatter};
use ppo_wgpu::reference;

/// A column window gathered out of ragged rows and scattered back matches plain indexing,
/// exactly (they copy values); the scatter writes every value of its output (NaN before), and
/// is the gather's adjoint: ⟨gather(x), y⟩ = ⟨x, scatter(y)⟩, which makes it the gather's
/// backward.
#[test]
fn window_gather_and_scatter_match_plain_indexing() {
    let gpu = gpu();
    let mut rng = Rng::new(404);
    // (rows, stride, first, width): a window inside ragged rows, one at each end, the whole
    // row, one column of one row, and a wide window past a 256-value workgroup; then the same
    // in whole vec4s (the vec4 forms).
    for (rows, stride, first, width) in [
        (5, 37, 11, 9),
        (3, 29, 0, 4),
        (4, 23, 17, 6),
        (6, 13, 0, 13),
        (1, 1, 0, 1),
        (2, 700, 3, 611),
        (5, 36, 8, 12),
        (3, 32, 0, 4),
        (4, 24, 16, 8),
        (6, 12, 0, 12),
        (1, 4, 0, 4),
        (2, 1100, 64, 1036),
    ] {
        let what = format!("rows={rows} stride={stride} first={first} width={width}");
        let whole = rng.normals(rows * stride, 1.0);
        let window = rng.normals(rows * width, 1.0);
        let (gathered, scattered) = (zeros(&[rows, width]), upload(&vec![f64::NAN; rows * stride], &[rows, stride]));
        let mut rec = Recorder::new(&gpu);
        window_gather(&mut rec, &gathered, &upload(&whole, &[rows, stride]), first).unwrap();
        window_scatter(&mut rec, &scattered, &upload(&window, &[rows, width]), first).unwrap();
        rec.submit();
        let (gathered, scattered) = (download(&gathered), download(&scattered));
        let as_f32 = |x: Vec<f64>| x.into_iter().map(|v| v as f32 as f64).collect::<Vec<_>>();
        assert_close(
            &format!("gather {what}"),
            &gathered,
            &as_f32(reference::window_gather(&whole, stride, first, width)),
            0.0,
            0.0,
        );
        assert_close(
            &format!("scatter {what}"),
            &scattered,
            &as_f32(reference::window_scatter(&window, stride, first, width)),
            0.0,
            0.0,
        );
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>();
        let (lhs, rhs) = (dot(&gathered, &as_f32(window.clone())), dot(&as_f32(whole.clone()), &scattered));
        assert!((lhs - rhs).abs() <= 1e-9 * (1.0 + lhs.abs()), "{what}: ⟨gather x, y⟩ = {lhs}, ⟨x, scatter y⟩ = {rhs}");
    }
    // A window past the end of the row, or of other rows, is refused before anything runs.
    let mut rec = Recorder::new(&gpu);
    let err = window_gather(&mut rec, &zeros(&[3, 5]), &zeros(&[3, 8]), 4).unwrap_err().to_string();
    assert!(err.contains("columns 4..9 of [3, 8]"), "{err}");
    let err = window_scatter(&mut rec, &zeros(&[2, 8]), &zeros(&[3, 5]), 0).unwrap_err().to_string();
    assert!(err.contains("[3, 5] is not columns 0..5 of [2, 8]"), "{err}");
}
