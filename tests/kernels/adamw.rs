use crate::common::*;
use crate::suite_gpu::suite_gpu;
use ppo_wgpu::gpu::Recorder;
use ppo_wgpu::kernels::adamw::{AdamW, NORM_PARTIALS, NORM_VARIANTS, adamw_update, grad_norm, grad_norm_with_variant};
use ppo_wgpu::reference;

/// Both variants of the norm's first pass (the subgroup form where the adapter has subgroups and
/// the gradient is whole vec4s; the workgroup form elsewhere), on stale partial sums.
#[test]
fn grad_norm_and_clip_scale_match_reference() {
    let mut rng = Rng::new(60);
    // Fewer elements than one workgroup, unaligned, whole vec4s of a few spans, more than
    // NORM_PARTIALS·256 unaligned and as vec4s.
    for n in [37, 37 * 53, 4 * 1237, NORM_PARTIALS * 256 * 3 + 17, NORM_PARTIALS * 256 * 3 + 20] {
        let grad = rng.normals(n, 0.1);
        for (variant, name) in NORM_VARIANTS {
            for max_norm in [0.0, 1.0, 1e6] {
                let (norm_scale, partial) = (zeros(&[2]), upload(&vec![f64::NAN; NORM_PARTIALS], &[NORM_PARTIALS]));
                let gpu = gpu();
                let mut rec = Recorder::new(&gpu);
                let t_grad = upload(&grad, &[n]);
                grad_norm_with_variant(&mut rec, variant, &norm_scale, &partial, &t_grad, max_norm as f32).unwrap();
                rec.submit();
                let (norm, scale) = reference::grad_norm(&grad, max_norm);
                // A sum of n squares in f32.
                assert_close(
                    &format!("grad_norm {name} n={n} max_norm={max_norm}"),
                    &download(&norm_scale),
                    &[norm, scale],
                    1e-6,
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn adamw_matches_reference_over_steps_with_clipping() {
    let mut rng = Rng::new(61);
    // 37·53 takes the scalar kernels, 4·1000 the vec4 ones.
    for n in [37 * 53, 4 * 1000] {
        let hp = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
        let mut param = rng.normals(n, 1.0);
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        let gpu = gpu();
        let (t_param, t_m, t_v) = (upload(&param, &[n]), zeros(&[n]), zeros(&[n]));
        let (norm_scale, partial) = (zeros(&[2]), zeros(&[NORM_PARTIALS]));
        for t in 1..=3 {
            let grad = rng.normals(n, 1.0);
            let t_grad = upload(&grad, &[n]);
            let mut rec = Recorder::new(&gpu);
            grad_norm(&mut rec, &norm_scale, &partial, &t_grad, 1.0).unwrap();
            adamw_update(&mut rec, &t_param, &t_m, &t_v, &t_grad, &norm_scale, &hp, t).unwrap();
            rec.submit();
            let (_, scale) = reference::grad_norm(&grad, 1.0);
            assert!(scale < 0.1, "the test should exercise clipping");
            reference::adamw_update(&mut param, &mut m, &mut v, &grad, scale, 1e-2, 0.9, 0.95, 1e-8, 0.1, t as i32);
            // Elementwise f32 arithmetic; m/sqrt(v) amplifies relative error a little.
            assert_close(&format!("adamw n={n} step {t} param"), &download(&t_param), &param, 1e-6, 1e-5);
            assert_close(&format!("adamw n={n} step {t} m"), &download(&t_m), &m, 1e-7, 1e-5);
            assert_close(&format!("adamw n={n} step {t} v"), &download(&t_v), &v, 1e-9, 1e-5);
        }
    }
}

#[test]
fn grad_norm_and_adamw_split_a_buffer_larger_than_the_binding_limit() {
    // 40000 floats against 16384-float bindings: three slices for the norm and for the update.
    let gpu = suite_gpu(ppo_wgpu::gpu::Gpu::with_binding_limit(None, Some(64 * 1024)).unwrap());
    let mut rng = Rng::new(62);
    let n = 40_000;
    let (grad, p0) = (rng.normals(n, 0.1), rng.normals(n, 1.0));
    let up = |x: &[f64]| gpu.upload(&[x.len()], &to_f32(x)).unwrap();
    let (t_grad, t_p, t_m, t_v) = (up(&grad), up(&p0), up(&vec![0.0; n]), up(&vec![0.0; n]));
    let (norm_scale, partial) = (up(&[0.0; 2]), up(&vec![0.0; NORM_PARTIALS]));
    let hp = AdamW { lr: 1e-2, weight_decay: 0.1, ..AdamW::default() };
    let (norm, scale) = reference::grad_norm(&grad, 1.0);
    let got = |t| gpu.download(t).unwrap().into_iter().map(f64::from).collect::<Vec<_>>();
    for (variant, name) in NORM_VARIANTS {
        let mut rec = Recorder::new(&gpu);
        grad_norm_with_variant(&mut rec, variant, &norm_scale, &partial, &t_grad, 1.0).unwrap();
        rec.submit();
        assert_close(&format!("split grad_norm {name}"), &got(&norm_scale), &[norm, scale], 1e-6, 1e-5);
    }
    let mut rec = Recorder::new(&gpu);
    grad_norm(&mut rec, &norm_scale, &partial, &t_grad, 1.0).unwrap();
    adamw_update(&mut rec, &t_p, &t_m, &t_v, &t_grad, &norm_scale, &hp, 1).unwrap();
    rec.submit();
    let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
    reference::adamw_update(&mut p, &mut m, &mut v, &grad, scale, 1e-2, 0.9, 0.999, 1e-8, 0.1, 1);
    assert_close("split adamw param", &got(&t_p), &p, 1e-6, 1e-5);
}
