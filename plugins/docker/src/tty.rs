//! The process's own terminal: raw mode, window size, and a stdin reader
//! that can be stopped (a blocked `read` on stdin would otherwise outlive
//! the bottle and swallow the user's next keystroke).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub const STDIN: RawFd = 0;
pub const STDOUT: RawFd = 1;

/// Whether `fd` is a terminal.
pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor; any int is acceptable.
    unsafe { libc::isatty(fd) == 1 }
}

/// Columns and rows of the terminal on `fd`.
pub fn window_size(fd: RawFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the pointer we pass,
    // which points at a live, properly aligned local.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws as *mut libc::winsize) };
    (rc == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
}

/// Puts a terminal in raw mode until dropped.
#[derive(Debug)]
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Raw mode on `fd`, or `None` when it is not a terminal.
    pub fn enable(fd: RawFd) -> Option<Self> {
        if !is_tty(fd) {
            return None;
        }
        // SAFETY: termios is plain old data; all-zero is a valid value that
        // tcgetattr overwrites.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a live termios for tcgetattr to fill.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the termios we own.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: `raw` is a valid termios derived from the current one.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(Self { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the termios read from this fd in `enable`.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Reads stdin on a thread of its own into a channel; `stop` ends it within
/// 100 ms without consuming further input. End of input closes the channel.
#[derive(Debug)]
pub struct StdinPump {
    stop: Arc<AtomicBool>,
}

impl StdinPump {
    pub fn start() -> (Self, tokio::sync::mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("bot-bottle-stdin".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                while !flag.load(Ordering::Relaxed) {
                    let mut pfd = libc::pollfd {
                        fd: STDIN,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one live pollfd, count 1.
                    let ready = unsafe { libc::poll(&mut pfd, 1, 100) };
                    if ready < 0 {
                        if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                        {
                            continue;
                        }
                        break;
                    }
                    if ready == 0 {
                        continue;
                    }
                    // SAFETY: reads at most buf.len() bytes into our buffer.
                    let n = unsafe { libc::read(STDIN, buf.as_mut_ptr().cast(), buf.len()) };
                    if n < 0 {
                        if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                        {
                            continue;
                        }
                        break;
                    }
                    if n == 0 || tx.blocking_send(buf[..n as usize].to_vec()).is_err() {
                        break;
                    }
                }
            })
            .ok();
        (Self { stop }, rx)
    }
}

impl Drop for StdinPump {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
