//! The agent's terminal and stdin.
//!
//! The agent runs in the gate (one `machine exec`, through the SDK, with
//! `--tty` when the launch asked for a terminal and `--interactive` when it
//! asked for stdin), so that it outlives `bottle run --detach`. Its output
//! goes to `agent.log`, which an attached `bottle run` follows. Its stdin is
//! `stdin.sock` in the bottle's records directory (0700, so only you reach
//! it; never the guest): the gate copies what one client writes there into
//! the agent ([`serve_input`]), and an attached `bottle run` copies its own
//! stdin there, with its terminal in raw mode when it is one
//! ([`RawMode`], [`pump_input`]), so keys, Ctrl-C and Ctrl-D reach the
//! agent's terminal in the guest as they would under `docker run -it`.
//!
//! End of input from the client closes the agent's stdin (Docker's
//! `stdin_once`). The engine's SDK offers no way to resize the guest
//! terminal, so the window size is not passed on.

use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use bot_bottle_term::{RawMode, STDIN};

/// Gate side: serves `listener` (the agent's `stdin.sock`) until the agent's
/// stdin closes. One client at a time; what it writes goes to `sink`. The
/// client's end of input — or the client going away, since the terminal it
/// spoke for is gone — closes `sink`, so the agent sees end of input.
pub fn serve_input(listener: UnixListener, mut sink: Box<dyn Write + Send>) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => {
                    // End of this client's input: the agent's stdin ends.
                    drop(sink);
                    return;
                }
                Ok(n) => {
                    if sink
                        .write_all(&buf[..n])
                        .and_then(|_| sink.flush())
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
}

/// Binds the agent's stdin socket at `path`, readable and writable by its
/// owner only.
pub fn bind_input(path: &std::path::Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Client side: copies what `fd` delivers to `conn` on a thread of its own
/// until `fd` ends (then the agent's stdin ends too) or `stop` is set (then
/// nothing more is read, so no keystroke meant for the shell afterwards is
/// swallowed). Polls every 100 ms.
pub fn pump_input(
    fd: RawFd,
    mut conn: UnixStream,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd, count 1.
            let ready = unsafe { libc::poll(&mut pfd, 1, 100) };
            if ready < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            if ready == 0 || stop.load(Ordering::Relaxed) {
                continue;
            }
            // SAFETY: reads at most buf.len() bytes into our buffer.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            if n == 0 {
                let _ = conn.shutdown(std::net::Shutdown::Write);
                return;
            }
            if conn.write_all(&buf[..n as usize]).is_err() {
                return;
            }
        }
    })
}
