//! The agent's TLS session tickets go out with the first answer, not on
//! their own.
//!
//! A TLS 1.3 server sends its session tickets once the client's Finished
//! arrives, and tokio-rustls writes them at once: a write of their own,
//! which wakes the agent's client for nothing (it waits for the answer, not
//! for tickets) and costs the proxy a system call. On a new connection that
//! is one of five writes to the client (the CONNECT answer, the handshake
//! flight, the tickets, the answer, close_notify), and on the 2-core VM the
//! writes are the dearest part of a new connection: ~35% of the proxy's CPU
//! in the benchmark's new-connection phase is `writev`, mostly the wake-up
//! of the reader (docs/benchmarks.md, "What was tried").
//!
//! [`HeldWrites`] sits under the proxy's TLS on the client's side. During
//! the handshake it keeps what TLS writes until the handshake waits for the
//! client (a read that would block): each flight still goes whole and at
//! once. After a TLS 1.3 handshake it keeps the tickets until the next
//! write or shutdown, which the answer (or, for HTTP/2, the server's
//! SETTINGS) makes; the client needs them only for its next connection. Not
//! until a flush: hyper flushes each time round its loop, before it has
//! anything to say. Should nothing ever be written, the tickets are lost and
//! the client's next connection makes a full handshake.
//! After a TLS 1.2 handshake nothing is kept: there the server's last
//! flight ends the handshake and the client waits for it before it speaks.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What happens to a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Written through (what is held goes first).
    Through,
    /// Kept until a read would block, a shutdown, or the handshake is done.
    Handshake,
    /// Kept until the next write or shutdown; not sent for a read or a
    /// flush.
    UntilWrite,
}

/// A transport that can keep a TLS server's writes for a while (see the
/// module's comment). Written through until [`HeldWrites::hold_handshake`].
#[derive(Debug)]
pub(crate) struct HeldWrites<T> {
    io: T,
    held: Vec<u8>,
    /// How much of `held` is already written.
    sent: usize,
    mode: Mode,
}

impl<T> HeldWrites<T> {
    pub(crate) fn new(io: T) -> Self {
        Self {
            io,
            held: Vec::new(),
            sent: 0,
            mode: Mode::Through,
        }
    }

    /// From now on the handshake's writes wait until it must read.
    pub(crate) fn hold_handshake(&mut self) {
        self.mode = Mode::Handshake;
    }

    /// The handshake is done. After TLS 1.3 what it left (the session
    /// tickets) waits for the first write; otherwise it goes before the
    /// next read waits.
    pub(crate) fn handshake_done(&mut self, tls13: bool) {
        self.mode = if tls13 && !self.held.is_empty() {
            Mode::UntilWrite
        } else {
            Mode::Through
        };
    }
}

impl<T: AsyncWrite + Unpin> HeldWrites<T> {
    /// Writes what is held; `Ready(Ok)` once all of it is gone.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.release();
        Poll::Ready(Ok(()))
    }

    /// All that was held is written: its buffer goes (a connection lives
    /// long) and writes go through.
    fn release(&mut self) {
        self.held = Vec::new();
        self.sent = 0;
        if self.mode == Mode::UntilWrite {
            self.mode = Mode::Through;
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeldWrites<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        // About to wait for the client, which may be waiting for what is
        // held (the handshake's flight). Tickets are not waited for.
        if read.is_pending() && this.mode != Mode::UntilWrite && !this.held.is_empty() {
            if let Poll::Ready(Err(e)) = this.poll_send_held(cx) {
                return Poll::Ready(Err(e));
            }
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeldWrites<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.mode == Mode::Handshake {
            let mut n = 0;
            for b in bufs {
                this.held.extend_from_slice(b);
                n += b.len();
            }
            return Poll::Ready(Ok(n));
        }
        while this.sent < this.held.len() {
            // What is held goes first, in the same system call.
            let mut slices = [IoSlice::new(&[]); 16];
            slices[0] = IoSlice::new(&this.held[this.sent..]);
            let mut count = 1;
            for b in bufs.iter().take(slices.len() - 1) {
                slices[count] = *b;
                count += 1;
            }
            let held = this.held.len() - this.sent;
            let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n >= held {
                this.release();
                if n > held {
                    return Poll::Ready(Ok(n - held));
                }
            } else {
                this.sent += n;
            }
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.mode {
            Mode::Handshake => return Poll::Ready(Ok(())),
            Mode::UntilWrite => {}
            Mode::Through => ready!(this.poll_send_held(cx))?,
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Also mid-handshake: what is held (an alert) is the last word.
        this.mode = Mode::Through;
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A pair: the held side and what its peer can read now, without
    /// waiting.
    fn pair() -> (HeldWrites<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (a, b) = tokio::io::duplex(1 << 16);
        (HeldWrites::new(a), b)
    }

    async fn readable_now(peer: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_millis(20), peer.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[tokio::test]
    async fn through_until_told_to_hold() {
        let (mut h, mut peer) = pair();
        h.write_all(b"200").await.unwrap();
        assert_eq!(readable_now(&mut peer).await, b"200");
    }

    #[tokio::test]
    async fn a_handshake_flight_goes_when_the_handshake_waits_for_the_client() {
        let (mut h, mut peer) = pair();
        h.hold_handshake();
        h.write_all(b"hello ").await.unwrap();
        h.write_all(b"flight").await.unwrap();
        h.flush().await.unwrap();
        assert_eq!(
            readable_now(&mut peer).await,
            b"",
            "kept until a read waits"
        );
        // The handshake reads; nothing is there yet: the flight goes.
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(std::time::Duration::from_millis(20), h.read(&mut buf));
        assert!(read.await.is_err(), "nothing to read yet");
        assert_eq!(readable_now(&mut peer).await, b"hello flight");
    }

    #[tokio::test]
    async fn tickets_go_with_the_next_write_and_not_for_a_read() {
        let (mut h, mut peer) = pair();
        h.hold_handshake();
        h.write_all(b"tickets;").await.unwrap();
        h.flush().await.unwrap();
        h.handshake_done(true);
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(std::time::Duration::from_millis(20), h.read(&mut buf));
        assert!(read.await.is_err(), "nothing to read yet");
        assert_eq!(
            readable_now(&mut peer).await,
            b"",
            "a read does not send tickets"
        );
        h.flush().await.unwrap();
        assert_eq!(readable_now(&mut peer).await, b"", "nor does a flush");
        h.write_all(b"answer").await.unwrap();
        assert_eq!(readable_now(&mut peer).await, b"tickets;answer");
        h.write_all(b" more").await.unwrap();
        assert_eq!(readable_now(&mut peer).await, b" more");
    }

    #[tokio::test]
    async fn after_tls12_what_is_held_goes_before_a_read_waits() {
        let (mut h, mut peer) = pair();
        h.hold_handshake();
        h.write_all(b"finished").await.unwrap();
        h.handshake_done(false);
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(std::time::Duration::from_millis(20), h.read(&mut buf));
        assert!(read.await.is_err(), "nothing to read yet");
        assert_eq!(readable_now(&mut peer).await, b"finished");
    }

    #[tokio::test]
    async fn a_shutdown_sends_what_is_held_also_mid_handshake() {
        let (mut h, mut peer) = pair();
        h.hold_handshake();
        h.write_all(b"alert").await.unwrap();
        h.shutdown().await.unwrap();
        assert_eq!(readable_now(&mut peer).await, b"alert");
    }
}
