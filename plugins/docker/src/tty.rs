//! The process's own terminal (raw mode and window size from
//! `bot-bottle-term`), and a stdin reader
//! that can be stopped (a blocked `read` on stdin would otherwise outlive
//! the bottle and swallow the user's next keystroke).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use bot_bottle_term::{window_size, RawMode, STDIN, STDOUT};

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
