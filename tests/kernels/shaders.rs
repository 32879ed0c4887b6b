//! Every shader parses and validates with naga, on any machine (no GPU needed), and every
//! file in shaders/ is one the crate uses.

use ppo_wgpu::kernels::{ALL_SHADERS, override_sets};

#[test]
fn every_shader_parses_and_validates() {
    for shader in ALL_SHADERS {
        let source = shader.wgsl();
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{}.wgsl does not parse:\n{}", shader.name, e.emit_to_string(&source)));
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}.wgsl does not validate:\n{}", shader.name, e.emit_to_string(&source)));
    }
}

#[test]
fn every_shader_file_is_registered_and_documented() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        if name == "prelude" {
            assert!(ppo_wgpu::gpu::PRELUDE.contains("// prelude.wgsl"), "the prelude documents itself");
            continue;
        }
        let shader = ALL_SHADERS.iter().find(|s| s.name == name);
        assert!(shader.is_some(), "{} is not in kernels::ALL_SHADERS", path.display());
        assert!(
            shader.unwrap().source.starts_with("// "),
            "{} must start with a comment saying what it computes",
            path.display()
        );
        assert!(shader.unwrap().source.contains("Launch:"), "{} must document its launch shape", path.display());
    }
}

/// Calls `f` for every entry point of every shader, specialised with each set of override
/// constants the code uses: its name, a description for messages, and the module and its
/// validation info after naga's override processing. Returns how many it visited.
fn each_specialised_entry_point(mut f: impl FnMut(&str, &str, &naga::Module, &naga::valid::ModuleInfo)) -> usize {
    let mut visited = 0;
    for shader in ALL_SHADERS {
        let module = naga::front::wgsl::parse_str(&shader.wgsl()).unwrap();
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&module)
            .unwrap();
        for set in override_sets(shader.name) {
            let constants: naga::back::PipelineConstants = set.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            for ep in &module.entry_points {
                let what = format!("{}:{} with {set:?}", shader.name, ep.name);
                let stage = (naga::ShaderStage::Compute, ep.name.as_str());
                let (module, info) =
                    naga::back::pipeline_constants::process_overrides(&module, &info, Some(stage), &constants)
                        .unwrap_or_else(|e| panic!("{what}: overrides: {e}"));
                f(&ep.name, &what, &module, &info);
                visited += 1;
            }
        }
    }
    visited
}

/// Every shader, specialised with each set of override constants the code uses, translates
/// through naga's own backends to SPIR-V (Vulkan), MSL (Metal) and HLSL (DX12), entry point by
/// entry point: a Mac or Windows user does not find a translation error first.
#[test]
fn every_shader_translates_to_spirv_msl_and_hlsl() {
    use naga::back::{hlsl, msl, spv};
    let translated = each_specialised_entry_point(|name, what, module, info| {
        let entry = Some((naga::ShaderStage::Compute, name.to_string()));
        let spv_options = spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: name.into() };
        spv::write_vec(module, info, &spv::Options::default(), Some(&spv_options))
            .unwrap_or_else(|e| panic!("{what}: to SPIR-V: {e}"));
        let msl_options = msl::PipelineOptions { entry_point: entry.clone(), ..Default::default() };
        msl::write_string(module, info, &msl::Options::default(), &msl_options)
            .unwrap_or_else(|e| panic!("{what}: to MSL: {e}"));
        let hlsl_options = hlsl::PipelineOptions { entry_point: entry };
        let mut out = String::new();
        hlsl::Writer::new(&mut out, &hlsl::Options::default(), &hlsl_options)
            .write(module, info, None)
            .unwrap_or_else(|e| panic!("{what}: to HLSL: {e}"));
        assert!(out.contains("numthreads"), "{what}: gave no HLSL compute shader");
    });
    assert!(translated > ALL_SHADERS.len(), "only {translated} entry points translated");
}

/// Workgroup sizes are named constants in every shader (no number in `@workgroup_size`), and
/// each such constant, like the row strides, has one value: the Rust constant the host uses.
#[test]
fn workgroup_sizes_and_strides_are_named_and_match_the_host_code() {
    use ppo_wgpu::kernels::SHADER_CONSTANTS;
    for shader in ALL_SHADERS {
        for attr in shader.source.split("@workgroup_size(").skip(1) {
            let args = &attr[..attr.find(')').unwrap()];
            assert!(
                !args.chars().any(|c| c.is_ascii_digit()),
                "{}.wgsl: @workgroup_size({args}) is not named",
                shader.name
            );
        }
    }
    for (name, constant, value) in SHADER_CONSTANTS {
        let shader = ALL_SHADERS.iter().find(|s| s.name == *name).unwrap_or_else(|| panic!("no shader {name}"));
        let decl = format!("const {constant}: u32 = {value}u;");
        assert!(
            shader.source.contains(&decl),
            "{name}.wgsl should declare `{decl}` (the Rust side divides by {value})"
        );
    }
}

/// WebGPU's default limits: what every implementation offers and what a browser gives a page
/// that asks for no more. Each entry point, specialised with each set of override constants the
/// code uses, stays within them, so the kernels can run in a browser tab as they are (the host
/// already splits bindings at the adapter's storage-binding size and lays grids out within its
/// workgroup counts).
#[test]
fn every_entry_point_fits_webgpus_default_limits() {
    let webgpu = wgpu::Limits::defaults();
    let (buffers_max, textures_max) =
        (webgpu.max_storage_buffers_per_shader_stage as usize, webgpu.max_storage_textures_per_shader_stage as usize);
    let (workgroup_bytes_max, invocations_max) =
        (webgpu.max_compute_workgroup_storage_size, webgpu.max_compute_invocations_per_workgroup);
    let size_max =
        [webgpu.max_compute_workgroup_size_x, webgpu.max_compute_workgroup_size_y, webgpu.max_compute_workgroup_size_z];
    let checked = each_specialised_entry_point(|name, what, module, info| {
        let index = module.entry_points.iter().position(|e| e.name == name).unwrap();
        let (entry, uses) = (&module.entry_points[index], info.get_entry_point(index));
        let used = module.global_variables.iter().filter(|&(h, _)| !uses[h].is_empty()).map(|(_, v)| v);
        let (mut buffers, mut textures, mut workgroup_bytes) = (0, 0, 0);
        for var in used {
            match (var.space, &module.types[var.ty].inner) {
                (naga::AddressSpace::Storage { .. }, _) => buffers += 1,
                (naga::AddressSpace::Handle, naga::TypeInner::Image { class, .. }) => {
                    textures += matches!(class, naga::ImageClass::Storage { .. }) as usize
                }
                (naga::AddressSpace::WorkGroup, inner) => workgroup_bytes += inner.size(module.to_ctx()),
                _ => {}
            }
        }
        let size = entry.workgroup_size;
        assert!(buffers <= buffers_max, "{what}: {buffers} storage buffers, WebGPU's default is {buffers_max}");
        assert!(textures <= textures_max, "{what}: {textures} storage textures, the default is {textures_max}");
        assert!(workgroup_bytes <= workgroup_bytes_max, "{what}: {workgroup_bytes} bytes of workgroup memory");
        assert!(size.iter().all(|&s| s > 0), "{what}: workgroup size {size:?} not resolved");
        assert!(size.iter().product::<u32>() <= invocations_max, "{what}: workgroup size {size:?}");
        assert!(size.iter().zip(size_max).all(|(&s, max)| s <= max), "{what}: workgroup size {size:?}");
    });
    assert!(checked > ALL_SHADERS.len(), "only {checked} entry points checked");
}
