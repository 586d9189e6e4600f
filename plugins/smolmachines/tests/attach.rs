//! The agent's stdin and terminal, without a guest: the gate's stdin socket
//! and the attached client's pump and raw mode, over a real Unix socket, a
//! real pseudo-terminal and a real pipe. (The guest side, a terminal and a
//! typed line reaching the agent, is a boot-gated test in `microvm.rs`.)

use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bot_bottle_plugin_smolmachines::attach::{bind_input, pump_input, serve_input, RawMode};

fn openpty() -> (RawFd, RawFd) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors into the locals; the name,
    // termios and winsize pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    (master, slave)
}

fn write_fd(fd: RawFd, bytes: &[u8]) {
    // SAFETY: writes from a live slice.
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    assert_eq!(n, bytes.len() as isize);
}

fn lflag(fd: RawFd) -> libc::tcflag_t {
    // SAFETY: termios is plain data for tcgetattr to fill.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a live termios.
    assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
    t.c_lflag
}

fn read_until(s: &mut UnixStream, want: &[u8]) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.windows(want.len()).any(|w| w == want) {
        let n = s.read(&mut buf).expect("bytes before the timeout");
        assert!(
            n > 0,
            "end of stream after {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[test]
fn the_gate_copies_one_clients_input_into_the_agent_and_ends_it_with_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stdin.sock");
    let listener = bind_input(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is its owner's only");
    // The agent's stdin as the SDK hands it over: a writer; here one end of
    // a socket pair whose other end reads what the agent would.
    let (sink, mut agent) = UnixStream::pair().unwrap();
    let served = std::thread::spawn(move || serve_input(listener, Box::new(sink)));
    let mut client = UnixStream::connect(&path).unwrap();
    client.write_all(b"typed line\n").unwrap();
    assert_eq!(read_until(&mut agent, b"\n"), b"typed line\n");
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    agent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    agent
        .read_to_end(&mut rest)
        .expect("the agent's stdin ends");
    assert!(rest.is_empty());
    served.join().unwrap();
}

#[test]
fn raw_mode_takes_the_terminal_out_of_line_mode_and_gives_it_back() {
    let (master, slave) = openpty();
    let before = lflag(slave);
    assert!(before & libc::ICANON != 0 && before & libc::ECHO != 0);
    {
        let _raw = RawMode::enable(slave).expect("a pty is a terminal");
        let raw = lflag(slave);
        assert_eq!(raw & (libc::ICANON | libc::ECHO | libc::ISIG), 0);
    }
    assert_eq!(lflag(slave), before);
    // A pipe is no terminal: no raw mode, nothing changed.
    let mut fds = [0; 2];
    // SAFETY: pipe fills two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    assert!(RawMode::enable(fds[0]).is_none());
    // SAFETY: closing descriptors this test opened.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
        libc::close(master);
        libc::close(slave);
    }
}

#[test]
fn keys_typed_at_a_raw_terminal_reach_the_socket_and_stop_leaves_the_rest_unread() {
    let (master, slave) = openpty();
    let raw = RawMode::enable(slave).unwrap();
    let (conn, mut gate) = UnixStream::pair().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let pump = pump_input(slave, conn, stop.clone());
    // Ctrl-C goes through as a byte, not a signal, in raw mode.
    write_fd(master, b"ls\x03");
    assert_eq!(read_until(&mut gate, b"\x03"), b"ls\x03");
    stop.store(true, Ordering::Relaxed);
    let t = Instant::now();
    pump.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Typed after the stop: still there for whoever reads the terminal next.
    write_fd(master, b"next");
    let mut buf = [0u8; 16];
    // SAFETY: reads into a live buffer.
    let n = unsafe { libc::read(slave, buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(&buf[..n as usize], b"next");
    drop(raw);
    // SAFETY: closing descriptors this test opened.
    unsafe {
        libc::close(master);
        libc::close(slave);
    }
}

#[test]
fn piped_input_is_copied_and_its_end_is_passed_on() {
    let mut fds = [0; 2];
    // SAFETY: pipe fills two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (conn, mut gate) = UnixStream::pair().unwrap();
    let pump = pump_input(fds[0], conn, Arc::new(AtomicBool::new(false)));
    write_fd(fds[1], b"line one\nline two\n");
    // SAFETY: closing the write end this test opened.
    unsafe { libc::close(fds[1]) };
    let mut got = Vec::new();
    gate.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    gate.read_to_end(&mut got)
        .expect("end of input reaches the gate");
    assert_eq!(got, b"line one\nline two\n");
    pump.join().unwrap();
    // SAFETY: closing the read end this test opened.
    unsafe { libc::close(fds[0]) };
}
