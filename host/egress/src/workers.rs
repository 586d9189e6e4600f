//! Thread per core: the proxy runs one current-thread tokio runtime per CPU.
//!
//! Why not one multi-thread runtime: a connection's client leg, its
//! upstream leg and the pooled upstream connection it borrows then land on
//! different threads, and handing a request from one to the next costs a
//! cross-thread wake-up (`strace -c` of the proxy under load showed about
//! one futex call per request). Here a connection, and every task it
//! spawns, stays on the thread that serves it, and each worker has its
//! own upstream client and pool ([`index`] picks it), so a request never
//! wakes another thread. See docs/benchmarks-history.md (egress proxy,
//! 2026-11-30) for what it measured.
//!
//! Only worker 0 accepts, and it keeps a connection unless another worker
//! serves many fewer ([`place`]); then it hands the connection over
//! ([`hand_over`]), one wake-up of that worker per connection. An agent's
//! few connections so all live on one thread. Spreading them (every
//! worker accepting from the listening socket, as before) cost ~20% more
//! CPU per new connection on the 2-core VM: each worker slept and was
//! woken for each event of its few connections, and each connection woke
//! every worker (docs/benchmarks.md, "What was tried").

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::error::EgressError;
use crate::listener::{AsyncListener, Listener};

thread_local! {
    /// Which worker this thread is (0 on threads that are not ours).
    static INDEX: Cell<usize> = const { Cell::new(0) };
    /// The workers this thread is one of (None on threads that are not
    /// ours). Per thread, not per process: tests run several proxies in
    /// one process.
    static POOL: std::cell::RefCell<Option<Arc<Pool>>> = const { std::cell::RefCell::new(None) };
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

/// Work handed to a worker: run on its thread, inside its runtime.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// One [`run`]'s workers: each one's queue of handed-over work, and how
/// many client connections each serves.
struct Pool {
    queues: Vec<mpsc::UnboundedSender<Job>>,
    load: Vec<AtomicUsize>,
}

/// How many more connections than the least busy worker the accepting
/// worker keeps before it hands one over (why: the module's comment).
/// With 2, new connections cost the proxy ~265 µs of CPU each on the
/// 2-core VM, against ~212 µs with all of them on one thread.
const KEEP_AHEAD: usize = 32;

/// A client connection's place in its worker's count: taken by [`place`]
/// for the worker chosen, given back when dropped (when the connection and
/// every tunnel it opened have ended).
pub(crate) struct Load {
    worker: usize,
    pool: Option<Arc<Pool>>,
}

impl Load {
    /// The worker that is to serve the connection.
    pub(crate) fn worker(&self) -> usize {
        self.worker
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(p) = &self.pool {
            p.load[self.worker].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Chooses the worker to serve a connection accepted on this thread: this
/// one, unless another serves more than [`KEEP_AHEAD`] fewer connections.
pub(crate) fn place() -> Load {
    let here = index();
    let Some(p) = POOL.with(|p| p.borrow().clone()) else {
        return Load {
            worker: here,
            pool: None,
        };
    };
    let load = |i: usize| p.load[i].load(Ordering::Relaxed);
    let least = (0..p.load.len()).min_by_key(|&i| load(i)).unwrap_or(here);
    let w = if load(here) > load(least) + KEEP_AHEAD {
        least
    } else {
        here
    };
    p.load[w].fetch_add(1, Ordering::Relaxed);
    Load {
        worker: w,
        pool: Some(p),
    }
}

/// Runs `job` on worker `w`'s thread; gives it back if that worker's
/// queue is gone (the caller then runs it itself).
pub(crate) fn hand_over(w: usize, job: impl FnOnce() + Send + 'static) -> Result<(), Job> {
    let job: Job = Box::new(job);
    POOL.with(
        |p| match p.borrow().as_ref().and_then(|p| p.queues.get(w)) {
            Some(q) => q.send(job).map_err(|e| e.0),
            None => Err(job),
        },
    )
}

/// Runs `serve(i, listener)` on [`count`] threads, each inside a
/// current-thread runtime of its own; worker 0 gets the listener, the
/// others None (they serve what worker 0 hands them). Blocks until the
/// first worker ends and returns its result (workers end only on a fatal
/// error).
pub(crate) fn run<F, Fut>(listener: Listener, serve: F) -> Result<(), EgressError>
where
    F: Fn(usize, Option<AsyncListener>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), EgressError>>,
{
    let addr = listener.describe();
    let listen_err = |source| EgressError::Listen {
        addr: addr.clone(),
        source,
    };
    listener.set_nonblocking().map_err(listen_err)?;
    raise_nofile_limit();
    let (queues, inboxes): (Vec<_>, Vec<_>) = (0..count())
        .map(|_| mpsc::unbounded_channel::<Job>())
        .unzip();
    let pool = Arc::new(Pool {
        queues,
        load: (0..count()).map(|_| AtomicUsize::new(0)).collect(),
    });
    let mut listener = Some(listener);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for (i, mut inbox) in inboxes.into_iter().enumerate() {
        let l = listener.take();
        let (serve, done, addr, pool) =
            (serve.clone(), done_tx.clone(), addr.clone(), pool.clone());
        std::thread::Builder::new()
            .name(format!("egress-{i}"))
            .spawn(move || {
                INDEX.with(|c| c.set(i));
                POOL.with(|p| *p.borrow_mut() = Some(pool));
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
                            .map(Listener::into_async)
                            .transpose()
                            .map_err(|source| EgressError::Listen { addr, source })?;
                        tokio::spawn(async move {
                            while let Some(job) = inbox.recv().await {
                                job();
                            }
                        });
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
/// get 502. The hard limit stays whatever the sidecar (or the user who
/// started the smolmachines gate) was given.
pub(crate) fn raise_nofile_limit() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accepting_worker_keeps_connections_until_it_leads_by_more_than_keep_ahead() {
        let queues = (0..2).map(|_| mpsc::unbounded_channel().0).collect();
        let pool = Arc::new(Pool {
            queues,
            load: (0..2).map(|_| AtomicUsize::new(0)).collect(),
        });
        POOL.with(|p| *p.borrow_mut() = Some(pool.clone()));
        let kept: Vec<Load> = (0..=KEEP_AHEAD).map(|_| place()).collect();
        assert!(kept.iter().all(|l| l.worker() == 0));
        let handed = place();
        assert_eq!(handed.worker(), 1, "one more than KEEP_AHEAD ahead");
        assert_eq!(pool.load[1].load(Ordering::Relaxed), 1);
        // Loads are given back when connections end.
        drop(kept);
        assert_eq!(pool.load[0].load(Ordering::Relaxed), 0);
        assert_eq!(place().worker(), 0);
        POOL.with(|p| *p.borrow_mut() = None);
    }

    #[test]
    fn handed_over_work_runs_on_the_worker_it_was_handed_to() {
        set_count(2);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            run(l.into(), move |i, l| {
                let tx = tx.clone();
                async move {
                    assert_eq!(l.is_some(), i == 0, "only worker 0 listens");
                    if i == 0 {
                        let handed = hand_over(1, move || {
                            let me = std::thread::current().name().map(str::to_owned);
                            // tokio::spawn works there: the job runs
                            // inside worker 1's runtime.
                            tokio::spawn(async move { tx.send((me, index())).unwrap() });
                        });
                        assert!(handed.is_ok());
                    }
                    std::future::pending().await
                }
            })
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(got.unwrap(), (Some("egress-1".to_owned()), 1));
    }
}
