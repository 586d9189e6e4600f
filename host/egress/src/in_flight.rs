//! Requests in flight on one HTTP/2 client connection, so the proxy can
//! close a connection that has carried none for a while.
//!
//! Why: hyper closes an idle HTTP/1.1 keep-alive connection once
//! `header_read_timeout` passes without a request head, but an HTTP/2
//! connection with no open stream stays until the 10-minute idle timeout
//! (only traffic resets that, and PINGs count), holding one of
//! `limits.max_connections` slots all the while.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct InFlight {
    n: AtomicUsize,
    changed: Notify,
}

/// One request, from its head until the proxy's answer's head: counted
/// while it lives. (A streamed answer's body, or a WebSocket, goes on past
/// it; closing then is graceful: HTTP/2 lets open streams finish.)
#[derive(Debug)]
pub(crate) struct Guard(Arc<InFlight>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.n.fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_waiters();
    }
}

impl InFlight {
    pub(crate) fn enter(self: &Arc<Self>) -> Guard {
        self.n.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
        Guard(self.clone())
    }

    /// Completes once no request has been in flight for `idle`.
    pub(crate) async fn idle_for(&self, idle: Duration) {
        loop {
            // Registered before the count is read, so no change is missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.n.load(Ordering::Relaxed) > 0 {
                changed.await;
            } else if tokio::time::timeout(idle, changed).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_after_the_last_request_and_the_wait() {
        let f = Arc::new(InFlight::default());
        let g = f.enter();
        let idle = f.idle_for(Duration::from_secs(1));
        tokio::pin!(idle);
        // A request in flight: never idle, however long it takes.
        assert!(tokio::time::timeout(Duration::from_secs(5), idle.as_mut())
            .await
            .is_err());
        drop(g);
        let start = tokio::time::Instant::now();
        idle.await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
}
