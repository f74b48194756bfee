//! Compiles the BPF programs (`xdp-prog`) with the nightly toolchain and bpf-linker and leaves
//! the object in OUT_DIR, where `loader.rs` embeds it: one self-contained `synscope` binary.

fn main() -> anyhow::Result<()> {
    // `cargo fuzz` builds with `--cfg fuzzing` and sanitizer flags that must not reach the BPF
    // build; fuzz targets never load BPF, so they get an empty object (loading it fails).
    println!("cargo:rustc-check-cfg=cfg(fuzzing)");
    // `synscope --version` names the commit it was built from.
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SYNSCOPE_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
        std::fs::write(out.join("synscope-xdp"), b"")?;
        return Ok(());
    }
    // aya-build tracks xdp-prog's own sources; the shared types live in common.
    println!("cargo:rerun-if-changed=../common/src");
    let package = aya_build::Package {
        name: "xdp-prog",
        root_dir: "../xdp-prog",
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
