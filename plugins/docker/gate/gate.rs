//! The launch gate: the agent container's first process.
//!
//! `gate SOCKET PORT MARKER -- PROGRAM ARGS...` waits until a connection to
//! the Unix socket SOCKET (the bottle's egress proxy, in a volume shared
//! read-only with the agent) is accepted and the file MARKER exists (`-`
//! for none: the host writes it last, after the agent's files), then execs
//! PROGRAM in its place: same pid, same tty, same exit code. The image's
//! real entrypoint and command (or the manifest's command) are PROGRAM and
//! ARGS. PORT is where the agent reaches its proxy over TCP (127.0.0.1).
//!
//! Why it exists: the agent container can then be started while its proxy
//! is still coming up (a container start costs ~250 ms), yet the agent's own
//! program never runs before the proxy accepts connections. The check is
//! the very thing the agent will do next (connect to its proxy's socket),
//! not a timing.
//!
//! Agent images are arbitrary (no shell, no libc we could rely on), so the
//! gate is freestanding: no std, no libc, raw Linux syscalls, linked static
//! (`plugins/docker/build.rs` compiles it with plain `rustc`). x86_64 and
//! aarch64 Linux only (`build.rs` says what happens elsewhere).

#![no_std]
#![no_main]

use core::arch::naked_asm;

/// Docker's default PATH, for an env without one (what runc uses too).
const DEFAULT_PATH: &[u8] = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Pause between two checks of the marker and the proxy's socket.
const RETRY_NS: i64 = 2_000_000;
/// The host declares a proxy dead after 30 s and then kills this
/// container; if the host itself died meanwhile, give up (fail closed)
/// rather than wait forever.
const GIVE_UP_SECS: i64 = 45;

const AT_FDCWD: isize = -100;
const AF_UNIX: usize = 1;
const SOCK_STREAM: usize = 1;
const SOCK_NONBLOCK: usize = 0o4000;
const SOCK_CLOEXEC: usize = 0o2000000;
const ENOENT: isize = 2;
const EAGAIN: isize = 11;
const EACCES: isize = 13;
const ENOTDIR: isize = 20;
const ECONNREFUSED: isize = 111;

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const WRITE: usize = 1;
    pub const CLOSE: usize = 3;
    pub const NANOSLEEP: usize = 35;
    pub const SOCKET: usize = 41;
    pub const CONNECT: usize = 42;
    pub const EXECVE: usize = 59;
    pub const CLOCK_GETTIME: usize = 228;
    pub const EXIT_GROUP: usize = 231;
    pub const FACCESSAT: usize = 269;
}

// The asm-generic numbers (include/uapi/asm-generic/unistd.h).
#[cfg(target_arch = "aarch64")]
mod nr {
    pub const WRITE: usize = 64;
    pub const CLOSE: usize = 57;
    pub const NANOSLEEP: usize = 101;
    pub const SOCKET: usize = 198;
    pub const CONNECT: usize = 203;
    pub const EXECVE: usize = 221;
    pub const CLOCK_GETTIME: usize = 113;
    pub const EXIT_GROUP: usize = 94;
    pub const FACCESSAT: usize = 48;
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

/// A `struct sockaddr_un`: the path, NUL-terminated.
#[repr(C)]
struct SockAddrUn {
    family: u16,
    path: [u8; 108],
}

/// The address of the Unix socket at `path`, or `None` if the path is too
/// long for one.
fn sockaddr_un(path: &[u8]) -> Option<SockAddrUn> {
    let mut addr = SockAddrUn {
        family: AF_UNIX as u16,
        path: [0; 108],
    };
    // One byte left for the NUL.
    if path.len() >= addr.path.len() {
        return None;
    }
    addr.path[..path.len()].copy_from_slice(path);
    Some(addr)
}

/// A new stream socket connected to the Unix socket `to`, or the errno.
/// With `SOCK_NONBLOCK` in `flags` the connect fails with `EAGAIN` rather
/// than waiting while the listener's backlog is full.
fn connect_unix(to: &SockAddrUn, flags: usize) -> Result<usize, isize> {
    // SAFETY: plain integers.
    let fd = unsafe {
        syscall(
            nr::SOCKET,
            AF_UNIX,
            SOCK_STREAM | SOCK_CLOEXEC | flags,
            0,
            0,
            0,
        )
    };
    if fd < 0 {
        return Err(-fd);
    }
    let fd = fd as usize;
    let size = core::mem::size_of::<SockAddrUn>();
    // SAFETY: a live sockaddr_un of the size given.
    let r = unsafe { syscall(nr::CONNECT, fd, to as *const _ as usize, size, 0, 0) };
    if r < 0 {
        close(fd);
        return Err(-r);
    }
    Ok(fd)
}

/// What `errno` means, for a message: a few words, or its number.
fn errno_text(errno: isize, buf: &mut [u8; 32]) -> &[u8] {
    let words: &[u8] = match errno {
        ENOENT => b"no such file",
        EACCES => b"permission denied",
        EAGAIN => b"its backlog is full",
        ECONNREFUSED => b"connection refused",
        _ => {
            let mut n = errno.unsigned_abs();
            let mut i = buf.len();
            loop {
                i -= 1;
                buf[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            i -= 6;
            buf[i..i + 6].copy_from_slice(b"errno ");
            return &buf[i..];
        }
    };
    words
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
    if argc < 6 || arg(4) != b"--" || !arg(1).starts_with(b"/") {
        write_err(&[
            b"bot-bottle gate: usage: gate SOCKET PORT MARKER -- PROGRAM [ARGS...] (SOCKET an absolute path)\n",
        ]);
        exit(125);
    }
    let (path, port) = (arg(1), arg(2));
    if parse_port(port).is_none() {
        write_err(&[b"bot-bottle gate: bad port `", port, b"`\n"]);
        exit(125);
    }
    let Some(proxy) = sockaddr_un(path) else {
        write_err(&[
            b"bot-bottle gate: socket path too long (107 bytes at most): ",
            path,
            b"\n",
        ]);
        exit(125);
    };
    wait_for(&proxy, path, Some(arg(3)).filter(|m| *m != b"-"));
    // SAFETY: argv[5..] and envp are the kernel's NULL-terminated arrays.
    unsafe { exec(argv.add(5), envp) }
}

/// Whether the file at the C string `path` exists.
fn present(path: *const u8) -> bool {
    // SAFETY: `path` is NUL-terminated.
    unsafe { syscall(nr::FACCESSAT, AT_FDCWD as usize, path as usize, 0, 0, 0) == 0 }
}

/// Returns once `marker` (if any; an argument, so NUL-terminated) exists
/// and the proxy's socket `proxy` (at `path`) accepts a connection; exits
/// 125 after [`GIVE_UP_SECS`]. No socket file yet (`ENOENT`), or one
/// nobody listens on yet (`ECONNREFUSED`), is the proxy still coming up.
fn wait_for(proxy: &SockAddrUn, path: &[u8], marker: Option<&[u8]>) {
    let deadline = now_secs() + GIVE_UP_SECS;
    // The last connect's errno; 0 while the marker is missing.
    let mut error = 0;
    while now_secs() < deadline {
        error = 0;
        if marker.is_none_or(|m| present(m.as_ptr())) {
            match connect_unix(proxy, SOCK_NONBLOCK) {
                Ok(fd) => {
                    close(fd);
                    return;
                }
                Err(e) => error = e,
            }
        }
        sleep_ns(RETRY_NS);
    }
    match (error, marker) {
        (0, Some(m)) => write_err(&[
            b"bot-bottle gate: the agent's files never arrived (no ",
            m,
            b"); not starting the agent\n",
        ]),
        _ => write_err(&[
            b"bot-bottle gate: the egress proxy's socket ",
            path,
            b" never accepted a connection (",
            errno_text(error, &mut [0; 32]),
            b"); not starting the agent\n",
        ]),
    }
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
