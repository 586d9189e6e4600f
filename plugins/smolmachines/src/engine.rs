//! Finding the installed smolvm engine, and asking whether guests boot here.
//!
//! The engine is never downloaded: every call runs with
//! `SMOLMACHINES_NO_DOWNLOAD=1` and an explicit `SMOLVM`. Lookup order:
//! 1. `[backends.smolmachines] engine = PATH` (the binary, or the directory
//!    holding it);
//! 2. the `SMOLVM` environment variable;
//! 3. the `smolmachines` PyPI wheel (`pip install smolmachines`), whose
//!    `smol/` package directory holds `smol-vmm` (the full `smolvm` CLI),
//!    `libkrun.so`, `libkrunfw.so.5` and `agent-rootfs.tar.zst`: asked of
//!    `python3`, then looked for in the usual site-packages directories;
//! 4. `smolvm` on `PATH`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where the engine was found and what it needs around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    /// The `smolvm` CLI (`smol-vmm` in the wheel).
    pub cli: PathBuf,
    /// How it was found, for `bottle doctor`.
    pub found_by: String,
    /// Directory holding `libkrun.so` / `libkrunfw.so.5`, when separate.
    pub lib_dir: Option<PathBuf>,
    /// The guest agent rootfs tarball, when the install ships one.
    pub rootfs_tar: Option<PathBuf>,
}

/// Why no engine was found.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct NotFound {
    /// What was looked at.
    pub message: String,
}

/// What to do when the engine is missing.
pub const INSTALL_HINT: &str = "install the engine with `python3 -m pip install smolmachines` \
     (the wheel carries the smolvm CLI, libkrun and the guest rootfs), or set \
     `[backends.smolmachines] engine = \"/path/to/smolvm\"` or SMOLVM";

const WHEEL_BINARY: &str = "smol-vmm";

impl Engine {
    /// An engine from a binary or a directory holding one.
    pub fn at(path: &Path, found_by: &str) -> Option<Self> {
        if path.is_dir() {
            for name in [WHEEL_BINARY, "smolvm-bin", "smolvm"] {
                if let Some(e) = Self::at(&path.join(name), found_by) {
                    return Some(e);
                }
            }
            return None;
        }
        if !path.is_file() {
            return None;
        }
        let cli = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let dir = cli.parent().map(Path::to_path_buf).unwrap_or_default();
        let lib_dir = [dir.clone(), dir.join("lib")]
            .into_iter()
            .find(|d| d.join("libkrun.so").is_file() || d.join("libkrunfw.so.5").is_file());
        let rootfs_tar = ["agent-rootfs.tar.zst", "agent-rootfs.tar"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file());
        Some(Self {
            cli,
            found_by: found_by.to_string(),
            lib_dir,
            rootfs_tar,
        })
    }

    /// The environment every engine process (and the SDK) runs with.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = vec![
            ("SMOLVM".into(), self.cli.clone().into()),
            ("SMOLMACHINES_NO_DOWNLOAD".into(), "1".into()),
        ];
        if let Some(lib) = &self.lib_dir {
            if std::env::var_os("SMOLVM_LIB_DIR").is_none() {
                env.push(("SMOLVM_LIB_DIR".into(), lib.clone().into()));
            }
        }
        if let Some(tar) = &self.rootfs_tar {
            if std::env::var_os("SMOLVM_AGENT_ROOTFS").is_none()
                && std::env::var_os("SMOLVM_AGENT_ROOTFS_TAR").is_none()
            {
                env.push(("SMOLVM_AGENT_ROOTFS_TAR".into(), tar.clone().into()));
            }
        }
        // The wheel's own SDK turns the VM process's sandboxing on; so do we.
        for (k, v) in [
            ("SMOLVM_SECCOMP", "enforce"),
            ("SMOLVM_LANDLOCK", "enforce"),
        ] {
            if std::env::var_os(k).is_none() {
                env.push((k.into(), v.into()));
            }
        }
        env
    }

    /// The engine's variables that the user set and that engine processes
    /// started with a cleared environment must still see.
    pub fn passthrough_env() -> Vec<(OsString, OsString)> {
        std::env::vars_os()
            .filter(|(k, _)| {
                let k = k.to_string_lossy();
                (k.starts_with("SMOLVM_") && k != "SMOLVM_INTERCEPTOR_TOKEN")
                    || matches!(
                        &*k,
                        "PATH"
                            | "HOME"
                            | "TMPDIR"
                            | "XDG_DATA_HOME"
                            | "XDG_STATE_HOME"
                            | "XDG_CACHE_HOME"
                            | "XDG_RUNTIME_DIR"
                            | "RUST_LOG"
                            | "NO_COLOR"
                    )
            })
            .collect()
    }

    /// A command running the engine CLI with a cleared environment: the
    /// host's secrets never reach an engine process.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.cli);
        c.env_clear()
            .envs(Self::passthrough_env())
            .envs(self.env())
            .stdin(Stdio::null());
        c
    }

    /// Makes the SDK in this process use this engine (it reads `SMOLVM`
    /// and the asset variables from the process environment).
    pub fn install_for_sdk(&self) {
        static DONE: Mutex<Option<PathBuf>> = Mutex::new(None);
        let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
        if done.as_deref() == Some(self.cli.as_path()) {
            return;
        }
        for (k, v) in self.env() {
            // The SDK offers no other way to name the engine. Set once per
            // engine, before any SDK call that reads it.
            std::env::set_var(k, v);
        }
        *done = Some(self.cli.clone());
    }

    /// `smolvm --version`, e.g. `1.32.2`.
    pub fn version(&self) -> Option<String> {
        let out = self.command().arg("--version").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .next()?
            .split_whitespace()
            .find(|w| {
                w.trim_start_matches('v')
                    .starts_with(|c: char| c.is_ascii_digit())
            })
            .map(str::to_string)
    }
}

/// Finds the engine. `option` is `[backends.smolmachines] engine`.
pub fn discover(option: Option<&Path>) -> Result<Engine, NotFound> {
    let mut looked = Vec::new();
    if let Some(p) = option {
        return Engine::at(p, "[backends.smolmachines] engine").ok_or_else(|| NotFound {
            message: format!(
                "[backends.smolmachines] engine = {:?} is not a smolvm binary or a directory holding one",
                p.display().to_string()
            ),
        });
    }
    if let Some(p) = std::env::var_os("SMOLVM") {
        return Engine::at(Path::new(&p), "SMOLVM").ok_or_else(|| NotFound {
            message: format!("SMOLVM={:?} does not name an existing file", p),
        });
    }
    looked.push("SMOLVM (unset)".to_string());
    for dir in wheel_dirs() {
        if let Some(e) = Engine::at(
            &dir.join(WHEEL_BINARY),
            &format!("python wheel at {}", dir.display()),
        ) {
            return Ok(e);
        }
    }
    looked.push("the smolmachines python wheel (python3 and site-packages)".into());
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if let Some(e) = Engine::at(&dir.join("smolvm"), "PATH") {
                return Ok(e);
            }
        }
    }
    looked.push("smolvm on PATH".into());
    Err(NotFound {
        message: format!("no smolvm engine found (looked at {})", looked.join(", ")),
    })
}

/// Directories where the wheel's `smol` package may be (asked of python
/// once per process: `bottle ls` and friends call this on every run).
fn wheel_dirs() -> Vec<PathBuf> {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(wheel_dirs_uncached).clone()
}

fn wheel_dirs_uncached() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for py in ["python3", "python"] {
        for module in ["smol", "smolmachines"] {
            let code = format!("import {module}, os; print(os.path.dirname({module}.__file__))");
            let Ok(o) = Command::new(py)
                .args(["-c", &code])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
            else {
                continue;
            };
            if o.status.success() {
                let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
                if !out.contains(&dir) {
                    out.push(dir);
                }
            }
        }
    }
    let home = dirs::home_dir().unwrap_or_default();
    let mut bases = vec![
        home.join(".local/lib"),
        PathBuf::from("/usr/local/lib"),
        PathBuf::from("/usr/lib"),
    ];
    if let Ok(rd) = std::fs::read_dir(home.join(".pyenv/versions")) {
        bases.extend(rd.flatten().map(|e| e.path().join("lib")));
    }
    for base in bases {
        let Ok(rd) = std::fs::read_dir(&base) else {
            continue;
        };
        for e in rd.flatten() {
            if !e.file_name().to_string_lossy().starts_with("python3") {
                continue;
            }
            for sp in ["site-packages", "dist-packages"] {
                let d = e.path().join(sp).join("smol");
                if d.join(WHEEL_BINARY).is_file() && !out.contains(&d) {
                    out.push(d);
                }
            }
        }
    }
    out
}

/// What the boot probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A tiny guest booted and answered an exec.
    Boots {
        /// Milliseconds from start to the exec's answer.
        ms: u128,
    },
    /// It did not, with the engine's last words.
    NoBoot {
        /// Why.
        reason: String,
    },
}

/// How long the probe waits for a guest: a few seconds on a host where
/// guests boot; `BOT_BOTTLE_SMOL_PROBE_SECS` overrides.
pub fn probe_deadline() -> Duration {
    let secs = std::env::var("BOT_BOTTLE_SMOL_PROBE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    Duration::from_secs(secs)
}

/// Boots a tiny machine (no image, no network) and asks it to run `true`.
/// The answer is cached per engine for the life of the process, so a host
/// where guests hang pays the deadline once.
pub fn boot_probe(engine: &Engine) -> Probe {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Probe>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = cache.get(&engine.cli) {
        return p.clone();
    }
    let file = std::env::var_os("BOT_BOTTLE_SMOL_PROBE_CACHE").map(PathBuf::from);
    let key = format!(
        "{}|{}",
        engine.cli.display(),
        engine.version().unwrap_or_default()
    );
    let p = match file.as_deref().and_then(|f| read_probe_cache(f, &key)) {
        Some(p) => p,
        None => {
            let p = probe_uncached(engine, probe_deadline());
            if let Some(f) = &file {
                let (boots_ms, no_boot) = match &p {
                    Probe::Boots { ms } => (Some(*ms as u64), None),
                    Probe::NoBoot { reason } => (None, Some(reason.clone())),
                };
                let _ = std::fs::write(
                    f,
                    serde_json::json!({"key": key, "boots_ms": boots_ms, "no_boot": no_boot})
                        .to_string(),
                );
            }
            p
        }
    };
    cache.insert(engine.cli.clone(), p.clone());
    p
}

/// A probe answer kept in `BOT_BOTTLE_SMOL_PROBE_CACHE` (tests point it
/// under target/ so a host where guests hang pays the deadline once per
/// build), valid for the same engine binary and version.
fn read_probe_cache(file: &Path, key: &str) -> Option<Probe> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    if v["key"] != key {
        return None;
    }
    match (v["boots_ms"].as_u64(), v["no_boot"].as_str()) {
        (Some(ms), _) => Some(Probe::Boots { ms: ms.into() }),
        (None, Some(r)) => Some(Probe::NoBoot {
            reason: r.to_string(),
        }),
        _ => None,
    }
}

fn probe_uncached(engine: &Engine, deadline: Duration) -> Probe {
    let name = format!(
        "bb-probe-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let run = |args: &[&str]| {
        engine
            .command()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
    };
    let created = run(&[
        "machine", "create", "--name", &name, "--cpus", "1", "--mem", "256",
    ]);
    match created {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return Probe::NoBoot {
                reason: format!("machine create failed: {}", last_line(&o.stderr)),
            }
        }
        Err(e) => {
            return Probe::NoBoot {
                reason: format!("cannot run {}: {e}", engine.cli.display()),
            }
        }
    }
    let start = Instant::now();
    let result = (|| {
        let mut child = engine
            .command()
            .args(["machine", "start", "--name", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", engine.cli.display()))?;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                if !status.success() {
                    let mut err = Vec::new();
                    if let Some(mut s) = child.stderr.take() {
                        use std::io::Read;
                        let _ = s.read_to_end(&mut err);
                    }
                    return Err(format!("machine start failed: {}", last_line(&err)));
                }
                break;
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the guest did not boot within {}s (hardware KVM is required; a paravirtual /dev/kvm such as PVM starts the VMM but never boots the guest kernel)",
                    deadline.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let left = deadline
            .saturating_sub(start.elapsed())
            .max(Duration::from_secs(2));
        let o = engine
            .command()
            .args(["machine", "exec", "--name", &name, "--timeout"])
            .arg(format!("{}ms", left.as_millis()))
            .args(["--", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(start.elapsed().as_millis())
        } else {
            Err(format!(
                "exec in the booted guest failed: {}",
                last_line(&o.stderr)
            ))
        }
    })();
    let _ = run(&["machine", "delete", "--name", &name, "--force"]);
    match result {
        Ok(ms) => Probe::Boots { ms },
        Err(reason) => Probe::NoBoot { reason },
    }
}

/// What an engine said on stderr, on one line: its lines after the first
/// `Error:` (or all of them), the notes about packed assets skipped, capped
/// at 600 characters.
pub fn last_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: no packed assets"))
        .collect();
    let from = lines
        .iter()
        .position(|l| l.starts_with("Error") || l.starts_with("error"))
        .unwrap_or(0);
    let mut msg = lines[from..].join(" ");
    if msg.is_empty() {
        msg = "(no message)".into();
    }
    if msg.chars().count() > 600 {
        msg = msg.chars().take(600).collect::<String>() + "…";
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wheel_directory_is_read_as_an_install() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("smol-vmm"), "").unwrap();
        std::fs::write(d.path().join("libkrun.so"), "").unwrap();
        std::fs::write(d.path().join("agent-rootfs.tar.zst"), "").unwrap();
        let e = Engine::at(d.path(), "test").unwrap();
        assert!(e.cli.ends_with("smol-vmm"));
        assert!(e.lib_dir.is_some() && e.rootfs_tar.is_some());
        let env = e.env();
        assert!(env
            .iter()
            .any(|(k, v)| k == "SMOLMACHINES_NO_DOWNLOAD" && v == "1"));
        assert!(Engine::at(&d.path().join("missing"), "test").is_none());
    }

    #[test]
    fn an_explicit_engine_that_is_not_there_is_an_error_naming_it() {
        let e = discover(Some(Path::new("/nonexistent/smolvm"))).unwrap_err();
        assert!(e.message.contains("/nonexistent/smolvm"), "{e}");
    }

    #[test]
    fn last_line_skips_the_packed_assets_note() {
        let s =
            b"note: no packed assets found for 'smol-vmm'\nStarting\nError: boom\n  because\n\n";
        assert_eq!(last_line(s), "Error: boom because");
        assert_eq!(last_line(b""), "(no message)");
    }
}
