//! Helpers shared by the host's integration tests: the real `bottle` binary,
//! isolated from the caller's plugin dirs, and out-of-tree plugin builds.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `bottle` with a clean plugin environment: no BOT_BOTTLE_PLUGIN_PATH and
/// an empty data dir, so only `--plugin-dir` and the in-tree plugins beside
/// the binary are found.
pub fn bottle(data_home: &Path) -> Command {
    ensure_in_tree_plugins();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bottle"));
    cmd.env_remove("BOT_BOTTLE_PLUGIN_PATH")
        .env_remove("RUST_LOG")
        .env("XDG_DATA_HOME", data_home)
        .env("NO_COLOR", "1");
    cmd
}

/// Output as (exit code, stdout, stderr); panics if killed by a signal,
/// which would mean the host aborted.
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out: Output = cmd.output().expect("running bottle");
    let code = out.status.code().unwrap_or_else(|| {
        panic!(
            "bottle died from a signal (aborted?): {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

static BUILD: Mutex<()> = Mutex::new(());

/// Builds one package of an out-of-tree cargo project (its own workspace)
/// into `target/out-of-tree` and returns its cdylib.
pub fn build_out_of_tree(manifest: &Path, package: &str) -> PathBuf {
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let target = repo_root().join("target").join("out-of-tree");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--manifest-path"])
        .arg(manifest)
        .args(["-p", package, "--target-dir"])
        .arg(&target)
        .status()
        .expect("running cargo");
    assert!(
        status.success(),
        "building {package} from {} failed",
        manifest.display()
    );
    let lib = target.join("debug").join(format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        package.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    ));
    assert!(lib.exists(), "{} was not built", lib.display());
    lib
}

/// Builds a fixture from tests/fixtures.
pub fn fixture(name: &str) -> PathBuf {
    build_out_of_tree(
        &repo_root().join("tests/fixtures/Cargo.toml"),
        &format!("fixture-{name}"),
    )
}

/// Builds the out-of-tree example provider.
pub fn example_hello() -> PathBuf {
    build_out_of_tree(
        &repo_root().join("examples/provider-hello/Cargo.toml"),
        "bot-bottle-provider-hello",
    )
}

/// A fresh directory holding copies of the given libraries.
pub fn plugin_dir(libs: &[&Path]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for lib in libs {
        std::fs::copy(lib, dir.path().join(lib.file_name().unwrap())).unwrap();
    }
    dir
}

static IN_TREE: std::sync::Once = std::sync::Once::new();

/// The plugin crates under plugins/ the host tests load (codex and claude
/// for their credential files).
pub const IN_TREE_PLUGINS: &[&str] = &["generic", "docker", "codex", "claude"];

/// Makes sure the in-tree plugin libraries sit beside `bottle`, as
/// `cargo build` leaves them. `cargo test` builds only the rlib half of a
/// `cdylib` + `rlib` crate, so the tests build the libraries themselves
/// (cargo has released the target-dir lock by the time tests run).
pub fn ensure_in_tree_plugins() {
    IN_TREE.call_once(|| {
        let exe = PathBuf::from(env!("CARGO_BIN_EXE_bottle"));
        let profile_dir = exe.parent().unwrap();
        let target_dir = profile_dir.parent().unwrap();
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "--quiet", "--manifest-path"])
            .arg(repo_root().join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir);
        for p in IN_TREE_PLUGINS {
            cmd.args(["-p", &format!("bot-bottle-plugin-{p}")]);
        }
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo");
        assert!(status.success(), "building the in-tree plugins failed");
    });
}

/// The library of in-tree plugin `name`, beside `bottle`.
pub fn in_tree_plugin(name: &str) -> PathBuf {
    ensure_in_tree_plugins();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_bottle"));
    let lib = exe.parent().unwrap().join(format!(
        "{}bot_bottle_plugin_{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(lib.exists(), "{} is missing", lib.display());
    lib
}
