//! Compiles the BPF programs (`xdp-prog`) with the nightly toolchain and bpf-linker and leaves
//! the object in OUT_DIR, where `loader.rs` embeds it: one self-contained `synscope` binary.

fn main() -> anyhow::Result<()> {
    // aya-build tracks xdp-prog's own sources; the shared types live in common.
    println!("cargo:rerun-if-changed=../common/src");
    let package = aya_build::Package {
        name: "xdp-prog",
        root_dir: "../xdp-prog",
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
