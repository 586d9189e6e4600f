// How the launch gate is compiled with plain `rustc`: shared, through
// `include!`, by `build.rs` and by the test that builds the gate for this
// host and for aarch64 and runs it in namespaces of its own
// (`tests/gate_namespace.rs`).

/// Flags for every target: a static, freestanding, small executable.
const GATE_RUSTC_FLAGS: [&str; 7] = [
    "--edition=2021",
    "--crate-type=bin",
    "-Cpanic=abort",
    "-Copt-level=s",
    "-Crelocation-model=static",
    "-Ctarget-feature=+crt-static",
    "-Cstrip=symbols",
];

/// Linkers, tried in order: Rust's own lld (no C toolchain needed), then
/// the system's cc.
const GATE_LINKERS: [&[&str]; 2] = [
    &["-Clinker-flavor=ld.lld", "-Clinker=rust-lld"],
    &[
        "-Clink-arg=-nostartfiles",
        "-Clink-arg=-nostdlib",
        "-Clink-arg=-static",
        "-Clink-arg=-no-pie",
    ],
];
