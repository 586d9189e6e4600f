//! Compiles the launch gate (`gate/gate.rs`, see there) into a static,
//! freestanding executable that `src/launch.rs` embeds and places in every
//! agent container. Plain `rustc`, no extra crates: the gate has no
//! dependencies, and it must not link the host's libc (agent images are
//! arbitrary). Where it cannot be built (another architecture, no linker
//! that can make it) the plugin is built without it and starts the agent
//! only after its proxy listens, as it did before; cargo prints a warning.

use std::path::PathBuf;
use std::process::Command;

include!("gate/rustc_args.rs");

fn main() {
    println!("cargo:rerun-if-changed=gate/gate.rs");
    println!("cargo:rerun-if-changed=gate/rustc_args.rs");
    println!("cargo:rustc-check-cfg=cfg(bb_gate)");
    let target = std::env::var("TARGET").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os != "linux" || !(arch == "x86_64" || arch == "aarch64") {
        println!(
            "cargo:warning=no launch gate for {target}: the agent starts after its proxy listens"
        );
        return;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("gate");
    let mut errors = String::new();
    for linker in GATE_LINKERS {
        let result = Command::new(&rustc)
            .args(GATE_RUSTC_FLAGS)
            .args(linker)
            .arg(format!("--target={target}"))
            .arg("gate/gate.rs")
            .arg("-o")
            .arg(&out)
            .output();
        match result {
            Ok(o) if o.status.success() => {
                println!("cargo:rustc-cfg=bb_gate");
                return;
            }
            Ok(o) => errors.push_str(&String::from_utf8_lossy(&o.stderr)),
            Err(e) => errors.push_str(&e.to_string()),
        }
    }
    let first = errors.lines().find(|l| l.contains("error")).unwrap_or("");
    println!("cargo:warning=the launch gate could not be built ({first}): the agent starts after its proxy listens");
}
