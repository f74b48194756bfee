//! Provides the BPF programs (`xdp-prog`) as one object in OUT_DIR, where `loader.rs` embeds
//! it: one self-contained `synscope` binary.
//!
//! The object is kept compiled in `xdp-prog/prebuilt/` (as cilium/ebpf's bpf2go keeps its
//! generated objects), with a stamp naming the hash of the sources it was built from: a build
//! whose BPF sources match the stamp takes it as it is and needs neither the nightly toolchain
//! nor bpf-linker. Otherwise (the sources changed, or `SYNSCOPE_BPF=build`) the programs are
//! compiled with the nightly toolchain and bpf-linker through aya-build. `SYNSCOPE_BPF=check`
//! compiles them too and fails unless the stamp matches the sources and the fresh programs are
//! the committed ones (CI: a change to `xdp-prog/` never ships with a stale object).
//! `scripts/bpf-object.sh` regenerates the committed object.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// Where the committed object and its stamp live, relative to this crate.
const PREBUILT: &str = "../xdp-prog/prebuilt/synscope-xdp.o";
const STAMP: &str = "../xdp-prog/prebuilt/SOURCES";

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
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        std::fs::write(out.join("synscope-xdp"), b"")?;
        return Ok(());
    }
    println!("cargo:rerun-if-env-changed=SYNSCOPE_BPF");
    let sources = bpf_sources()?;
    for f in &sources {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    println!("cargo:rerun-if-changed={PREBUILT}");
    println!("cargo:rerun-if-changed={STAMP}");
    let hash = sources_hash(&sources)?;
    // scripts/bpf-object.sh writes it into the stamp of a regenerated object.
    std::fs::write(out.join("bpf-sources"), &hash)?;
    let stamped = std::fs::read_to_string(STAMP)
        .ok()
        .and_then(|s| stamp_field(&s, "sources").map(str::to_owned));
    let fresh = stamped.as_deref() == Some(hash.as_str()) && Path::new(PREBUILT).exists();
    let mode = std::env::var("SYNSCOPE_BPF").unwrap_or_default();
    match mode.as_str() {
        "" | "prebuilt" if fresh => {
            std::fs::copy(PREBUILT, out.join("synscope-xdp"))
                .context("copying the prebuilt object")?;
            Ok(())
        }
        "" | "prebuilt" | "build" => compile(&out).with_context(|| {
            if fresh {
                String::new()
            } else {
                "the BPF sources (xdp-prog/, common/) changed since xdp-prog/prebuilt/ was made, \
                 so they are compiled here, which needs ./scripts/setup.sh --bpf (nightly + \
                 bpf-linker); then run ./scripts/bpf-object.sh to commit the new object"
                    .to_owned()
            }
        }),
        "check" => {
            compile(&out)?;
            if !fresh {
                bail!(
                    "xdp-prog/prebuilt/ is stale: its stamp names sources {} but they hash to {hash}; \
                     run ./scripts/bpf-object.sh and commit the result",
                    stamped.as_deref().unwrap_or("(none)")
                );
            }
            let built = std::fs::read(out.join("synscope-xdp"))?;
            let committed = std::fs::read(PREBUILT)?;
            let diff = program_difference(&built, &committed)?;
            if let Some(d) = diff {
                let stamp = std::fs::read_to_string(STAMP).unwrap_or_default();
                let toolchain = rustc_nightly_version();
                if stamp_field(&stamp, "rustc").is_some_and(|t| t == toolchain) {
                    bail!(
                        "the committed BPF object differs from one compiled from its sources with the \
                         same toolchain ({toolchain}): {d}; run ./scripts/bpf-object.sh"
                    );
                }
                println!(
                    "cargo:warning=the committed BPF object was built by {} and this toolchain ({toolchain}) \
                     compiles its sources differently ({d}); the sources match its stamp",
                    stamp_field(&stamp, "rustc").unwrap_or("an unnamed toolchain")
                );
            }
            Ok(())
        }
        other => bail!("SYNSCOPE_BPF={other}: expected prebuilt, build or check"),
    }
}

/// Compiles `xdp-prog` with aya-build into `out/synscope-xdp`.
fn compile(out: &Path) -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "xdp-prog",
        root_dir: "../xdp-prog",
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())?;
    anyhow::ensure!(
        out.join("synscope-xdp").exists(),
        "aya-build left no synscope-xdp in OUT_DIR"
    );
    Ok(())
}

/// Every file the BPF object is compiled from, in a fixed order.
fn bpf_sources() -> anyhow::Result<Vec<PathBuf>> {
    let mut files = vec![
        PathBuf::from("../xdp-prog/Cargo.toml"),
        PathBuf::from("../common/Cargo.toml"),
    ];
    for dir in ["../xdp-prog/src", "../common/src"] {
        collect(Path::new(dir), &mut files)?;
    }
    files.sort();
    Ok(files)
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            collect(&p, files)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            files.push(p);
        }
    }
    Ok(())
}

/// SHA-256 over each source's path (relative to the workspace) and contents.
fn sources_hash(files: &[PathBuf]) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    for f in files {
        let rel = f.strip_prefix("..").unwrap_or(f);
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        let body = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        h.update((body.len() as u64).to_le_bytes());
        h.update(&body);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The value of `key: value` in the stamp.
fn stamp_field<'a>(stamp: &'a str, key: &str) -> Option<&'a str> {
    stamp
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

fn rustc_nightly_version() -> String {
    std::process::Command::new("rustc")
        .args(["+nightly", "--version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// What differs between two objects' programs: the names, contents and relocations of their
/// code and data sections (debug info and BTF carry build paths, so they are left out).
fn program_difference(a: &[u8], b: &[u8]) -> anyhow::Result<Option<String>> {
    let (pa, pb) = (programs(a)?, programs(b)?);
    let names = |p: &[Section]| -> Vec<String> { p.iter().map(|s| s.0.clone()).collect() };
    if names(&pa) != names(&pb) {
        return Ok(Some(format!(
            "sections {:?} vs {:?}",
            names(&pa),
            names(&pb)
        )));
    }
    for (x, y) in pa.iter().zip(&pb) {
        if x.1 != y.1 {
            return Ok(Some(format!(
                "section {}: {} vs {} bytes, contents differ",
                x.0,
                x.1.len(),
                y.1.len()
            )));
        }
        if x.2 != y.2 {
            return Ok(Some(format!("section {}: relocations differ", x.0)));
        }
    }
    Ok(None)
}

/// One code or data section: name, contents, relocations (`offset:symbol`).
type Section = (String, Vec<u8>, Vec<String>);

/// Every code and data section of an object, by name.
fn programs(elf: &[u8]) -> anyhow::Result<Vec<Section>> {
    use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SectionKind};
    let file = object::File::parse(elf).context("parsing a BPF object")?;
    let mut out = Vec::new();
    for s in file.sections() {
        let name = s.name().unwrap_or("").to_owned();
        let keep = matches!(
            s.kind(),
            SectionKind::Text
                | SectionKind::Data
                | SectionKind::ReadOnlyData
                | SectionKind::UninitializedData
        ) || matches!(name.as_str(), "license" | "maps" | ".maps");
        if !keep || name.starts_with(".debug") || name.starts_with(".BTF") {
            continue;
        }
        let relocs = s
            .relocations()
            .map(|(off, r)| {
                let target = match r.target() {
                    RelocationTarget::Symbol(i) => file
                        .symbol_by_index(i)
                        .ok()
                        .and_then(|sym| sym.name().ok().map(str::to_owned))
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                format!("{off}:{target}")
            })
            .collect();
        out.push((name, s.data().unwrap_or(&[]).to_vec(), relocs));
    }
    out.sort();
    Ok(out)
}
