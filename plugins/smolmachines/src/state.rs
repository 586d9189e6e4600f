//! Per-bottle records on the host, so that `bottle ls/stop/logs/gc` from
//! any process find microVM bottles.
//!
//! `<root>/<bottle id>/` (mode 0700) holds `bottle.json` (what `ls` shows),
//! `gate.json` (the gate's pid and addresses), `gate.log`, `egress.log` (the
//! audit lines), `agent.log`, `stdin.sock` while an interactive agent runs,
//! `exit.oom` while the gate runs (the exit record its out-of-memory path
//! links to `exit.json`, `crate::memory`), and, once the agent ended,
//! `exit.json`. Nothing
//! here is secret; the machine carries the same labels as Docker resources.
//!
//! `<root>` is `BOT_BOTTLE_SMOL_STATE`, else `<data dir>/bot-bottle/smolmachines`.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The directory holding every bottle's records.
pub fn root() -> PathBuf {
    if let Some(p) = std::env::var_os("BOT_BOTTLE_SMOL_STATE") {
        return PathBuf::from(p);
    }
    dirs::data_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("bot-bottle")
        .join("smolmachines")
}

/// One bottle's files.
#[derive(Debug, Clone)]
pub struct Paths {
    dir: PathBuf,
}

impl Paths {
    /// The files under `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }
    /// The files of bottle `id` under [`root`].
    pub fn of(id: &str) -> Self {
        Self::new(&root().join(id))
    }
    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `bottle.json`.
    pub fn bottle(&self) -> PathBuf {
        self.dir.join("bottle.json")
    }
    /// `gate.json`.
    pub fn gate(&self) -> PathBuf {
        self.dir.join("gate.json")
    }
    /// The gate's own log.
    pub fn gate_log(&self) -> PathBuf {
        self.dir.join("gate.log")
    }
    /// The gate's control socket (live config updates).
    pub fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    /// The agent's stdin, while an interactive agent runs: the gate copies
    /// what one attached `bottle run` writes here into the agent.
    pub fn agent_stdin(&self) -> PathBuf {
        self.dir.join("stdin.sock")
    }
    /// The audit log.
    pub fn egress_log(&self) -> PathBuf {
        self.dir.join("egress.log")
    }
    /// The agent's output.
    pub fn agent_log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }
    /// Written by `bottle stop`: kept for `logs` until `rm`, not garbage.
    pub fn stopped(&self) -> PathBuf {
        self.dir.join("stopped")
    }
    /// The agent's exit.
    pub fn exit(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    /// Creates the directory, private to this user.
    pub fn create(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(self.dir.parent().unwrap_or(Path::new("/")))?;
        std::fs::DirBuilder::new().mode(0o700).create(&self.dir)
    }
}

/// What `bottle ls` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BottleRecord {
    /// Bottle id.
    pub bottle_id: String,
    /// Manifest name.
    pub name: String,
    /// The smolvm machine.
    pub machine: String,
    /// Agent image.
    pub image: String,
    /// RFC 3339.
    pub created: String,
}

/// Where the gate is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateRecord {
    /// Its pid.
    pub pid: u32,
    /// The interceptor listener.
    pub adapter: SocketAddr,
    /// The proxy listener.
    pub proxy: SocketAddr,
}

/// How the agent ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit code.
    pub exit_code: i32,
    /// Why, when not a plain exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Creates an empty file readable by this user only.
pub fn create_private_file(p: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(p)
}

/// Writes `v` as JSON, atomically (temp file + rename).
pub fn write_json<T: Serialize>(p: &Path, v: &T) -> std::io::Result<()> {
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(v)?)?;
    std::fs::rename(tmp, p)
}

/// Reads JSON written by [`write_json`].
pub fn read_json<T: for<'de> Deserialize<'de>>(p: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

/// Every bottle directory under [`root`].
pub fn all() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(root()) else {
        return vec![];
    };
    let mut v: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("bb-"))
        .collect();
    v.sort();
    v
}

/// Whether the gate of `paths` is alive: its pid exists and is our gate
/// binary serving this very directory (a recycled pid is not ours).
pub fn gate_alive(paths: &Paths) -> Option<u32> {
    let rec: GateRecord = read_json(&paths.gate())?;
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", rec.pid)).ok()?;
    let text = String::from_utf8_lossy(&cmdline);
    (text.contains(crate::GATE_BIN) && text.contains(&*paths.dir().to_string_lossy()))
        .then_some(rec.pid)
}

/// Stops the gate (SIGTERM, then SIGKILL after a grace period).
pub fn stop_gate(paths: &Paths) -> bool {
    let Some(pid) = gate_alive(paths) else {
        return false;
    };
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with a pid we verified is our gate; no memory involved.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    for _ in 0..50 {
        if gate_alive(paths).is_none() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    true
}
