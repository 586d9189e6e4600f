//! Idle watching and byte splicing for what the proxy relays without
//! reading: a passthrough tunnel, a WebSocket (also under the DLP scan,
//! ws.rs), and every client connection's idle timeout. Traffic either way
//! sets a flag that a watchdog clears on its ticks, so reads and writes
//! never look at the clock.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Wraps `io` so that traffic either way counts as activity; the returned
/// future completes once there has been none for `idle`.
pub(crate) fn watch<T>(
    io: T,
    idle: Duration,
) -> (Watched<T>, impl std::future::Future<Output = ()>) {
    let active = Arc::new(AtomicBool::new(false));
    let w = Watched {
        inner: io,
        active: active.clone(),
        read: Arc::new(AtomicU64::new(0)),
    };
    (w, idle_dog(active, idle))
}

/// Completes after `idle` (up to a quarter more) without activity. The I/O
/// only sets a flag that this clears each tick, so reads and writes never
/// look at the clock.
async fn idle_dog(active: Arc<AtomicBool>, idle: Duration) {
    let tick = (idle / 4).max(Duration::from_millis(1));
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        if active.swap(false, Ordering::Relaxed) {
            quiet = Duration::ZERO;
        } else {
            quiet += tick;
            if quiet >= idle {
                return;
            }
        }
    }
}

/// Copies both ways until both sides close, nothing moves for `idle`, or
/// `stop` completes. Returns (bytes from `a`, bytes from `b`, whether `stop`
/// ended it).
pub(crate) async fn splice<A, B>(
    a: A,
    b: B,
    idle: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> (u64, u64, bool)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a, dog) = watch(a, idle);
    let mut b = Watched {
        inner: b,
        active: a.active.clone(),
        read: Arc::new(AtomicU64::new(0)),
    };
    let stopped = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => false,
        _ = dog => { tracing::debug!("tunnel idle, closed"); false }
        _ = stop => true,
    };
    (
        a.read.load(Ordering::Relaxed),
        b.read.load(Ordering::Relaxed),
        stopped,
    )
}

pub(crate) struct Watched<T> {
    inner: T,
    active: Arc<AtomicBool>,
    read: Arc<AtomicU64>,
}

impl<T> Watched<T> {
    fn touch(&self) {
        self.active.store(true, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    // Vectored writes pass through: hyper then queues a response's head and
    // body as separate buffers instead of copying them into one.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
