//! Generates the tonic/prost code from `proto/slipway.proto` with a protoc that
//! ships inside a crate, so that a build needs nothing installed beside Rust.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(config, &["proto/slipway.proto"], &["proto"])?;
    Ok(())
}
