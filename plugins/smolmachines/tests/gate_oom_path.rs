//! The gate's failure path (`bot_bottle_plugin_smolmachines::memory`) in a
//! process of its own: this test binary has the gate's allocator, and the
//! test re-executes itself to meet the limit in a child, where it may end.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Command;

use bot_bottle_plugin_smolmachines::memory::{self, GateAlloc};
use bot_bottle_plugin_smolmachines::state::{self, ExitRecord, Paths};

#[global_allocator]
static ALLOC: GateAlloc = GateAlloc;

/// Set (to the bottle's state directory) in the child only.
const CHILD: &str = "BOT_BOTTLE_GATE_OOM_CHILD";
const MIB: u64 = 1 << 20;

/// The child: arms a 64 MiB limit, uses up its descriptors, then asks for
/// more memory than the limit allows. Does nothing in an ordinary run.
#[test]
fn child_meets_the_limit_with_no_descriptor_left() {
    let Some(dir) = std::env::var_os(CHILD) else {
        return;
    };
    let paths = Paths::new(Path::new(&dir));
    memory::arm(64 * MIB, &paths).unwrap();
    let r = libc::rlimit {
        rlim_cur: 64,
        rlim_max: 64,
    };
    // SAFETY: setrlimit(2) reads the struct we own.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) }, 0);
    let mut open = Vec::with_capacity(64);
    while let Ok(f) = std::fs::File::open("/dev/null") {
        open.push(f);
    }
    assert!(
        std::fs::File::open("/dev/null").is_err(),
        "no descriptor left"
    );
    let v: Vec<u8> = Vec::with_capacity(128 * MIB as usize);
    std::hint::black_box(&v);
    unreachable!("an allocation over the limit returned");
}

/// An agent that makes its proxy hold memory may hold every descriptor
/// the gate may open too (a connection is one): when the limit is met
/// then, the exit record — what `bottle run` says — must still be
/// written, and nothing left behind.
#[test]
fn the_exit_record_is_written_when_no_descriptor_is_left() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let paths = Paths::new(&root.path().join("bb-oom-path"));
    paths.create().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_meets_the_limit_with_no_descriptor_left",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, paths.dir())
        // Its own group, as the plugin starts the gate.
        .process_group(0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "{:?}: {stderr}",
        out.status
    );
    assert!(
        stderr.contains("gate: egress proxy ran out of memory (its gate's limit, 64 MiB)"),
        "{stderr}"
    );
    let exit: ExitRecord = state::read_json(&paths.exit()).unwrap_or_else(|| {
        panic!(
            "no exit record; the directory holds {:?}",
            std::fs::read_dir(paths.dir())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect::<Vec<_>>()
        )
    });
    assert_eq!(exit.exit_code, memory::EXIT_CODE);
    assert_eq!(exit.reason, Some(memory::reason(64 * MIB)));
    let left: Vec<_> = std::fs::read_dir(paths.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "exit.json")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
