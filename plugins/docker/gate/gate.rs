//! The launch gate: the agent container's first process.
//!
//! `gate SOCKET PORT MARKER -- PROGRAM ARGS...` listens on 127.0.0.1:PORT,
//! waits until a connection to the Unix socket SOCKET (the bottle's egress
//! proxy, in a volume shared read-only with the agent) is accepted and the
//! file MARKER exists (`-` for none: the host writes it last, after the
//! agent's files), forks the forwarder (below), then execs PROGRAM in its
//! place: same pid, same tty, same exit code. The image's real entrypoint
//! and command (or the manifest's command) are PROGRAM and ARGS.
//!
//! Why it waits: the agent container can then be started while its proxy
//! is still coming up (a container start costs ~250 ms), yet the agent's own
//! program never runs before the proxy accepts connections. The check is
//! the very thing the agent will do next (connect to its proxy's socket),
//! not a timing.
//!
//! Why it forwards: the agent container has no network interface at all
//! (Docker's `--network none`: loopback only), so the proxy's socket is its
//! only way out; but the agent's HTTP clients speak only to TCP proxies
//! (`HTTPS_PROXY=http://127.0.0.1:PORT`). The forwarder, a child of the
//! gate, accepts on 127.0.0.1:PORT and relays each connection, bytes
//! unchanged, to a new connection to SOCKET; if the proxy is gone, the
//! connection is closed (fail closed). The listener exists before PROGRAM
//! runs, so the agent's first connection is never refused, and it is
//! close-on-exec, so PROGRAM does not inherit it.
//!
//! One process relays every connection: each socket is non-blocking and
//! watched, edge-triggered, by one epoll instance; a connection has a
//! buffer per direction, so a busy direction never stalls the other (a
//! WebSocket sends both ways at once), and a side that takes no more bytes
//! stops only its own direction, never another connection. (It used to
//! fork two blocking copiers per connection: a fork per connection, two
//! processes of the agent's `pids` each, and a sleep and wake-up in
//! another process for every piece; measured in `docs/benchmarks.md`.)
//! The agent's side has TCP_NODELAY (no ~40 ms wait for a delayed ACK
//! when a response comes in two pieces). The end of one side passes on as
//! a shutdown of the other's write side (a half-close); an error on
//! either closes both. The forwarder calls setsid(), so that a Ctrl-C on
//! the agent's terminal (sent to its foreground process group) does not
//! kill it; it has no children. The forwarder ends with PROGRAM (a
//! parent-death signal).
//!
//! Agent images are arbitrary (no shell, no libc we could rely on), so the
//! gate is freestanding: no std, no libc, raw Linux syscalls, linked static
//! (`plugins/docker/build.rs` compiles it with plain `rustc`). x86_64 and
//! aarch64 Linux only (`build.rs` says what happens elsewhere); the aarch64
//! build is run under qemu-user by `tests/gate_namespace.rs`.
//!
//! `gate --hold` is the same program's other job: the process of the
//! container that holds the network namespace every egress sidecar of one
//! egress network joins (`src/egress_ns.rs`). It does nothing but wait for
//! a stop signal (SIGTERM, SIGINT or SIGHUP), and then exits 0.

#![no_std]
#![no_main]

use core::arch::naked_asm;

/// Docker's default PATH, for an env without one (what runc uses too).
const DEFAULT_PATH: &[u8] = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Pause between two checks of the marker and the proxy's socket (and
/// after a failed accept, so that a lack of resources is no busy loop).
const RETRY_NS: i64 = 2_000_000;
/// How long the forwarder stops accepting when it cannot take a
/// connection for want of memory or of the system's descriptors (the end
/// of a connection, which frees its own, resumes it at once).
const PAUSE_NS: i64 = 50_000_000;
/// The host declares a proxy dead after 30 s and then kills this
/// container; if the host itself died meanwhile, give up (fail closed)
/// rather than wait forever.
const GIVE_UP_SECS: i64 = 45;
/// Connections the kernel queues for the forwarder (as the proxy's own).
const BACKLOG: usize = 128;
/// Bytes one direction of a connection moves per read and write (its buffer).
const COPY_BUF: usize = 16 * 1024;

const AT_FDCWD: isize = -100;
const O_RDONLY: usize = 0;
const O_CLOEXEC: usize = 0o2000000;
const AF_UNIX: usize = 1;
const AF_INET: usize = 2;
const SOCK_STREAM: usize = 1;
const SOCK_NONBLOCK: usize = 0o4000;
const SOCK_CLOEXEC: usize = 0o2000000;
const SOL_SOCKET: usize = 1;
const SO_REUSEADDR: usize = 2;
const IPPROTO_TCP: usize = 6;
const TCP_NODELAY: usize = 1;
const SHUT_WR: usize = 1;
const SIGHUP: usize = 1;
const SIGINT: usize = 2;
const SIGKILL: usize = 9;
const SIGTERM: usize = 15;
const SIG_BLOCK: usize = 0;
const SIG_SETMASK: usize = 2;
const SIGPIPE: usize = 13;
const SIGCHLD: usize = 17;
const SIG_IGN: usize = 1;
const PR_SET_PDEATHSIG: usize = 1;
const RLIMIT_NOFILE: usize = 7;
const ENOENT: isize = 2;
const EINTR: isize = 4;
const EAGAIN: isize = 11;
const ENOMEM: isize = 12;
const EACCES: isize = 13;
const ENOTDIR: isize = 20;
const EADDRINUSE: isize = 98;
const EADDRNOTAVAIL: isize = 99;
const ECONNABORTED: isize = 103;
const ENOBUFS: isize = 105;
const ECONNREFUSED: isize = 111;

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const CLOSE: usize = 3;
    pub const RT_SIGACTION: usize = 13;
    pub const RT_SIGPROCMASK: usize = 14;
    pub const RT_SIGPENDING: usize = 127;
    pub const RT_SIGTIMEDWAIT: usize = 128;
    pub const NANOSLEEP: usize = 35;
    pub const GETPID: usize = 39;
    pub const SOCKET: usize = 41;
    pub const CONNECT: usize = 42;
    pub const SHUTDOWN: usize = 48;
    pub const BIND: usize = 49;
    pub const LISTEN: usize = 50;
    pub const SETSOCKOPT: usize = 54;
    pub const CLONE: usize = 56;
    pub const EXECVE: usize = 59;
    pub const MMAP: usize = 9;
    pub const MUNMAP: usize = 11;
    pub const EPOLL_CTL: usize = 233;
    pub const EPOLL_PWAIT: usize = 281;
    pub const EPOLL_CREATE1: usize = 291;
    pub const GETPPID: usize = 110;
    pub const SETSID: usize = 112;
    pub const PRCTL: usize = 157;
    pub const CLOCK_GETTIME: usize = 228;
    pub const EXIT_GROUP: usize = 231;
    pub const FACCESSAT: usize = 269;
    pub const OPENAT: usize = 257;
    pub const ACCEPT4: usize = 288;
    pub const CLOSE_RANGE: usize = 436;
    pub const PRLIMIT64: usize = 302;
}

// The asm-generic numbers (include/uapi/asm-generic/unistd.h).
#[cfg(target_arch = "aarch64")]
mod nr {
    pub const READ: usize = 63;
    pub const WRITE: usize = 64;
    pub const CLOSE: usize = 57;
    pub const RT_SIGACTION: usize = 134;
    pub const RT_SIGPROCMASK: usize = 135;
    pub const RT_SIGPENDING: usize = 136;
    pub const RT_SIGTIMEDWAIT: usize = 137;
    pub const NANOSLEEP: usize = 101;
    pub const GETPID: usize = 172;
    pub const SOCKET: usize = 198;
    pub const CONNECT: usize = 203;
    pub const SHUTDOWN: usize = 210;
    pub const BIND: usize = 200;
    pub const LISTEN: usize = 201;
    pub const SETSOCKOPT: usize = 208;
    pub const CLONE: usize = 220;
    pub const EXECVE: usize = 221;
    pub const MMAP: usize = 222;
    pub const MUNMAP: usize = 215;
    pub const EPOLL_CTL: usize = 21;
    pub const EPOLL_PWAIT: usize = 22;
    pub const EPOLL_CREATE1: usize = 20;
    pub const GETPPID: usize = 173;
    pub const SETSID: usize = 157;
    pub const PRCTL: usize = 167;
    pub const CLOCK_GETTIME: usize = 113;
    pub const EXIT_GROUP: usize = 94;
    pub const FACCESSAT: usize = 48;
    pub const OPENAT: usize = 56;
    pub const ACCEPT4: usize = 242;
    pub const CLOSE_RANGE: usize = 436;
    pub const PRLIMIT64: usize = 261;
}

/// A raw Linux syscall with up to five arguments; returns -errno on error.
///
/// # Safety
/// The arguments must be valid for syscall `n` (pointers to live memory of
/// the size the call expects).
unsafe fn syscall(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize) -> isize {
    // SAFETY: the caller's promise; a sixth argument of 0 where the call
    // takes one (so never a stale register).
    unsafe { syscall6(n, a, b, c, d, e, 0) }
}

/// A raw Linux syscall with six arguments (`mmap`, `epoll_pwait`); returns
/// -errno on error.
///
/// # Safety
/// As for [`syscall`].
#[cfg(target_arch = "x86_64")]
unsafe fn syscall6(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> isize {
    let ret: isize;
    // SAFETY: the x86_64 Linux syscall ABI; validity of the arguments is
    // the caller's promise.
    unsafe {
        core::arch::asm!("syscall", inlateout("rax") n as isize => ret,
            in("rdi") a, in("rsi") b, in("rdx") c, in("r10") d, in("r8") e, in("r9") f,
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// A raw Linux syscall with six arguments (`mmap`, `epoll_pwait`); returns
/// -errno on error.
///
/// # Safety
/// As for [`syscall`].
#[cfg(target_arch = "aarch64")]
unsafe fn syscall6(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> isize {
    let ret: isize;
    // SAFETY: the aarch64 Linux syscall ABI; validity of the arguments is
    // the caller's promise.
    unsafe {
        core::arch::asm!("svc 0", in("x8") n, inlateout("x0") a as isize => ret,
            in("x1") b, in("x2") c, in("x3") d, in("x4") e, in("x5") f, options(nostack));
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

/// Nanoseconds on the monotonic clock.
fn now_ns() -> i64 {
    let mut ts = [0i64; 2];
    // SAFETY: a live timespec for CLOCK_MONOTONIC (1) to fill.
    unsafe { syscall(nr::CLOCK_GETTIME, 1, ts.as_mut_ptr() as usize, 0, 0, 0) };
    ts[0] * 1_000_000_000 + ts[1]
}

fn close(fd: usize) {
    // SAFETY: closes a descriptor this program opened.
    unsafe { syscall(nr::CLOSE, fd, 0, 0, 0, 0) };
}

/// `fork(2)`: the child's pid in the parent, 0 in the child, or -errno.
/// As clone(2) on both architectures (aarch64 has no fork syscall).
fn fork() -> isize {
    // SAFETY: clone with only the exit signal, no CLONE_VM and no new
    // stack, is fork: the child gets its own copy of this address space
    // and stack, and returns here with 0.
    unsafe { syscall(nr::CLONE, SIGCHLD, 0, 0, 0, 0) }
}

/// Sets the disposition of signal `sig` (to [`SIG_IGN`]).
fn set_signal(sig: usize, disposition: usize) {
    // The kernel's struct sigaction: handler, flags, restorer, mask (both
    // architectures); no flags and an empty mask.
    let act = [disposition, 0, 0, 0];
    // SAFETY: a live struct sigaction; no old action wanted; the kernel's
    // sigset is 8 bytes.
    unsafe { syscall(nr::RT_SIGACTION, sig, act.as_ptr() as usize, 0, 8, 0) };
}

/// The signals that ask the gate to stop while it waits: what `docker
/// stop` (SIGTERM), a terminal's Ctrl-C (SIGINT) and a hang-up send. As
/// the pid namespace's init without handlers the gate would ignore them,
/// and `docker stop` would wait out its timeout (10 s) before SIGKILL.
const STOP_SIGNALS: u64 = (1 << (SIGHUP - 1)) | (1 << (SIGINT - 1)) | (1 << (SIGTERM - 1));

/// Replaces the signal mask with `how` (`SIG_BLOCK`, `SIG_SETMASK`) and
/// `set`; returns the mask before.
fn sigmask(how: usize, set: u64) -> u64 {
    let mut old: u64 = 0;
    // SAFETY: a live 8-byte sigset in and out.
    unsafe {
        syscall(
            nr::RT_SIGPROCMASK,
            how,
            &set as *const u64 as usize,
            &mut old as *mut u64 as usize,
            8,
            0,
        )
    };
    old
}

/// The lowest of [`STOP_SIGNALS`] waiting (blocked) for this process.
fn stop_requested() -> Option<usize> {
    let mut pending: u64 = 0;
    // SAFETY: a live 8-byte sigset to fill.
    unsafe {
        syscall(
            nr::RT_SIGPENDING,
            &mut pending as *mut u64 as usize,
            8,
            0,
            0,
            0,
        )
    };
    let hit = pending & STOP_SIGNALS;
    (hit != 0).then(|| hit.trailing_zeros() as usize + 1)
}

fn shutdown(fd: usize, how: usize) {
    // SAFETY: plain integers.
    unsafe { syscall(nr::SHUTDOWN, fd, how, 0, 0, 0) };
}

/// A `struct sockaddr_in`.
#[repr(C)]
struct SockAddrIn {
    family: u16,
    port_be: u16,
    addr: [u8; 4],
    zero: [u8; 8],
}

/// A listening TCP socket on 127.0.0.1:`port` (close-on-exec), or the
/// errno. On an error the socket is left open: the gate exits.
fn listen_loopback(port: u16) -> Result<usize, isize> {
    let ok = |r: isize| if r < 0 { Err(-r) } else { Ok(r as usize) };
    // SAFETY: plain integers.
    // Non-blocking: the forwarder accepts until the backlog is empty.
    let fd = ok(unsafe {
        syscall(
            nr::SOCKET,
            AF_INET,
            SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
            0,
            0,
            0,
        )
    })?;
    let one: i32 = 1;
    let addr = SockAddrIn {
        family: AF_INET as u16,
        port_be: port.to_be(),
        addr: [127, 0, 0, 1],
        zero: [0; 8],
    };
    let size = core::mem::size_of::<SockAddrIn>();
    // SAFETY: a live int and a live sockaddr_in, of the sizes given.
    unsafe {
        // A port just used by an earlier forwarder (connections in
        // TIME_WAIT) can be bound again at once.
        ok(syscall(
            nr::SETSOCKOPT,
            fd,
            SOL_SOCKET,
            SO_REUSEADDR,
            &one as *const i32 as usize,
            4,
        ))?;
        ok(syscall(
            nr::BIND,
            fd,
            &addr as *const _ as usize,
            size,
            0,
            0,
        ))?;
        ok(syscall(nr::LISTEN, fd, BACKLOG, 0, 0, 0))?;
    }
    Ok(fd)
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

/// A new Unix stream socket (close-on-exec, and `flags`), or the errno.
fn unix_socket(flags: usize) -> Result<usize, isize> {
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
        Err(-fd)
    } else {
        Ok(fd as usize)
    }
}

/// Connects the Unix socket `fd` to `to`, or says the errno. A
/// non-blocking socket fails with `EAGAIN` rather than waiting while the
/// listener's backlog is full, and stays unconnected: it can try again.
fn connect(fd: usize, to: &SockAddrUn) -> Result<(), isize> {
    let size = core::mem::size_of::<SockAddrUn>();
    // SAFETY: a live sockaddr_un of the size given.
    let r = unsafe { syscall(nr::CONNECT, fd, to as *const _ as usize, size, 0, 0) };
    if r < 0 {
        Err(-r)
    } else {
        Ok(())
    }
}

/// A new stream socket connected to the Unix socket `to`, or the errno
/// (see [`connect`] for `SOCK_NONBLOCK` in `flags`).
fn connect_unix(to: &SockAddrUn, flags: usize) -> Result<usize, isize> {
    let fd = unix_socket(flags)?;
    if let Err(e) = connect(fd, to) {
        close(fd);
        return Err(e);
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
        EADDRINUSE => b"address in use",
        EADDRNOTAVAIL => b"address not available",
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
    if argc == 2 && arg(1) == b"--hold" {
        hold();
    }
    if argc < 6 || arg(4) != b"--" || !arg(1).starts_with(b"/") {
        write_err(&[
            b"bot-bottle gate: usage: gate SOCKET PORT MARKER -- PROGRAM [ARGS...] (SOCKET an absolute path), or gate --hold\n",
        ]);
        exit(125);
    }
    let (path, port_text) = (arg(1), arg(2));
    let Some(port) = parse_port(port_text) else {
        write_err(&[b"bot-bottle gate: bad port `", port_text, b"`\n"]);
        exit(125);
    };
    let Some(proxy) = sockaddr_un(path) else {
        write_err(&[
            b"bot-bottle gate: socket path too long (107 bytes at most): ",
            path,
            b"\n",
        ]);
        exit(125);
    };
    require_loopback_routes_only();
    // Before the wait, so that a port in use fails at once.
    let listener = match listen_loopback(port) {
        Ok(fd) => fd,
        Err(e) => {
            write_err(&[
                b"bot-bottle gate: cannot listen on 127.0.0.1:",
                port_text,
                b" (",
                errno_text(e, &mut [0; 32]),
                b"); not starting the agent\n",
            ]);
            exit(125);
        }
    };
    let relay = match Relay::new(listener, proxy) {
        Ok(relay) => relay,
        Err(e) => {
            write_err(&[
                b"bot-bottle gate: cannot set up the forwarder (",
                errno_text(e, &mut [0; 32]),
                b"); not starting the agent\n",
            ]);
            exit(125);
        }
    };
    // Blocked while the gate waits, and looked for between two checks:
    // no handler is needed, and none is left for PROGRAM to inherit. A
    // signal that comes after the last look reaches the gate with the mask
    // restored, and is ignored as before.
    let mask = sigmask(SIG_BLOCK, STOP_SIGNALS);
    wait_for(&relay.proxy, path, Some(arg(3)).filter(|m| *m != b"-"));
    sigmask(SIG_SETMASK, mask);
    // SAFETY: plain syscall.
    let gate = unsafe { syscall(nr::GETPID, 0, 0, 0, 0, 0) };
    match fork() {
        0 => forward(relay, gate),
        pid if pid < 0 => {
            write_err(&[b"bot-bottle gate: cannot start the forwarder; not starting the agent\n"]);
            exit(125);
        }
        _ => {}
    }
    // SAFETY: argv[5..] and envp are the kernel's NULL-terminated arrays.
    unsafe { exec(argv.add(5), envp) }
}

/// `gate --hold`: waits, asleep, for one of [`STOP_SIGNALS`] and exits 0.
/// Blocked and taken with sigtimedwait (no timeout), as the pid
/// namespace's init ignores signals it has no handler for.
fn hold() -> ! {
    sigmask(SIG_BLOCK, STOP_SIGNALS);
    loop {
        // SAFETY: a live 8-byte sigset; no siginfo or timeout wanted.
        let got = unsafe {
            syscall(
                nr::RT_SIGTIMEDWAIT,
                &STOP_SIGNALS as *const u64 as usize,
                0,
                0,
                8,
                0,
            )
        };
        if got > 0 {
            exit(0);
        }
    }
}

/// Exits unless every route goes through loopback: the proxy's socket
/// must be the agent's only way out. (The backend asks Docker for a
/// container without networking, which runc gives a network namespace of
/// its own with loopback only; this makes sure of it.) Routes, not
/// interfaces: a kernel with tunnel modules loaded puts their fallback
/// devices (`tunl0`, `sit0`, …), down and without addresses, in every new
/// namespace, as Docker's `--network none` has them too. Fail closed: a
/// route through anything else, or a table that cannot be read, and the
/// agent never runs.
fn require_loopback_routes_only() {
    for table in ROUTE_TABLES {
        table.require_loopback_only();
    }
}

/// A kernel route table in `/proc`, and where a line names its device.
struct RouteTable {
    /// NUL-terminated.
    path: &'static [u8],
    header_lines: usize,
    /// Absent is empty (IPv6 when the kernel has it off).
    optional: bool,
    device: fn(&[u8]) -> Option<&[u8]>,
}

const ROUTE_TABLES: [RouteTable; 2] = [
    // `IFACE\tDESTINATION…` per route of the main table (loopback's own
    // are in the local table, not listed).
    RouteTable {
        path: b"/proc/net/route\0",
        header_lines: 1,
        optional: false,
        device: |line| line.split(|b| *b == b'\t').next(),
    },
    // The device is the last, space-padded field.
    RouteTable {
        path: b"/proc/net/ipv6_route\0",
        header_lines: 0,
        optional: true,
        device: |line| {
            line.split(|b| *b == b' ')
                .filter(|f| !f.is_empty())
                .next_back()
        },
    },
];

impl RouteTable {
    /// Exits 125 if a route's device is not `lo`, or the table cannot be
    /// read.
    fn require_loopback_only(&self) {
        let name = &self.path[..self.path.len() - 1];
        let refuse = |what: &[&[u8]]| -> ! {
            write_err(&[b"bot-bottle gate: "]);
            write_err(what);
            write_err(&[b"; not starting the agent\n"]);
            exit(125)
        };
        // SAFETY: a NUL-terminated path.
        let fd = unsafe {
            syscall(
                nr::OPENAT,
                AT_FDCWD as usize,
                self.path.as_ptr() as usize,
                O_RDONLY | O_CLOEXEC,
                0,
                0,
            )
        };
        if fd == -ENOENT && self.optional {
            return;
        }
        if fd < 0 {
            refuse(&[
                b"cannot read ",
                name,
                b" (",
                errno_text(fd, &mut [0; 32]),
                b")",
            ]);
        }
        // Loopback's lines are a few hundred bytes; a full buffer is a
        // table with routes through something else.
        let mut buf = [0u8; 4096];
        let mut len = 0;
        while len < buf.len() {
            // SAFETY: writes at most the rest of `buf`.
            let n = unsafe {
                syscall(
                    nr::READ,
                    fd as usize,
                    buf.as_mut_ptr() as usize + len,
                    buf.len() - len,
                    0,
                    0,
                )
            };
            match n {
                0 => break,
                n if n == -EINTR => continue,
                n if n < 0 => refuse(&[
                    b"cannot read ",
                    name,
                    b" (",
                    errno_text(n, &mut [0; 32]),
                    b")",
                ]),
                n => len += n as usize,
            }
        }
        close(fd as usize);
        if len == buf.len() {
            refuse(&[
                b"the agent's network namespace has routes beyond loopback (",
                name,
                b")",
            ]);
        }
        let lines = buf[..len].split(|b| *b == b'\n').skip(self.header_lines);
        for line in lines.filter(|l| !l.is_empty()) {
            match (self.device)(line) {
                Some(b"lo") => {}
                Some(dev) => refuse(&[
                    b"the agent's network namespace has a route through ",
                    dev,
                    b", not only loopback",
                ]),
                None => refuse(&[b"cannot read ", name, b" (a line without a device)"]),
            }
        }
    }
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
        if let Some(sig) = stop_requested() {
            let digits = [b'0' + (sig / 10) as u8, b'0' + (sig % 10) as u8];
            write_err(&[
                b"bot-bottle gate: stopped by signal ",
                &digits[usize::from(sig < 10)..],
                b" before the agent started\n",
            ]);
            exit(128 + sig);
        }
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

/// The forwarder (see the module's doc): serves `relay` until the gate's
/// process, pid `gate` (by then PROGRAM), ends.
fn forward(mut relay: Relay, gate: isize) -> ! {
    // SAFETY: plain integers.
    unsafe {
        // Ended with PROGRAM also where PROGRAM is not the pid namespace's
        // init (whose end would end it anyway), and not left holding the
        // port if PROGRAM could not be run; if PROGRAM has ended already,
        // this process has another parent by now.
        syscall(nr::PRCTL, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        if syscall(nr::GETPPID, 0, 0, 0, 0, 0) != gate {
            exit(0);
        }
        syscall(nr::SETSID, 0, 0, 0, 0, 0);
    }
    // A write to a connection its peer has closed is an error to handle
    // (EPIPE), not the end of the forwarder.
    set_signal(SIGPIPE, SIG_IGN);
    // Nothing to read, and nothing to say: a message on PROGRAM's terminal
    // from a process in the background would garble the agent's screen,
    // and the agent's HTTP client sees a closed connection instead. So
    // stdin, stdout and stderr are closed (nor does the terminal stay open
    // on the forwarder's account), and so is anything else the gate was
    // started with (Docker gives it nothing else; on Linux before 5.9,
    // without close_range, such extras would stay open). The listener and
    // the epoll instance got the lowest free descriptors: those below them
    // are all inherited, and few.
    let top = relay.listener.max(relay.ep);
    for fd in (0..top).filter(|&fd| fd != relay.listener && fd != relay.ep) {
        close(fd);
    }
    // SAFETY: plain integers.
    unsafe { syscall(nr::CLOSE_RANGE, top + 1, u32::MAX as usize, 0, 0, 0) };
    raise_nofile_limit();
    // Unwatched, the listener's connections would wait forever: exiting
    // closes it, and they are refused instead (fail closed).
    if !relay.listen(EPOLL_CTL_ADD) {
        exit(0);
    }
    let mut events = [EpollEvent { events: 0, data: 0 }; 64];
    loop {
        let timeout = relay.timeout_ms();
        // SAFETY: a live array of `events.len()` epoll_events to fill; no
        // signal mask.
        let n = unsafe {
            syscall(
                nr::EPOLL_PWAIT,
                relay.ep,
                events.as_mut_ptr() as usize,
                events.len(),
                timeout,
                0,
            )
        };
        for ev in &events[..n.max(0) as usize] {
            let (flags, token) = (ev.events, ev.data);
            if token == LISTENER {
                relay.accept();
            } else {
                relay.ready(token, flags);
            }
        }
        relay.revisit();
        relay.retry();
    }
}

/// Raises this process's soft limit on descriptors to the hard one. The
/// forwarder holds every connection's two sockets: up to the hard limit,
/// not the soft one (often 1024), which was made for processes that hold
/// few. Best effort: without it, connections beyond the soft limit wait in
/// the backlog for earlier ones to end.
fn raise_nofile_limit() {
    let mut limit = [0u64; 2];
    // SAFETY: a live struct rlimit (soft, hard) to fill, then to set.
    unsafe {
        if syscall(
            nr::PRLIMIT64,
            0,
            RLIMIT_NOFILE,
            0,
            limit.as_mut_ptr() as usize,
            0,
        ) == 0
        {
            limit[0] = limit[1];
            syscall(
                nr::PRLIMIT64,
                0,
                RLIMIT_NOFILE,
                limit.as_ptr() as usize,
                0,
                0,
            );
        }
    }
}

/// Connections the forwarder relays at once; more wait in the listener's
/// backlog until one ends.
const MAX_CONNS: usize = 4096;

/// The epoll token of the listener; a connection's sides are `2 * slot`
/// (the agent's) and `2 * slot + 1` (the proxy's).
const LISTENER: u64 = u64::MAX;

const EPOLLIN: u32 = 0x1;
const EPOLLPRI: u32 = 0x2;
const EPOLLOUT: u32 = 0x4;
const EPOLLERR: u32 = 0x8;
const EPOLLHUP: u32 = 0x10;
const EPOLLRDHUP: u32 = 0x2000;
const EPOLLET: u32 = 1 << 31;
/// What a connection's sides are watched for (and, while bytes for it
/// wait, room: `EPOLLOUT`). Edge-triggered: an event per change, not one
/// per turn of the loop while it holds.
const SIDE_EVENTS: u32 = EPOLLIN | EPOLLPRI | EPOLLRDHUP | EPOLLET;
const EPOLL_CTL_ADD: usize = 1;
const EPOLL_CTL_MOD: usize = 3;
const PROT_READ_WRITE: usize = 0x3;
const MAP_PRIVATE_ANONYMOUS: usize = 0x22;

/// The kernel's `struct epoll_event`: packed on x86_64, not on aarch64.
#[cfg_attr(target_arch = "x86_64", repr(C, packed))]
#[cfg_attr(not(target_arch = "x86_64"), repr(C))]
#[derive(Clone, Copy)]
struct EpollEvent {
    events: u32,
    data: u64,
}

/// One direction of a relayed connection. Bytes read from its source and
/// not yet written to its destination are `buf[start..end]` (the source is
/// read only when they are all written: one buffer, no copy within it).
/// The sockets are non-blocking and watched edge-triggered, so the two
/// flags remember what the last event said until a call says otherwise.
#[derive(Clone, Copy)]
struct Half {
    start: usize,
    end: usize,
    /// The source may have bytes (or its end) to read.
    readable: bool,
    /// Read until a read says EAGAIN or the end, whatever the length of
    /// the reads before: an event said the source's peer has shut down its
    /// writing, or the socket hung up or failed, or urgent (TCP
    /// out-of-band) data came, at which a read stops short.
    drain: bool,
    /// The destination may take bytes.
    writable: bool,
    /// The destination is watched for room (see [`Relay::pump`]).
    watched: bool,
    /// The source has ended, and the destination's write side is shut down
    /// (a half-close passed on).
    ended: bool,
    /// The destination failed (see [`Relay::pump`]): the source is still
    /// read, to its end, and what it sends is dropped.
    discarding: bool,
}

impl Half {
    const NEW: Half = Half {
        start: 0,
        end: 0,
        readable: true,
        writable: true,
        watched: false,
        drain: false,
        ended: false,
        discarding: false,
    };

    /// Moves bytes from `src` to `dst` through `buf` until the source has
    /// no more for now, the destination takes no more for now, or
    /// [`READS_PER_TURN`] reads are done.
    fn relay(&mut self, src: usize, dst: usize, buf: &mut [u8]) -> Moved {
        let mut reads = 0;
        loop {
            if self.start < self.end && self.discarding {
                (self.start, self.end) = (0, 0);
            }
            if self.start < self.end {
                if !self.writable {
                    return Moved::Idle;
                }
                let pending = &buf[self.start..self.end];
                // SAFETY: a live slice.
                let n = unsafe {
                    syscall(
                        nr::WRITE,
                        dst,
                        pending.as_ptr() as usize,
                        pending.len(),
                        0,
                        0,
                    )
                };
                match n {
                    _ if n == -EAGAIN => self.writable = false,
                    _ if n == -EINTR => {}
                    _ if n <= 0 => return Moved::Refused,
                    // A short write: the destination is full for now (an
                    // edge comes when it drains).
                    _ if (n as usize) < pending.len() => {
                        self.start += n as usize;
                        self.writable = false;
                    }
                    _ => (self.start, self.end) = (0, 0),
                }
                continue;
            }
            if self.ended || !self.readable {
                return Moved::Idle;
            }
            if reads == READS_PER_TURN {
                return Moved::Busy;
            }
            reads += 1;
            // SAFETY: a live buffer of its own length.
            let n = unsafe { syscall(nr::READ, src, buf.as_mut_ptr() as usize, buf.len(), 0, 0) };
            match n {
                _ if n == -EAGAIN => self.readable = false,
                _ if n == -EINTR => {}
                _ if n < 0 => return Moved::Failed,
                0 => {
                    self.ended = true;
                    shutdown(dst, SHUT_WR);
                }
                _ => {
                    self.end = n as usize;
                    // A short read of a stream socket took all the bytes
                    // there were (epoll(7)): an edge comes with more. Saves
                    // a read that would say EAGAIN, per message. But the
                    // peer's end may wait behind those bytes (its event
                    // came before this read), and a read stops short at
                    // urgent data: not once an event said either came.
                    self.readable = self.end == buf.len() || self.drain;
                }
            }
        }
    }
}

/// Reads per direction per turn of the loop (16 KiB each): a connection
/// whose ends both keep up could otherwise keep the loop to itself.
const READS_PER_TURN: usize = 16;

/// What [`Half::relay`] left.
#[derive(Clone, Copy, PartialEq)]
enum Moved {
    /// Nothing to do until an event says so.
    Idle,
    /// Its turn ended with bytes maybe left to read: no event will say so
    /// (edge-triggered), so the loop comes back to it.
    Busy,
    /// A write to the destination failed.
    Refused,
    /// A read of the source failed.
    Failed,
}

/// A relayed connection: the agent's side, the proxy's side, and a buffer
/// per direction (mapped when it opens, unmapped when it ends). Zeroed
/// (a null `buf`) is a free slot.
struct Conn {
    client: usize,
    proxy: usize,
    /// The proxy side is connected; until then it waits for room in the
    /// proxy's backlog (and is not watched).
    connected: bool,
    buf: *mut u8,
    /// The agent to the proxy.
    up: Half,
    /// The proxy to the agent.
    down: Half,
    /// On the list of connections the loop comes back to ([`Moved::Busy`]).
    queued: bool,
}

/// The forwarder's table: every slot, a stack of the free ones, and two
/// lists of those to come back to ([`Moved::Busy`]): one filling while the
/// other is gone through.
struct Table {
    conns: [Conn; MAX_CONNS],
    free: [u16; MAX_CONNS],
    nfree: usize,
    again: [[u16; MAX_CONNS]; 2],
    nagain: [usize; 2],
    /// Which of `again` fills.
    filling: usize,
    /// Connections waiting for room in the proxy's backlog, oldest first
    /// (a ring: `nwait` of them from `wait_head`).
    wait: [u16; MAX_CONNS],
    wait_head: usize,
    nwait: usize,
}

/// The forwarder's state: one process relays every connection, each
/// socket non-blocking and watched by one epoll instance.
struct Relay {
    ep: usize,
    listener: usize,
    proxy: SockAddrUn,
    table: &'static mut Table,
    /// What the next connection will take, made before it is accepted (so
    /// that a connection, once accepted, lacks nothing): its proxy side (a
    /// socket, not connected yet) and its buffers.
    spare_socket: Option<usize>,
    spare_buf: Option<*mut u8>,
    /// Accepting is paused (no free slot, or no descriptor or memory for
    /// now): the listener is not watched until a connection ends or, at
    /// the latest, the monotonic time `resume_at` (ns).
    paused: bool,
    resume_at: i64,
    /// When the oldest connection waiting for the proxy's backlog tries
    /// again (monotonic ns).
    retry_at: i64,
}

/// What [`Relay::connect`] did.
#[derive(PartialEq)]
enum Connect {
    /// Connected, and both sides watched.
    Done,
    /// The proxy's backlog is full (or the kernel short of memory): the
    /// connection waits.
    Full,
    /// Failed (a proxy gone): the connection has ended (fail closed).
    Ended,
}

/// `epoll_ctl(ep, op)` for `fd` with `events` and `token`; `false` on an
/// error.
fn epoll_watch(ep: usize, op: usize, fd: usize, events: u32, token: u64) -> bool {
    let ev = EpollEvent {
        events,
        data: token,
    };
    // SAFETY: a live epoll_event.
    unsafe { syscall(nr::EPOLL_CTL, ep, op, fd, &ev as *const _ as usize, 0) >= 0 }
}

/// `len` bytes of fresh zeroed memory, or the errno.
fn map(len: usize) -> Result<*mut u8, isize> {
    // SAFETY: an anonymous private mapping anywhere; no pointer passed in.
    let p = unsafe {
        syscall6(
            nr::MMAP,
            0,
            len,
            PROT_READ_WRITE,
            MAP_PRIVATE_ANONYMOUS,
            usize::MAX, // fd -1
            0,
        )
    };
    // The kernel's error values are the last page of the address space.
    if (-4095..0).contains(&p) {
        Err(-p)
    } else {
        Ok(p as *mut u8)
    }
}

impl Relay {
    /// The epoll instance and the table, made by the gate before it forks
    /// the forwarder, so that a failure stops the launch with a message.
    fn new(listener: usize, proxy: SockAddrUn) -> Result<Relay, isize> {
        // SAFETY: plain integers.
        let ep = unsafe { syscall(nr::EPOLL_CREATE1, O_CLOEXEC, 0, 0, 0, 0) };
        if ep < 0 {
            return Err(-ep);
        }
        let table = map(core::mem::size_of::<Table>())? as *mut Table;
        // SAFETY: a fresh mapping of the table's size, page-aligned, and
        // zeroed, which is a valid table (every slot free, empty lists)
        // to fill in; it is never unmapped.
        let table = unsafe { &mut *table };
        for (i, slot) in table.free.iter_mut().enumerate() {
            *slot = (MAX_CONNS - 1 - i) as u16;
        }
        table.nfree = MAX_CONNS;
        Ok(Relay {
            ep: ep as usize,
            listener,
            proxy,
            table,
            spare_socket: None,
            spare_buf: None,
            paused: false,
            resume_at: 0,
            retry_at: 0,
        })
    }

    /// [`epoll_watch`] on this relay's epoll instance.
    fn watch(&self, op: usize, fd: usize, events: u32, token: u64) -> bool {
        epoll_watch(self.ep, op, fd, events, token)
    }

    /// How long the loop may wait for events (ms; `usize::MAX` is -1,
    /// no limit): not at all while connections wait for another turn,
    /// until the next try while some wait for the proxy's backlog or the
    /// listener is paused.
    fn timeout_ms(&self) -> usize {
        if self.table.nagain[self.table.filling] > 0 {
            0
        } else if self.table.nwait > 0 {
            (RETRY_NS / 1_000_000) as usize
        } else if self.paused {
            (PAUSE_NS / 1_000_000) as usize
        } else {
            usize::MAX
        }
    }

    /// Watches the listener (level-triggered: a connection left in the
    /// backlog is reported again).
    fn listen(&mut self, op: usize) -> bool {
        let watched = self.watch(op, self.listener, EPOLLIN, LISTENER);
        // If not, it stays paused, and is tried again.
        self.paused = !watched;
        watched
    }

    /// Stops watching the listener until a connection ends (which frees a
    /// slot and descriptors), or for [`PAUSE_NS`] (memory, or the whole
    /// system's descriptors): not a turn of the loop per try while nothing
    /// can be taken.
    fn pause(&mut self) {
        self.watch(EPOLL_CTL_MOD, self.listener, 0, LISTENER);
        self.paused = true;
        self.resume_at = now_ns() + PAUSE_NS;
    }

    /// Makes what the next connection will take; `false` if something
    /// cannot be made for now.
    fn prepare(&mut self) -> bool {
        if self.spare_socket.is_none() {
            self.spare_socket = unix_socket(SOCK_NONBLOCK).ok();
        }
        if self.spare_buf.is_none() {
            self.spare_buf = map(2 * COPY_BUF).ok();
        }
        self.spare_socket.is_some() && self.spare_buf.is_some() && self.table.nfree > 0
    }

    /// Accepts every waiting connection, each into a free slot.
    fn accept(&mut self) {
        loop {
            // No slot, descriptor or memory for one more: it waits in the
            // backlog (never turned away).
            if !self.prepare() {
                return self.pause();
            }
            // SAFETY: no peer address wanted.
            let client = unsafe {
                syscall(
                    nr::ACCEPT4,
                    self.listener,
                    0,
                    0,
                    SOCK_NONBLOCK | SOCK_CLOEXEC,
                    0,
                )
            };
            match client {
                _ if client == -EAGAIN => return,
                // A client gone before its accept.
                _ if client == -ECONNABORTED || client == -EINTR => continue,
                // No descriptor or memory for now.
                _ if client < 0 => return self.pause(),
                _ => {}
            }
            let (Some(proxy), Some(buf)) = (self.spare_socket.take(), self.spare_buf.take()) else {
                unreachable!("prepared above");
            };
            let client = client as usize;
            nodelay(client);
            self.table.nfree -= 1;
            let slot = self.table.free[self.table.nfree] as usize;
            self.table.conns[slot] = Conn {
                client,
                proxy,
                connected: false,
                buf,
                up: Half::NEW,
                down: Half::NEW,
                queued: false,
            };
            // Behind those already waiting, if any.
            if self.table.nwait > 0 || self.connect(slot) == Connect::Full {
                let t = &mut *self.table;
                t.wait[(t.wait_head + t.nwait) % MAX_CONNS] = slot as u16;
                t.nwait += 1;
            }
        }
    }

    /// Connects slot `slot`'s proxy side and watches both sides. A full
    /// backlog leaves it waiting, with both its sockets (it needs nothing
    /// more to go on); a proxy gone ends it (fail closed).
    fn connect(&mut self, slot: usize) -> Connect {
        let conn = &mut self.table.conns[slot];
        match connect(conn.proxy, &self.proxy) {
            Err(EAGAIN | ENOBUFS | ENOMEM) => return Connect::Full,
            Err(_) => {
                self.end(slot);
                return Connect::Ended;
            }
            Ok(()) => {}
        }
        conn.connected = true;
        let (client, proxy, token) = (conn.client, conn.proxy, 2 * slot as u64);
        if !self.watch(EPOLL_CTL_ADD, client, SIDE_EVENTS, token)
            || !self.watch(EPOLL_CTL_ADD, proxy, SIDE_EVENTS, token + 1)
        {
            self.end(slot);
            return Connect::Ended;
        }
        Connect::Done
    }

    /// Takes `flags` of an event on a connection's side `token`, and moves
    /// what can move.
    fn ready(&mut self, token: u64, flags: u32) {
        let slot = (token / 2) as usize;
        let conn = &mut self.table.conns[slot];
        // A slot ended by an earlier event of the same batch.
        if conn.buf.is_null() || !conn.connected {
            return;
        }
        // An error or hang-up: the next read or write says which.
        let hup = flags & (EPOLLERR | EPOLLHUP) != 0;
        let drain = hup || flags & (EPOLLRDHUP | EPOLLPRI) != 0;
        let (readable, writable) = (flags & EPOLLIN != 0 || hup, flags & EPOLLOUT != 0 || hup);
        let (from, to) = if token % 2 == 0 {
            (&mut conn.up, &mut conn.down)
        } else {
            (&mut conn.down, &mut conn.up)
        };
        // An error on a side no longer read (its peer's end came before,
        // say a reset after a half-close) would never be seen by a read:
        // it ends the connection, as a read's error would.
        if flags & EPOLLERR != 0 && from.ended {
            return self.end(slot);
        }
        from.readable |= readable;
        from.drain |= drain;
        to.writable |= writable;
        self.pump(slot);
    }

    /// Moves what can move on slot `slot`, both ways, and ends it when
    /// both directions have ended or either side failed.
    fn pump(&mut self, slot: usize) {
        let t = &mut *self.table;
        let conn = &mut t.conns[slot];
        // Ended since it was put on the list of those to come back to.
        if conn.buf.is_null() || !conn.connected {
            return;
        }
        // SAFETY: the slot's mapping: two buffers of COPY_BUF bytes, this
        // connection's only.
        let (up_buf, down_buf) = unsafe {
            (
                core::slice::from_raw_parts_mut(conn.buf, COPY_BUF),
                core::slice::from_raw_parts_mut(conn.buf.add(COPY_BUF), COPY_BUF),
            )
        };
        let mut up = conn.up.relay(conn.client, conn.proxy, up_buf);
        let mut down = conn.down.relay(conn.proxy, conn.client, down_buf);
        if down == Moved::Failed {
            // The proxy's side failed as it was read: a Unix socket whose
            // peer closed with bytes unread (a refused upload) says so
            // after the last bytes the peer sent. That is the end of the
            // proxy's answer, and it goes to the agent as one: ending here
            // would reset the agent's connection, and with it the answer
            // it has not read yet.
            conn.down.ended = true;
            shutdown(conn.client, SHUT_WR);
            down = Moved::Idle;
            up = Moved::Refused;
        }
        if up == Moved::Refused {
            // The proxy is gone, or answered and closed, while the agent
            // still sends: what the agent sends is dropped, to its end.
            conn.up.discarding = true;
            up = conn.up.relay(conn.client, conn.proxy, up_buf);
        }
        if up == Moved::Failed
            || matches!(down, Moved::Failed | Moved::Refused)
            || (conn.up.ended && conn.down.ended)
        {
            return self.end(slot);
        }
        if (up == Moved::Busy || down == Moved::Busy) && !conn.queued {
            conn.queued = true;
            let f = t.filling;
            t.again[f][t.nagain[f]] = slot as u16;
            t.nagain[f] += 1;
        }
        // A side watched for room (EPOLLOUT) exactly while bytes for it
        // wait: room is reported on every piece a Unix socket's reader
        // takes, so always watching would wake the forwarder once more per
        // piece sent to the proxy, for nothing.
        let (client, proxy, token) = (conn.client, conn.proxy, 2 * slot as u64);
        for (half, fd, token) in [
            (&mut conn.up, proxy, token + 1),
            (&mut conn.down, client, token),
        ] {
            let held = half.start < half.end;
            if held != half.watched {
                half.watched = held;
                let events = SIDE_EVENTS | if held { EPOLLOUT } else { 0 };
                epoll_watch(self.ep, EPOLL_CTL_MOD, fd, events, token);
            }
        }
    }

    /// Gives each connection whose turn ended busy another turn. Those
    /// busy again go on the other list, for the next turn of the loop.
    fn revisit(&mut self) {
        let list = self.table.filling;
        let n = self.table.nagain[list];
        if n == 0 {
            return;
        }
        self.table.filling ^= 1;
        for i in 0..n {
            let slot = self.table.again[list][i] as usize;
            self.table.conns[slot].queued = false;
            self.pump(slot);
        }
        self.table.nagain[list] = 0;
    }

    /// Closes slot `slot`'s sockets (which also unwatches them) and frees
    /// it; a paused listener is watched again (a slot and descriptors are
    /// free now).
    fn end(&mut self, slot: usize) {
        let t = &mut *self.table;
        // On the filling list (the other one is gone through only by
        // `revisit`, which ends no connection but the one it is on, and
        // takes that one off its list first).
        if t.conns[slot].queued {
            let (list, n) = (&mut t.again[t.filling], &mut t.nagain[t.filling]);
            if let Some(i) = list[..*n].iter().position(|&s| s as usize == slot) {
                *n -= 1;
                list[i] = list[*n];
            }
        }
        // (A connection waiting for the proxy's backlog ends only as its
        // connect fails, taken off the waiting list by the caller.)
        let conn = &mut t.conns[slot];
        close(conn.client);
        close(conn.proxy);
        // SAFETY: this slot's mapping, unused from here on.
        unsafe { syscall(nr::MUNMAP, conn.buf as usize, 2 * COPY_BUF, 0, 0, 0) };
        conn.buf = core::ptr::null_mut();
        t.free[t.nfree] = slot as u16;
        t.nfree += 1;
        if self.paused {
            self.listen(EPOLL_CTL_MOD);
        }
    }

    /// Once per turn of the loop: every [`RETRY_NS`], connections waiting
    /// for the proxy's backlog try again, oldest first, until one finds it
    /// full still (the rest would too); and a paused listener is watched
    /// again once its pause is over (if still nothing can be taken, the
    /// next accept pauses it again).
    fn retry(&mut self) {
        if self.table.nwait > 0 && now_ns() >= self.retry_at {
            while self.table.nwait > 0 {
                let slot = self.table.wait[self.table.wait_head] as usize;
                if self.connect(slot) == Connect::Full {
                    self.retry_at = now_ns() + RETRY_NS;
                    break;
                }
                let t = &mut *self.table;
                t.wait_head = (t.wait_head + 1) % MAX_CONNS;
                t.nwait -= 1;
            }
        }
        if self.paused && now_ns() >= self.resume_at {
            self.listen(EPOLL_CTL_MOD);
        }
    }
}

/// Sets TCP_NODELAY on `fd`: each piece the proxy sends goes to the agent
/// at once. With Nagle's algorithm on, a response that arrives in two
/// pieces (an SSE event after its headers, a TLS record split across
/// reads) waits for the agent's delayed ACK, ~40 ms on Linux. Best
/// effort: without it the bytes still flow, only later.
fn nodelay(fd: usize) {
    let one: i32 = 1;
    // SAFETY: a live int, of the size given.
    unsafe {
        syscall(
            nr::SETSOCKOPT,
            fd,
            IPPROTO_TCP,
            TCP_NODELAY,
            &one as *const i32 as usize,
            4,
        )
    };
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
