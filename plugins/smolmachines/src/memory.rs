//! The gate's memory limit: what an agent makes its egress proxy hold
//! stops the gate, and the agent with it (fail closed), not the machine.
//!
//! The Docker backend bounds its proxy with the sidecar's cgroup memory
//! limit. Here the proxy is a part of the gate, a process of the user on
//! the host, so the bound is a resource limit of the gate:
//! `setrlimit(RLIMIT_DATA)` to [`bot_bottle_plugin_api::egress_memory_limit`]
//! of its config (the same formula). Why this one:
//!
//! * It needs no privilege and no cgroup delegation: any process may
//!   lower its own soft limit. (A cgroup v2 `memory.max` would need a
//!   delegated subtree, which an ordinary user usually has only under a
//!   systemd user session.)
//! * Since Linux 4.7 `RLIMIT_DATA` counts every private writable mapping
//!   (`VM_WRITE & ~VM_SHARED & ~VM_STACK`): the heap, each `mmap`ed
//!   allocation and each thread's stack, not only `brk`. It is counted
//!   when a mapping is made writable, not when it is touched, so it is
//!   stricter than a cgroup (a reserved, untouched `Vec` counts). glibc's
//!   per-thread arenas reserve 64 MiB of address space each, but
//!   `PROT_NONE` until used: that reserve is not counted, while
//!   `RLIMIT_AS` would count it (up to 8 arenas a core) and every
//!   thread's guard too, which is why this is not `RLIMIT_AS`. Not
//!   counted: kernel socket buffers, page cache, and (with the kernel's
//!   `ignore_rlimit_data` boot parameter) anything at all — the gate logs
//!   a warning then.
//! * A failed allocation is where the proxy meets it, so the gate fails
//!   closed in [`GateAlloc`] (the gate binary's global allocator), before
//!   Rust's own abort: it says why on stderr (`gate.log`), links the
//!   agent's exit record with the same reason (what `bottle run` reports;
//!   written when the limit is armed) unless the agent already ended, and
//!   kills its process group — itself
//!   and the agent's `machine exec` (the guest agent ends the command's
//!   process tree when that client goes), so the agent loses its way out
//!   and ends.
//!
//! The machine must not inherit the limit. The SDK runs the engine CLI as
//! a child of the gate (`smolvm machine start`), and that child starts the
//! VMM as its own child (`smolvm _boot-vm …`, libkrun inside it, checked
//! with `ps` and `/proc/PID/limits` under smolvm 1.32.2); a resource limit
//! is inherited across `fork` and `exec`, and the guest's RAM is a private
//! writable mapping of the VMM (a 256 MiB guest: a 256 MiB `rw-p`
//! mapping, `VmData` ~830 MiB), so the gate's limit would cap the guest
//! (or keep it from starting). The gate therefore lowers only its soft
//! limit, and [`lifted`] raises it back to what it was for the launch —
//! create, start, place files — so every engine process started then gets
//! the user's own limit. Nothing of the agent runs yet then (the
//! machine's workload is an idle `sleep`), so nothing untrusted can make
//! the proxy hold memory while it is lifted. The agent's own `machine
//! exec`, a thin client that streams its output, starts after the launch
//! and inherits the limit (the engine CLI ran `machine ls` under a 32 MiB
//! one; if an exec ever met it, the agent would end: fail closed).

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::state::{self, ExitRecord, Paths};

/// Exit code recorded for an agent stopped with its out-of-memory gate:
/// killed (SIGKILL), as Docker reports an agent stopped with its sidecar.
pub const EXIT_CODE: i32 = 137;

/// Whether a failed allocation means the limit was reached (set while the
/// limit is in force).
static ARMED: AtomicBool = AtomicBool::new(false);
/// What the failure path needs, made before the limit is in force: it may
/// not allocate.
static PREPARED: OnceLock<Prepared> = OnceLock::new();

#[derive(Debug)]
struct Prepared {
    /// The limit in force (bytes).
    limit: libc::rlim_t,
    /// The soft limit the gate was started with, which engine processes get.
    original: libc::rlim_t,
    /// The hard limit, never changed.
    hard: libc::rlim_t,
    /// The line for stderr.
    line: Vec<u8>,
    /// The exit record, written whole to `tmp` when the limit is armed;
    /// the failure path only links it to `exit` (which fails, keeping it,
    /// if the agent's own is there). Written then, not on the failure
    /// path: that path must not need a descriptor (an agent near the
    /// limit may hold every one the gate may open, and the record was
    /// lost), nor write a file another thread of the path may be linking
    /// (two threads that met the limit at once could truncate the record
    /// after it was linked, and the kill came before it was written
    /// again: an empty `exit.json`).
    tmp: CString,
    exit: CString,
}

/// Why the bottle ended, for `bottle run` and `gate.log` (the Docker
/// backend's wording, with the gate for the sidecar). It says what the
/// limit is made of and where it is explained, not a key to change: the
/// manifest has none for it (an earlier wording named
/// `dlp.max_body_bytes in [egress]`, which the manifest refuses).
pub fn reason(limit: u64) -> String {
    format!(
        "egress proxy ran out of memory (its gate's limit, {} MiB) and was stopped; \
         the agent was stopped because it had no network (fail closed). An agent can make its proxy \
         hold memory (docs/egress.md, \"Limits and known gaps\"); the limit, 512 MiB + 64 x the \
         proxy's dlp.max_body_bytes, is not a manifest setting (docs/backends/smolmachines.md, \
         \"Memory\")",
        limit >> 20
    )
}

fn get() -> Result<libc::rlimit, String> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_DATA, &mut r) } != 0 {
        return Err(format!(
            "read the data limit: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(r)
}

fn set_soft(soft: libc::rlim_t, hard: libc::rlim_t) -> Result<(), String> {
    let r = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit(2) reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_DATA, &r) } != 0 {
        return Err(format!(
            "set the data limit: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Puts the gate under `limit` bytes of data (or under the limit it
/// already has, if that is lower) and arms the failure path, whose exit
/// record goes to `paths`. Returns the limit in force. Called once, before
/// the proxy serves.
pub fn arm(limit: u64, paths: &Paths) -> Result<u64, String> {
    let now = get()?;
    let limit = limit.min(now.rlim_cur).min(now.rlim_max);
    let in_force = limit;
    let why = reason(in_force);
    let record = serde_json::to_vec_pretty(&ExitRecord {
        exit_code: EXIT_CODE,
        reason: Some(why.clone()),
    })
    .map_err(|e| e.to_string())?;
    let cpath = |p: std::path::PathBuf| {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{}: a NUL", p.display()))
    };
    let tmp = paths.exit().with_extension("oom");
    let _ = std::fs::remove_file(&tmp);
    state::create_private_file(&tmp)
        .and_then(|mut f| f.write_all(&record))
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    let prepared = Prepared {
        limit,
        original: now.rlim_cur,
        hard: now.rlim_max,
        line: format!("gate: {why}\n").into_bytes(),
        tmp: cpath(tmp)?,
        exit: cpath(paths.exit())?,
    };
    PREPARED
        .set(prepared)
        .map_err(|_| "the memory limit is armed already".to_string())?;
    set_soft(limit, now.rlim_max)?;
    ARMED.store(true, Ordering::SeqCst);
    if std::fs::read_to_string("/sys/module/kernel/parameters/ignore_rlimit_data")
        .is_ok_and(|v| v.trim() == "Y")
    {
        tracing::warn!(
            "the kernel ignores data limits (boot parameter ignore_rlimit_data): \
             the egress proxy's memory is not bounded"
        );
    }
    Ok(in_force)
}

/// Removes the exit record the failure path keeps ready (see
/// [`Prepared`]), when the gate ends otherwise. Nothing happens after.
pub fn disarm() {
    ARMED.store(false, Ordering::SeqCst);
    if let Some(p) = PREPARED.get() {
        // SAFETY: unlink(2) of a NUL-terminated path the static owns.
        unsafe { libc::unlink(p.tmp.as_ptr()) };
    }
}

/// Runs `f` (the machine's launch) with the gate's soft limit back at what
/// it was, so the engine processes it starts (the VMM among them) do not
/// inherit the gate's limit; puts the limit back afterwards. An error when
/// it cannot be put back: the launch must then fail (fail closed).
pub fn lifted<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let Some(p) = PREPARED.get() else {
        return Ok(f());
    };
    ARMED.store(false, Ordering::SeqCst);
    set_soft(p.original, p.hard)?;
    let out = f();
    set_soft(p.limit, p.hard)?;
    ARMED.store(true, Ordering::SeqCst);
    Ok(out)
}

/// The failure path. Only syscalls: nothing here may allocate or panic.
fn out_of_memory() {
    if !ARMED.load(Ordering::SeqCst) {
        return;
    }
    let Some(p) = PREPARED.get() else {
        return;
    };
    // SAFETY: plain syscalls on buffers and NUL-terminated paths owned by
    // a static that lives as long as the process; no memory is allocated.
    unsafe {
        libc::write(2, p.line.as_ptr().cast(), p.line.len());
        // Fails if the agent's own record is there (it is kept), or if
        // another thread got here first (its link stands).
        libc::link(p.tmp.as_ptr(), p.exit.as_ptr());
        libc::unlink(p.tmp.as_ptr());
        // The plugin makes the gate the leader of its own process group,
        // which the engine CLIs it runs (the agent's `machine exec`) join.
        if libc::getpgrp() == libc::getpid() {
            libc::kill(0, libc::SIGKILL);
        }
        libc::_exit(EXIT_CODE);
    }
}

/// The gate binary's global allocator: the system's, with the failure
/// path above when an allocation fails under the limit.
#[derive(Debug, Clone, Copy)]
pub struct GateAlloc;

// SAFETY: every call is passed to `System` unchanged; a null result (a
// failed allocation) may end the process, which never returns an invalid
// pointer.
unsafe impl GlobalAlloc for GateAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            out_of_memory();
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            out_of_memory();
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            out_of_memory();
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reason is what `bottle run` shows: a manifest key it names must
    /// be one the manifest takes (its `[egress]` table, docs/manifest.md).
    #[test]
    fn the_reason_names_no_manifest_key_the_manifest_refuses() {
        let why = reason(576 << 20);
        assert!(why.starts_with("egress proxy ran out of memory (its gate's limit, 576 MiB)"));
        let manifest = include_str!("../../../docs/manifest.md");
        let egress = &manifest[manifest.find("## `[egress]`").unwrap()..];
        let egress = &egress[..egress[1..].find("\n## ").unwrap()];
        for (i, _) in why.match_indices(" in [egress]") {
            let key = why[..i].rsplit(' ').next().unwrap();
            assert!(
                egress.contains(&format!("| `{key}` |")),
                "the reason sends the user to [egress] {key}, which the manifest does not take: {why}"
            );
        }
    }
}
