//! Every shader parses and validates with naga, on any machine (no GPU needed), and every
//! file in shaders/ is one the crate uses.

use ppo_wgpu::kernels::ALL_SHADERS;

#[test]
fn every_shader_parses_and_validates() {
    for shader in ALL_SHADERS {
        let module = naga::front::wgsl::parse_str(shader.source)
            .unwrap_or_else(|e| panic!("{}.wgsl does not parse:\n{}", shader.name, e.emit_to_string(shader.source)));
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}.wgsl does not validate:\n{}", shader.name, e.emit_to_string(shader.source)));
    }
}

#[test]
fn every_shader_file_is_registered_and_documented() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
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
