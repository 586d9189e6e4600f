//! The launch gate: the agent container's first process.
//!
//! `gate HOST PORT MARKER -- PROGRAM ARGS...` waits until a TCP connection
//! to HOST:PORT (the bottle's egress proxy, by its name on the internal
//! network) is accepted and the file MARKER exists (`-` for none: the host
//! writes it last, after the agent's files), then execs PROGRAM in its
//! place: same pid, same tty, same exit code. The image's real entrypoint
//! and command (or the manifest's command) are PROGRAM and ARGS.
//!
//! Why it exists: the agent container can then be started while its proxy
//! is still coming up (a container start costs ~250 ms), yet the agent's own
//! program never runs before the proxy accepts connections. The check is
//! the very thing the agent will do next (connect to its proxy from its own
//! network namespace), not a timing.
//!
//! Agent images are arbitrary (no shell, no libc we could rely on), so the
//! gate is freestanding: no std, no libc, raw Linux syscalls, linked static
//! (`plugins/docker/build.rs` compiles it with plain `rustc`). HOST is
//! resolved with one DNS query to Docker's embedded resolver (127.0.0.11,
//! which every container on a user-defined network uses). x86_64 and
//! aarch64 Linux only; elsewhere the plugin starts the agent after the
//! proxy listens, as before.

#![no_std]
#![no_main]

use core::arch::naked_asm;

/// Docker's default PATH, for an env without one (what runc uses too).
const DEFAULT_PATH: &[u8] = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Docker's embedded DNS resolver, in every container on a user-defined
/// network.
const RESOLVER: [u8; 4] = [127, 0, 0, 11];
/// Pause between two attempts (DNS answer or TCP connect).
const RETRY_NS: i64 = 2_000_000;
/// How long one DNS query may take. Docker's resolver answers a name it
/// knows at once, but on an internal network it never answers one it does
/// not know (it has nowhere to forward it), which is the proxy's name until
/// the proxy's container has joined the network: ask again soon, rather
/// than sit out a long timeout after it has joined.
const DNS_WAIT_MS: i64 = 10;
/// The host declares a proxy dead after 30 s and then kills this
/// container; if the host itself died meanwhile, give up (fail closed)
/// rather than wait forever.
const GIVE_UP_SECS: i64 = 45;

const AT_FDCWD: isize = -100;
const AF_INET: usize = 2;
const SOCK_STREAM: usize = 1;
const SOCK_DGRAM: usize = 2;
const SOCK_CLOEXEC: usize = 0o2000000;
const POLLIN: i16 = 1;
const POLLOUT: i16 = 4;
const SOCK_NONBLOCK: usize = 0o4000;
const EINPROGRESS: isize = 115;
const SOL_SOCKET: usize = 1;
const SO_ERROR: usize = 4;
/// How long one TCP connect to the proxy may take. The proxy's address is
/// in Docker's DNS as soon as its endpoint exists, a moment before its
/// interface passes packets; a SYN sent then is lost, and the kernel sends
/// it again only after a second. A reachable proxy answers on a local
/// bridge in well under a millisecond (the kernel completes the handshake,
/// whatever the proxy's own load), so try again with a new socket soon.
const CONNECT_WAIT_MS: i64 = 50;
const ENOENT: isize = 2;
const ENOTDIR: isize = 20;
const EACCES: isize = 13;

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const CLOSE: usize = 3;
    pub const NANOSLEEP: usize = 35;
    pub const SOCKET: usize = 41;
    pub const CONNECT: usize = 42;
    pub const EXECVE: usize = 59;
    pub const CLOCK_GETTIME: usize = 228;
    pub const EXIT_GROUP: usize = 231;
    pub const FACCESSAT: usize = 269;
    pub const PPOLL: usize = 271;
    pub const GETSOCKOPT: usize = 55;
}

#[cfg(target_arch = "aarch64")]
mod nr {
    pub const READ: usize = 63;
    pub const WRITE: usize = 64;
    pub const CLOSE: usize = 57;
    pub const NANOSLEEP: usize = 101;
    pub const SOCKET: usize = 198;
    pub const CONNECT: usize = 203;
    pub const EXECVE: usize = 221;
    pub const CLOCK_GETTIME: usize = 113;
    pub const EXIT_GROUP: usize = 94;
    pub const FACCESSAT: usize = 48;
    pub const PPOLL: usize = 73;
    pub const GETSOCKOPT: usize = 209;
}

/// A raw Linux syscall with up to five arguments; returns -errno on error.
///
/// # Safety
/// The arguments must be valid for syscall `n` (pointers to live memory of
/// the size the call expects).
#[cfg(target_arch = "x86_64")]
unsafe fn syscall(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize) -> isize {
    let ret: isize;
    // SAFETY: the x86_64 Linux syscall ABI; validity of the arguments is
    // the caller's promise.
    unsafe {
        core::arch::asm!("syscall", inlateout("rax") n as isize => ret,
            in("rdi") a, in("rsi") b, in("rdx") c, in("r10") d, in("r8") e,
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// A raw Linux syscall with up to five arguments; returns -errno on error.
///
/// # Safety
/// The arguments must be valid for syscall `n` (pointers to live memory of
/// the size the call expects).
#[cfg(target_arch = "aarch64")]
unsafe fn syscall(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize) -> isize {
    let ret: isize;
    // SAFETY: the aarch64 Linux syscall ABI; validity of the arguments is
    // the caller's promise.
    unsafe {
        core::arch::asm!("svc 0", in("x8") n, inlateout("x0") a as isize => ret,
            in("x1") b, in("x2") c, in("x3") d, in("x4") e, options(nostack));
    }
    ret
}

fn write_err(parts: &[&[u8]]) {
    for p in parts {
        // SAFETY: a live slice, written to fd 2.
        unsafe { syscall(nr::WRITE, 2, p.as_ptr() as usize, p.len(), 0, 0) };
    }
}

fn exit(code: usize) -> ! {
    loop {
        // SAFETY: exit_group takes no pointer.
        unsafe { syscall(nr::EXIT_GROUP, code, 0, 0, 0, 0) };
    }
}

fn sleep_ns(ns: i64) {
    let ts = [0i64, ns];
    // SAFETY: a live timespec; no remainder wanted.
    unsafe { syscall(nr::NANOSLEEP, ts.as_ptr() as usize, 0, 0, 0, 0) };
}

/// Seconds on the monotonic clock.
fn now_secs() -> i64 {
    let mut ts = [0i64; 2];
    // SAFETY: a live timespec for CLOCK_MONOTONIC (1) to fill.
    unsafe { syscall(nr::CLOCK_GETTIME, 1, ts.as_mut_ptr() as usize, 0, 0, 0) };
    ts[0]
}

fn close(fd: usize) {
    // SAFETY: closes a descriptor this program opened.
    unsafe { syscall(nr::CLOSE, fd, 0, 0, 0, 0) };
}

/// A `struct sockaddr_in`.
#[repr(C)]
struct SockAddrIn {
    family: u16,
    port_be: u16,
    addr: [u8; 4],
    zero: [u8; 8],
}

fn sockaddr(addr: [u8; 4], port: u16) -> SockAddrIn {
    SockAddrIn {
        family: AF_INET as u16,
        port_be: port.to_be(),
        addr,
        zero: [0; 8],
    }
}

/// A new IPv4 socket of `kind` (flags included), or `None`.
fn socket(kind: usize) -> Option<usize> {
    // SAFETY: plain integers.
    let fd = unsafe { syscall(nr::SOCKET, AF_INET, kind | SOCK_CLOEXEC, 0, 0, 0) };
    (fd >= 0).then_some(fd as usize)
}

/// `connect(2)` of `fd` to `to`: 0, or -errno.
fn connect(fd: usize, to: &SockAddrIn) -> isize {
    let size = core::mem::size_of::<SockAddrIn>();
    // SAFETY: a live sockaddr_in of the size given.
    unsafe { syscall(nr::CONNECT, fd, to as *const _ as usize, size, 0, 0) }
}

/// A UDP socket connected to `to`; `None` on any failure.
fn udp_connected(to: &SockAddrIn) -> Option<usize> {
    let fd = socket(SOCK_DGRAM)?;
    if connect(fd, to) < 0 {
        close(fd);
        return None;
    }
    Some(fd)
}

/// Whether `fd` shows one of `events` within `ms` milliseconds.
fn ready(fd: usize, events: i16, ms: i64) -> bool {
    #[repr(C)]
    struct PollFd {
        fd: i32,
        events: i16,
        revents: i16,
    }
    let mut p = PollFd {
        fd: fd as i32,
        events,
        revents: 0,
    };
    let ts = [ms / 1000, (ms % 1000) * 1_000_000];
    // SAFETY: one live pollfd and a live timespec; no signal mask.
    let r = unsafe {
        syscall(
            nr::PPOLL,
            &mut p as *mut _ as usize,
            1,
            ts.as_ptr() as usize,
            0,
            8,
        )
    };
    r > 0 && p.revents & events != 0
}

/// Whether `fd` becomes readable within `ms` milliseconds.
fn readable(fd: usize, ms: i64) -> bool {
    ready(fd, POLLIN, ms)
}

/// Whether a TCP connection to `to` is accepted within `ms` milliseconds
/// (the connection is closed again at once).
fn accepts_within(to: &SockAddrIn, ms: i64) -> bool {
    let Some(fd) = socket(SOCK_STREAM | SOCK_NONBLOCK) else {
        return false;
    };
    let r = connect(fd, to);
    let ok = r == 0
        || (r == -EINPROGRESS && ready(fd, POLLOUT, ms) && {
            let mut err: i32 = -1;
            let mut len: u32 = core::mem::size_of::<i32>() as u32;
            // SAFETY: a live int and its live length.
            let g = unsafe {
                syscall(
                    nr::GETSOCKOPT,
                    fd,
                    SOL_SOCKET,
                    SO_ERROR,
                    &mut err as *mut i32 as usize,
                    &mut len as *mut u32 as usize,
                )
            };
            g == 0 && err == 0
        });
    close(fd);
    ok
}

/// The IPv4 address of `name` from Docker's resolver, or `None` (no answer
/// yet: the proxy's container may not be on the network yet).
fn resolve(name: &[u8], id: u16) -> Option<[u8; 4]> {
    // Header: id, flags (recursion desired), one question.
    let mut q = [0u8; 512];
    q[0..2].copy_from_slice(&id.to_be_bytes());
    q[2] = 0x01;
    q[5] = 1;
    let mut n = 12;
    for label in name.split(|&c| c == b'.') {
        if label.is_empty() || label.len() > 63 || n + label.len() + 6 > q.len() {
            return None;
        }
        q[n] = label.len() as u8;
        q[n + 1..n + 1 + label.len()].copy_from_slice(label);
        n += 1 + label.len();
    }
    // Root label, type A, class IN.
    q[n..n + 5].copy_from_slice(&[0, 0, 1, 0, 1]);
    n += 5;
    let fd = udp_connected(&sockaddr(RESOLVER, 53))?;
    let mut answer = None;
    // SAFETY: a live buffer of n bytes.
    if unsafe { syscall(nr::WRITE, fd, q.as_ptr() as usize, n, 0, 0) } == n as isize
        && readable(fd, DNS_WAIT_MS)
    {
        let mut r = [0u8; 1500];
        // SAFETY: a live buffer of its own length.
        let len = unsafe { syscall(nr::READ, fd, r.as_mut_ptr() as usize, r.len(), 0, 0) };
        if len > 0 {
            answer = parse_answer(&r[..len as usize], id, n);
        }
    }
    close(fd);
    answer
}

/// The first A record of a DNS response to query `id`, whose question
/// section ends at `question_end`.
fn parse_answer(r: &[u8], id: u16, question_end: usize) -> Option<[u8; 4]> {
    if r.len() < question_end || r[0..2] != id.to_be_bytes() || r[3] & 0x0f != 0 {
        return None;
    }
    let answers = u16::from_be_bytes([r[6], r[7]]);
    let mut i = question_end;
    for _ in 0..answers {
        // The owner name: labels, ending in a root label or a pointer.
        loop {
            let len = *r.get(i)? as usize;
            if len == 0 {
                i += 1;
                break;
            }
            if len & 0xc0 == 0xc0 {
                i += 2;
                break;
            }
            i += 1 + len;
        }
        let fixed = r.get(i..i + 10)?;
        let (kind, class) = (
            u16::from_be_bytes([fixed[0], fixed[1]]),
            u16::from_be_bytes([fixed[2], fixed[3]]),
        );
        let rdlen = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        i += 10;
        let data = r.get(i..i + rdlen)?;
        if kind == 1 && class == 1 && rdlen == 4 {
            return Some([data[0], data[1], data[2], data[3]]);
        }
        i += rdlen;
    }
    None
}

/// A decimal port.
fn parse_port(s: &[u8]) -> Option<u16> {
    let mut v: u32 = 0;
    if s.is_empty() || s.len() > 5 {
        return None;
    }
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    u16::try_from(v).ok().filter(|&p| p != 0)
}

/// The C string at `p`, without its NUL.
///
/// # Safety
/// `p` points at a NUL-terminated string that outlives the slice.
unsafe fn cstr<'a>(p: *const u8) -> &'a [u8] {
    let mut n = 0;
    // SAFETY: the caller promises a terminating NUL.
    unsafe {
        while *p.add(n) != 0 {
            n += 1;
        }
        core::slice::from_raw_parts(p, n)
    }
}

#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
unsafe extern "C" fn _start() -> ! {
    // The kernel leaves argc, argv and envp at the stack pointer.
    naked_asm!("mov rdi, rsp", "and rsp, -16", "call {main}", "ud2", main = sym main)
}

#[cfg(target_arch = "aarch64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
unsafe extern "C" fn _start() -> ! {
    // The kernel leaves argc, argv and envp at the stack pointer.
    naked_asm!("mov x0, sp", "and sp, x0, #-16", "bl {main}", "brk #0", main = sym main)
}

unsafe extern "C" fn main(stack: *const usize) -> ! {
    // SAFETY: the initial process stack: argc, then argc argv pointers and
    // a NULL, then the env pointers and a NULL.
    let (argc, argv, envp) = unsafe {
        let argc = *stack;
        let argv = stack.add(1) as *const *const u8;
        (argc, argv, argv.add(argc + 1))
    };
    // SAFETY: argv holds argc strings.
    let arg = |i: usize| unsafe { cstr(*argv.add(i)) };
    if argc < 6 || arg(4) != b"--" {
        write_err(&[b"bot-bottle gate: usage: gate HOST PORT MARKER -- PROGRAM [ARGS...]\n"]);
        exit(125);
    }
    let (host, port) = (arg(1), arg(2));
    let Some(port) = parse_port(port) else {
        write_err(&[b"bot-bottle gate: bad port `", port, b"`\n"]);
        exit(125);
    };
    // SAFETY: argv[3] is a NUL-terminated string.
    let marker = unsafe { *argv.add(3) };
    wait_for(host, port, (arg(3) != b"-").then_some(marker));
    // SAFETY: argv[5..] and envp are the kernel's NULL-terminated arrays.
    unsafe { exec(argv.add(5), envp) }
}

/// Whether the file at the C string `path` exists.
fn present(path: *const u8) -> bool {
    // SAFETY: `path` is NUL-terminated.
    unsafe { syscall(nr::FACCESSAT, AT_FDCWD as usize, path as usize, 0, 0, 0) == 0 }
}

/// Returns once `marker` (if any) exists and `host:port` accepts a TCP
/// connection; exits 125 after [`GIVE_UP_SECS`].
fn wait_for(host: &[u8], port: u16, marker: Option<*const u8>) {
    let deadline = now_secs() + GIVE_UP_SECS;
    let mut addr = None;
    let mut id: u16 = 0x6262;
    while now_secs() < deadline {
        if marker.is_some_and(|m| !present(m)) {
            sleep_ns(RETRY_NS);
            continue;
        }
        if addr.is_none() {
            id = id.wrapping_add(1);
            addr = resolve(host, id);
        }
        if let Some(a) = addr {
            if accepts_within(&sockaddr(a, port), CONNECT_WAIT_MS) {
                return;
            }
        }
        sleep_ns(RETRY_NS);
    }
    write_err(&[
        b"bot-bottle gate: the egress proxy ",
        host,
        b" never accepted a connection (or the agent's files never arrived); not starting the agent\n",
    ]);
    exit(125);
}

/// Execs `args[0]` with `args` and `envp`, looked up in PATH as runc does
/// when it has no slash; exits 127 (not found) or 126 (not runnable).
///
/// # Safety
/// `args` and `envp` are NULL-terminated arrays of C strings.
unsafe fn exec(args: *const *const u8, envp: *const *const u8) -> ! {
    // SAFETY: the caller's promise.
    unsafe {
        let prog = *args;
        let name = cstr(prog);
        if name.contains(&b'/') {
            let e = syscall(
                nr::EXECVE,
                prog as usize,
                args as usize,
                envp as usize,
                0,
                0,
            );
            fail(name, -e);
        }
        let mut buf = [0u8; 4096];
        let mut denied = false;
        for dir in env_path(envp).split(|&c| c == b':') {
            let dir = if dir.is_empty() { &b"."[..] } else { dir };
            let len = dir.len() + 1 + name.len();
            if len + 1 > buf.len() {
                continue;
            }
            buf[..dir.len()].copy_from_slice(dir);
            buf[dir.len()] = b'/';
            buf[dir.len() + 1..len].copy_from_slice(name);
            buf[len] = 0;
            let e = -syscall(
                nr::EXECVE,
                buf.as_ptr() as usize,
                args as usize,
                envp as usize,
                0,
                0,
            );
            match e {
                EACCES => denied = true,
                ENOENT | ENOTDIR => {}
                _ => fail(name, e),
            }
        }
        fail(name, if denied { EACCES } else { ENOENT });
    }
}

/// PATH from the env, or Docker's default.
///
/// # Safety
/// `envp` is a NULL-terminated array of C strings.
unsafe fn env_path<'a>(envp: *const *const u8) -> &'a [u8] {
    let mut i = 0;
    // SAFETY: the caller promises the NULL terminator.
    unsafe {
        while !(*envp.add(i)).is_null() {
            if let Some(v) = cstr(*envp.add(i)).strip_prefix(b"PATH=") {
                return v;
            }
            i += 1;
        }
    }
    DEFAULT_PATH
}

fn fail(name: &[u8], errno: isize) -> ! {
    let (why, code): (&[u8], usize) = match errno {
        ENOENT => (b"executable file not found in $PATH or does not exist", 127),
        EACCES => (b"permission denied", 126),
        _ => (b"exec failed", 126),
    };
    write_err(&[b"bot-bottle gate: cannot run `", name, b"`: ", why, b"\n"]);
    exit(code)
}

// What the compiler may call for copies and scans; there is no libc to
// provide them. Byte loops through volatile accesses, so that the compiler
// cannot turn them back into calls to themselves.

/// # Safety
/// As C's `memcpy`.
#[unsafe(no_mangle)]
unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller's contract.
        unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i))) };
    }
    dst
}

/// # Safety
/// As C's `memset`.
#[unsafe(no_mangle)]
unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller's contract.
        unsafe { core::ptr::write_volatile(dst.add(i), c as u8) };
    }
    dst
}

/// # Safety
/// As C's `memcmp`.
#[unsafe(no_mangle)]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller's contract.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return x as i32 - y as i32;
        }
    }
    0
}

/// # Safety
/// As C's `bcmp`.
#[unsafe(no_mangle)]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the caller's contract.
    unsafe { memcmp(a, b, n) }
}

/// # Safety
/// As C's `strlen`.
#[unsafe(no_mangle)]
unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: the caller's contract.
    while unsafe { core::ptr::read_volatile(s.add(n)) } != 0 {
        n += 1;
    }
    n
}

/// Referenced by `core`, never called: the gate is built with
/// `panic=abort`.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    exit(125)
}
