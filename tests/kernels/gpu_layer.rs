//! The GPU layer itself: tensors, the pool, the recorder.

use crate::common::*;
use crate::suite_gpu::suite_gpu;
use ppo_wgpu::gpu::{DType, Recorder, Work};

#[test]
fn a_tensor_above_max_buffer_size_is_an_error_not_a_panic() {
    let gpu = gpu();
    let too_big = (gpu.limits.max_buffer_size / 4 + 1024) as usize;
    let err = gpu.tensor(&[too_big], DType::F32).unwrap_err().to_string();
    assert!(err.contains("max_buffer_size") && err.contains(&gpu.info.name), "{err}");
}

#[test]
fn views_reshapes_and_pooled_buffers() {
    // A device of its own: other tests allocate on the shared one while this one counts.
    let gpu = suite_gpu(ppo_wgpu::gpu::Gpu::new(None).unwrap());
    let t = gpu.upload(&[4, 64], &(0..256).map(|i| i as f32).collect::<Vec<_>>()).unwrap();
    let row2 = t.view(&gpu, 128, &[64]).unwrap();
    assert_eq!(gpu.download(&row2).unwrap()[..3], [128.0, 129.0, 130.0]);
    assert!(t.view(&gpu, 3, &[4]).is_err(), "a misaligned view is refused");
    assert!(t.view(&gpu, 200, &[64]).is_err(), "a view past the end is refused");
    assert!(t.reshape(&[3, 64]).is_err());
    assert_eq!(gpu.download_range(&t, 5, 3).unwrap(), vec![5.0, 6.0, 7.0]);
    // A dropped tensor's buffer is reused by the next tensor of the same size.
    let before = gpu.tensor_bytes_allocated();
    drop(t);
    drop(row2);
    let again = gpu.tensor(&[256], DType::F32).unwrap();
    assert_eq!(gpu.tensor_bytes_allocated(), before);
    // Zeroing and copying through a recorder.
    let src = gpu.upload(&[256], &vec![3.0; 256]).unwrap();
    let mut rec = Recorder::new(&gpu);
    rec.zero(&again);
    rec.copy(&src, &again);
    rec.submit();
    assert!(gpu.download(&again).unwrap().iter().all(|&x| x == 3.0));
}

#[test]
fn trimming_the_pool_lets_go_of_what_the_last_iteration_did_not_use() {
    // A device of its own, so that its counts are this test's. Sizes are whole 256-byte blocks.
    let gpu = suite_gpu(ppo_wgpu::gpu::Gpu::new(None).unwrap());
    let (small, large) = (256 * 4, 512 * 4);
    let created = || gpu.counts().buffers;
    drop(gpu.tensor(&[256], DType::F32).unwrap()); // given back in the first iteration
    gpu.trim_pool(); // the first iteration ends: what it gave back stays
    assert_eq!(gpu.tensor_bytes_allocated(), small);
    let (before, t) = (created(), gpu.tensor(&[512], DType::F32).unwrap()); // the second one uses another size
    drop(t);
    gpu.scratch_texture(7, 4, 2).unwrap(); // 8 texels of 16 bytes
    assert_eq!((gpu.tensor_bytes_allocated(), created() - before), (small + large + 128, 2));
    gpu.trim_pool(); // the small buffer, untouched through a whole iteration, goes
    assert_eq!(gpu.tensor_bytes_allocated(), large + 128);
    // A size taken again is reused and kept; the texture, unused for an iteration, goes.
    let before = created();
    drop(gpu.tensor(&[512], DType::F32).unwrap());
    gpu.trim_pool();
    assert_eq!((gpu.tensor_bytes_allocated(), created() - before), (large, 0));
    gpu.scratch_texture(7, 4, 2).unwrap();
    assert_eq!((gpu.tensor_bytes_allocated(), created() - before), (large + 128, 1));
}

#[test]
fn a_recorder_with_more_dispatches_than_its_uniform_arena_holds_flushes_in_order() {
    // 3000 dispatches of dst += 1 (each with its own uniform block, 256 bytes apart: the
    // 256 KiB arena holds 1024) must all land, in order, across the recorder's flushes.
    use ppo_wgpu::kernels::residual::accumulate;
    let gpu = gpu();
    let (dst, one) = (gpu.upload(&[300], &[0.0; 300]).unwrap(), gpu.upload(&[300], &[1.0; 300]).unwrap());
    let mut rec = Recorder::new(&gpu);
    for _ in 0..3000 {
        accumulate(&mut rec, &dst, &one).unwrap();
    }
    assert_eq!(rec.dispatch_count(), 3000);
    rec.submit();
    assert!(gpu.download(&dst).unwrap().iter().all(|&x| x == 3000.0));
}

/// A shader wgpu rejects is an error naming it, not a panic inside wgpu.
#[test]
fn a_broken_shader_is_an_error_not_a_panic() {
    let gpu = suite_gpu(ppo_wgpu::gpu::Gpu::new(None).unwrap());
    let broken = ppo_wgpu::gpu::Shader {
        name: "broken",
        source: "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }",
        includes: &[],
    };
    let t = gpu.tensor(&[4], DType::F32).unwrap();
    let mut rec = Recorder::new(&gpu);
    let err = rec
        .dispatch(
            &broken,
            "main",
            &[],
            &[0u8; 16],
            &[ppo_wgpu::gpu::Binding { index: 1, resource: ppo_wgpu::gpu::Resource::Tensor(&t, DType::F32) }],
            [1, 1, 1],
            Work::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("broken:main") && err.contains("GPU error"), "{err}");
}

/// An error wgpu reports outside an error scope (here: a binding the entry point does not
/// have) comes back from the next wait or download as this crate's error, not a panic.
#[test]
fn an_uncaptured_wgpu_error_comes_back_from_the_next_wait() {
    let gpu = suite_gpu(ppo_wgpu::gpu::Gpu::new(None).unwrap());
    let (a, b, out, extra) = (
        gpu.upload(&[8], &[1.0; 8]).unwrap(),
        gpu.upload(&[8], &[2.0; 8]).unwrap(),
        gpu.tensor(&[8], DType::F32).unwrap(),
        gpu.tensor(&[8], DType::F32).unwrap(),
    );
    let mut rec = Recorder::new(&gpu);
    let shader = &ppo_wgpu::kernels::residual::SHADER;
    let bindings = [
        ppo_wgpu::gpu::Binding { index: 1, resource: ppo_wgpu::gpu::Resource::Tensor(&a, DType::F32) },
        ppo_wgpu::gpu::Binding { index: 2, resource: ppo_wgpu::gpu::Resource::Tensor(&b, DType::F32) },
        ppo_wgpu::gpu::Binding { index: 3, resource: ppo_wgpu::gpu::Resource::Tensor(&out, DType::F32) },
        ppo_wgpu::gpu::Binding { index: 7, resource: ppo_wgpu::gpu::Resource::Tensor(&extra, DType::F32) }, // not in the shader
    ];
    rec.dispatch(shader, "residual_forward", &[], &8u32.to_le_bytes(), &bindings, [1, 1, 1], Work::default()).unwrap();
    drop(rec);
    let err = gpu.download(&out).unwrap_err().to_string();
    assert!(err.contains("GPU error"), "{err}");
    assert!(gpu.wait().is_ok(), "the error is reported once");
}

/// One buffer at two bindings of a dispatch, either of them writable, is an error naming both
/// bindings (WebGPU forbids it; wgpu native runs two writable bindings without a word), except
/// two writable views that do not overlap. Reading one tensor at two bindings is fine.
#[test]
fn a_writable_buffer_bound_twice_is_refused_before_it_reaches_the_gpu() {
    use ppo_wgpu::kernels::{adamw, residual};
    let gpu = gpu();
    let x: Vec<f32> = (0..256).map(|i| i as f32).collect();
    let t = gpu.upload(&[256], &x).unwrap();
    let mut rec = Recorder::new(&gpu);
    let err = residual::residual_forward(&mut rec, &t, &t, &zeros(&[256])).unwrap_err().to_string();
    let (vec4, scalar) = (err.contains("bindings 4 and 6 "), err.contains("bindings 1 and 3 "));
    assert!(err.contains("residual:residual_forward") && (vec4 || scalar) && err.contains("usage conflict"), "{err}");
    let (front, back) = (t.view(&gpu, 0, &[64]).unwrap(), t.view(&gpu, 64, &[64]).unwrap());
    let err = residual::accumulate(&mut rec, &front, &back).unwrap_err().to_string();
    assert!(err.contains("usage conflict"), "a view read and another written: {err}");

    // AdamW writes the parameter and both moments: views of one buffer, apart or overlapping.
    let state = gpu.upload(&[3 * 64], &vec![0.5; 3 * 64]).unwrap();
    let view = |at| state.view(&gpu, at, &[64]).unwrap();
    let (grad, scale) = (gpu.upload(&[64], &[1.0; 64]).unwrap(), gpu.upload(&[2], &[0.0, 1.0]).unwrap());
    let hp = adamw::AdamW::default();
    let err = adamw::adamw_update(&mut rec, &view(0), &view(32), &view(128), &grad, &scale, &hp, 1).unwrap_err();
    assert!(err.to_string().contains("both are writable and overlap"), "{err}");
    adamw::adamw_update(&mut rec, &view(0), &view(64), &view(128), &grad, &scale, &hp, 1).unwrap();
    let doubled = zeros(&[256]);
    residual::residual_forward(&mut rec, &doubled, &t, &t).unwrap();
    rec.submit();
    assert_eq!(gpu.download(&doubled).unwrap()[255], 510.0);
    let state = gpu.download(&state).unwrap();
    assert!(
        state[0] < 0.5 && state[64] > 0.5 && state[128] > 0.5,
        "AdamW ran: {:?}",
        [state[0], state[64], state[128]]
    );
}

/// A tensor of the wrong element type is an error naming the binding, not garbage.
#[test]
fn a_tensor_of_the_wrong_dtype_is_refused_where_it_is_bound() {
    let gpu = gpu();
    let ids = gpu.upload_u32(&[8], &[1; 8]).unwrap();
    let (a, out) = (zeros(&[8]), zeros(&[8]));
    let mut rec = Recorder::new(&gpu);
    let err = ppo_wgpu::kernels::residual::residual_forward(&mut rec, &out, &a, &ids).unwrap_err().to_string();
    assert!(err.contains("residual:residual_forward4: binding 5 wants F32") && err.contains("U32"), "{err}");
}
