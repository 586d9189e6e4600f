//! Thread per core: the proxy runs one current-thread tokio runtime per CPU,
//! every one accepting from the same listening socket.
//!
//! Why not one multi-thread runtime: a connection's client leg, its
//! upstream leg and the pooled upstream connection it borrows then land on
//! different threads, and handing a request from one to the next costs a
//! cross-thread wake-up (`strace -c` of the proxy under load showed about
//! one futex call per request). Here a connection, and every task it
//! spawns, stays on the thread that accepted it, and each worker has its
//! own upstream client and pool ([`index`] picks it), so a request never
//! wakes another thread. See docs/benchmarks-history.md (egress proxy,
//! 2026-11-30) for what it measured.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::EgressError;
use crate::listener::{AsyncListener, Listener};

thread_local! {
    /// Which worker this thread is (0 on threads that are not ours).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// How many workers the process runs; 1 until [`run`] starts more.
static COUNT: AtomicUsize = AtomicUsize::new(1);

/// This thread's worker index (0 on threads that are not workers).
pub(crate) fn index() -> usize {
    INDEX.with(Cell::get)
}

/// How many workers (and so upstream clients) there are.
pub(crate) fn count() -> usize {
    COUNT.load(Ordering::Relaxed).max(1)
}

/// One worker per CPU this process may use (cgroup quotas included).
pub(crate) fn per_core() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Declares how many workers [`run`] will start. Call it before building
/// the proxy's shared state, which sizes its upstream clients by it.
pub(crate) fn set_count(n: usize) {
    COUNT.store(n.max(1), Ordering::Relaxed);
}

/// Runs `serve(i, listener)` on [`count`] threads, each inside a
/// current-thread runtime of its own with its own handle on `listener`.
/// Blocks until the first worker ends and returns its result (workers end
/// only on a fatal error).
pub(crate) fn run<F, Fut>(listener: Listener, serve: F) -> Result<(), EgressError>
where
    F: Fn(usize, AsyncListener) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), EgressError>>,
{
    let addr = listener.describe();
    let listen_err = |source| EgressError::Listen {
        addr: addr.clone(),
        source,
    };
    listener.set_nonblocking().map_err(listen_err)?;
    raise_nofile_limit();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for i in 0..count() {
        let l = listener.try_clone().map_err(listen_err)?;
        let (serve, done, addr) = (serve.clone(), done_tx.clone(), addr.clone());
        std::thread::Builder::new()
            .name(format!("egress-{i}"))
            .spawn(move || {
                INDEX.with(|c| c.set(i));
                let work = std::panic::AssertUnwindSafe(|| {
                    crate::audit::batch_on_this_thread();
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        // Audit lines gathered while busy are written
                        // when the thread has nothing else to do.
                        .on_thread_park(crate::audit::flush_thread)
                        .build()
                        .map_err(EgressError::Runtime)?;
                    rt.block_on(async move {
                        let l = l
                            .into_async()
                            .map_err(|source| EgressError::Listen { addr, source })?;
                        serve(i, l).await
                    })
                });
                // A worker that panics ends the proxy with an error rather
                // than leaving it serving on fewer threads unnoticed.
                let r = std::panic::catch_unwind(work).unwrap_or_else(|_| {
                    Err(EgressError::Runtime(std::io::Error::other(format!(
                        "egress worker {i} panicked"
                    ))))
                });
                let _ = done.send(r);
            })
            .map_err(EgressError::Runtime)?;
    }
    drop(done_tx);
    done_rx.recv().unwrap_or_else(|_| {
        Err(EgressError::Runtime(std::io::Error::other(
            "egress workers ended without a result",
        )))
    })
}

/// Raises this process's soft limit on open descriptors to its hard limit.
/// Each client connection, tunnel and upstream connection is a descriptor
/// (an HTTP/2 client's 128 streams to an HTTP/1.1 upstream are 128), and a
/// soft limit of 1024, the usual default, is below what `limits.
/// max_connections` alone allows; at the limit `accept` fails and requests
/// get 502. The hard limit stays whatever the sidecar was given.
fn raise_nofile_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write the one struct they are
    // given, which lives for the calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                tracing::debug!("could not raise the open-files limit");
            }
        }
    }
}
