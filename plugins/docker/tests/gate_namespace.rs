//! The launch gate as a process on this host, in network namespaces the
//! test makes (`unshare -n`): built natively, and built for aarch64 and run
//! under qemu-user. The gate is raw syscalls with a number table per
//! architecture, and no aarch64 machine runs these tests: this is where the
//! aarch64 table is exercised for real (build, route tables, socket, bind,
//! fork, exec, signals, and the `--hold` mode). Needs `unshare`, `ip` (or busybox's), `python3`
//! and root for a network namespace and, for aarch64, the
//! `aarch64-unknown-linux-gnu` Rust target and `qemu-aarch64` (Debian
//! `qemu-user`); `.ci/run` installs them. Without one a test prints why and
//! does not run, except that with `CI=true` a missing Debian-side part is
//! a failure. The Rust target comes from the Rust distribution server,
//! which a machine may not reach: its absence is never a failure.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

include!("../gate/rustc_args.rs");

const AARCH64: &str = "aarch64-unknown-linux-gnu";

#[test]
fn the_gate_wants_loopback_routes_only_then_forwards_and_stops() {
    let test = "the_gate_wants_loopback_routes_only_then_forwards_and_stops";
    if !can_run(test, tools_missing().map(|why| (why, false))) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let gate = build(dir.path(), "x86_64-unknown-linux-gnu");
    check_gate(dir.path(), &gate.display().to_string());
}

#[test]
fn the_aarch64_gate_wants_loopback_routes_only_then_forwards_and_stops() {
    let test = "the_aarch64_gate_wants_loopback_routes_only_then_forwards_and_stops";
    let missing = target_missing()
        .map(|why| (why, true))
        .or_else(|| qemu_missing().map(|why| (why, false)))
        .or_else(|| tools_missing().map(|why| (why, false)));
    if !can_run(test, missing) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let gate = build(dir.path(), AARCH64);
    check_gate(dir.path(), &format!("qemu-aarch64 {}", gate.display()));
}

/// Runs `gate` (a command line) through what it must refuse and allow.
fn check_gate(dir: &Path, g: &str) {
    let d = dir.display();
    let ip = ip_command().unwrap();

    // This host's namespace has routes through its interfaces: refused at
    // once, the program never run.
    let o = sh(&format!("{g} {d}/p.sock 3128 - -- /bin/echo the-agent-ran"));
    let out = text(&o);
    assert_eq!(o.status.code(), Some(125), "{out}");
    assert!(out.contains("has a route through"), "{out}");
    assert!(!out.contains("the-agent-ran"), "{out}");

    // The same with loopback and an interface that is up and addressed.
    let o = sh(&format!(
        "unshare -n sh -c '{ip} link set lo up; {ip} link add v0 type veth peer name v1; \
         {ip} link set v0 up; {ip} addr add 10.9.9.9/24 dev v0; \
         {g} {d}/p.sock 3128 - -- /bin/echo the-agent-ran'"
    ));
    let out = text(&o);
    assert_eq!(o.status.code(), Some(125), "{out}");
    assert!(out.contains("a route through v0"), "{out}");

    // Loopback, and interfaces that are down with no address (as a
    // kernel's fallback tunnel devices are in every namespace): the gate
    // waits for the proxy's socket (it appears after half a second), then
    // relays 127.0.0.1:3128 to it.
    std::fs::write(
        dir.join("proxy.py"),
        r#"
import socket, sys, time
time.sleep(0.5)
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(16)
while True:
    c, _ = s.accept()
    data = b""
    while not data.endswith(b"\n"):
        b = c.recv(4096)
        if not b:
            break
        data += b
    try:
        c.sendall(b"proxy got " + data)
    except OSError:
        pass  # the gate's own probe connection
    c.close()
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("agent.py"),
        r#"
import ctypes, os, socket
c = socket.create_connection(("127.0.0.1", 3128))
c.sendall(b"hello\n")
print(c.recv(4096).decode().strip())
# The forwarder's end of this connection, taken from whichever process holds
# it (pidfd_getfd, x86_64 numbers): the values of its TCP_NODELAY.
me = c.getsockname()
libc = ctypes.CDLL(None, use_errno=True)
found = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == os.getpid():
        continue
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        continue
    pidfd = libc.syscall(434, int(pid), 0)
    if pidfd < 0:
        continue
    for fd in fds:
        got = libc.syscall(438, pidfd, int(fd), 0)
        if got < 0:
            continue
        try:
            s = socket.socket(fileno=got)
        except OSError:
            os.close(got)
            continue
        try:
            if s.family == socket.AF_INET and s.getpeername() == me:
                found.append(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        except OSError:
            pass
        finally:
            s.close()
    os.close(pidfd)
print("nodelay", sorted(set(found)))
"#,
    )
    .unwrap();
    let o = sh(&format!(
        "unshare -n sh -c '{ip} link set lo up; {ip} link add v0 type veth peer name v1; \
         python3 {d}/proxy.py {d}/p.sock & proxy=$!; \
         {g} {d}/p.sock 3128 - -- python3 {d}/agent.py; echo rc=$?; kill $proxy'"
    ));
    let out = text(&o);
    assert!(out.contains("proxy got hello\nnodelay [1]\nrc=0"), "{out}");

    check_relay(dir, g);

    // SIGTERM while it waits: 128 + 15, and the program never runs.
    let o = sh(&format!(
        "unshare -n sh -c '{ip} link set lo up; {g} {d}/none.sock 3128 - -- /bin/echo the-agent-ran & \
         gate=$!; sleep 0.5; kill -TERM $gate; wait $gate; echo rc=$?'"
    ));
    let out = text(&o);
    assert!(out.contains("rc=143"), "{out}");
    assert!(!out.contains("the-agent-ran"), "{out}");

    // `--hold` (the shared egress namespace's process) stays until a stop
    // signal, then exits 0; a stray argument is the usage error instead.
    let o = sh(&format!(
        "{g} --hold & h=$!; sleep 0.5; kill -0 $h && echo alive; \
         kill -TERM $h; wait $h; echo rc=$?"
    ));
    let out = text(&o);
    assert!(out.contains("alive\nrc=0"), "{out}");
    let o = sh(&format!("{g} --hold extra"));
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    assert!(text(&o).contains("or gate --hold"), "{}", text(&o));
}

/// The forwarder under load, with `tests/gate_relay/`'s proxy and agent
/// (see there): many connections both ways at once with one stalled, one
/// process for all, urgent data, fail closed once the proxy is gone; with
/// fewer descriptors than connections, each served in turn; and a burst
/// while the proxy's backlog is full.
fn check_relay(dir: &Path, g: &str) {
    let (d, ip) = (dir.display(), ip_command().unwrap());
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gate_relay");
    let (proxy, agent) = (scripts.join("proxy.py"), scripts.join("agent.py"));
    let (proxy, agent) = (proxy.display(), agent.display());
    let gate = g.split(' ').next_back().unwrap();
    let o = sh(&format!(
        "unshare -n sh -c '{ip} link set lo up; \
         python3 {proxy} {d}/r.sock & proxy=$!; \
         {g} {d}/r.sock 3128 - -- python3 {agent} relay {gate}; echo rc=$?; kill $proxy'"
    ));
    let out = text(&o);
    for line in [
        "echoed 64 connections at once, one stalled",
        "the stalled connection got all 8 MiB",
        "one forwarder process for 50 connections",
        "bytes after urgent data came through",
        "the answer to a refused upload came whole",
        "closed once the proxy is gone",
        "rc=0",
    ] {
        assert!(out.contains(line), "no `{line}`:\n{out}");
    }

    // The forwarder out of descriptors (the agent lowers its limit):
    // connections wait, without a spinning forwarder, and are served in
    // turn; and a burst, and many connections, while the proxy's backlog is
    // full (a backlog of 0, nothing accepted for 2 s) are served once the
    // proxy catches up.
    for (mode, proxy_args, line) in [
        (
            "limits",
            "",
            "served 30 connections in turn, idle while they waited",
        ),
        (
            "burst",
            " 0 2",
            "served a burst while the proxy's backlog was full, and one later",
        ),
        (
            "waiting",
            " 0 2",
            "200 connections waited for the proxy's backlog, idle, then were served",
        ),
    ] {
        let o = sh(&format!(
            "unshare -n sh -c '{ip} link set lo up; rm -f {d}/l.sock; \
             python3 {proxy} {d}/l.sock{proxy_args} & proxy=$!; \
             {g} {d}/l.sock 3128 - -- python3 {agent} {mode} {gate}; echo rc=$?; kill $proxy'"
        ));
        let out = text(&o);
        assert!(out.contains(&format!("{line}\nrc=0")), "{out}");
    }
}

fn works(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the test can run here; if not, says why, and fails in CI
/// unless CI may accept the reason (the second field).
fn can_run(test: &str, missing: Option<(String, bool)>) -> bool {
    let Some((why, acceptable)) = missing else {
        return true;
    };
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(acceptable || !ci, "CI=true, and {why}");
    eprintln!("skipping {test}: {why}");
    false
}

fn target_missing() -> Option<String> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))?;
    if sysroot.join("lib/rustlib").join(AARCH64).is_dir() {
        return None;
    }
    Some(format!(
        "the Rust target {AARCH64} is not installed (`rustup target add {AARCH64}`)"
    ))
}

fn qemu_missing() -> Option<String> {
    if works(Command::new("qemu-aarch64").arg("--version")) {
        return None;
    }
    Some("qemu-aarch64 is not installed (Debian: `apt-get install qemu-user`)".into())
}

fn tools_missing() -> Option<String> {
    if !works(Command::new("unshare").args(["-n", "true"])) {
        return Some("`unshare -n` failed (it needs root)".into());
    }
    if !works(Command::new("python3").arg("--version")) {
        return Some("python3 is not installed".into());
    }
    if ip_command().is_none() {
        return Some("neither `ip` nor busybox's is installed".into());
    }
    None
}

fn ip_command() -> Option<&'static str> {
    if works(Command::new("ip").arg("-V")) {
        Some("ip")
    } else if works(Command::new("busybox").args(["ip", "link"])) {
        Some("busybox ip")
    } else {
        None
    }
}

/// The gate for `target`, as `build.rs` would make it there.
fn build(dir: &Path, target: &str) -> PathBuf {
    let out = dir.join("gate");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("gate/gate.rs");
    let mut errors = String::new();
    for linker in GATE_LINKERS {
        let o = Command::new("rustc")
            .args(GATE_RUSTC_FLAGS)
            .args(linker)
            .arg(format!("--target={target}"))
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        if o.status.success() {
            return out;
        }
        errors.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    panic!("the gate does not build for {target}:\n{errors}");
}

fn sh(script: &str) -> Output {
    Command::new("sh").args(["-c", script]).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
