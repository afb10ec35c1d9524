//! Generates the tonic/prost code from `proto/slipway.proto` with a protoc that
//! ships inside a crate, so that a build needs nothing installed beside Rust.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Secrets get a Debug of their own that shows no value (`src/secrets.rs`).
    let secret_messages = ["JobSecrets", "HttpsToken", "SshKey", "RegistryLogin"].map(|m| format!(".slipway.v1.{m}"));
    tonic_prost_build::configure().skip_debug(secret_messages).compile_with_config(
        config,
        &["proto/slipway.proto"],
        &["proto"],
    )?;
    Ok(())
}
