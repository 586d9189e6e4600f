//! The audit log: one JSON line per request. Lines carry names (hosts,
//! header names, rule ids), never a header value, a query string or a body.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::AuditConfig;
use crate::error::EgressError;

/// One audit line.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AuditRecord {
    /// RFC 3339 UTC time the request arrived.
    pub time: String,
    /// The bottle.
    pub bottle: String,
    /// Request method (`CONNECT` for tunnels).
    pub method: String,
    /// Target host.
    pub host: String,
    /// Target port.
    pub port: u16,
    /// Normalised path, no query.
    pub path: String,
    /// Index of the matching route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<usize>,
    /// `allow`, `deny`, `passthrough`, `identity_mismatch`, `dlp_block`, `error`, ...
    pub decision: String,
    /// Whether the proxy injected a credential.
    pub injected: bool,
    /// Names of the injected headers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub injected_headers: Vec<String>,
    /// Status sent to the client (0 when the connection closed first).
    pub status: u16,
    /// Request body bytes sent upstream.
    pub bytes_out: u64,
    /// Response body bytes sent to the client.
    pub bytes_in: u64,
    /// Milliseconds from request to end of response.
    pub duration_ms: f64,
    /// DLP rule ids that matched (names only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dlp: Vec<String>,
    /// Short note (why refused, which error).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// Where audit lines go.
///
/// On the proxy's worker threads ([`crate::workers`]) lines are gathered in
/// a buffer of the thread's own and written in one `write` when the thread
/// runs out of work (its runtime's park hook calls [`flush_thread`]), when
/// the buffer passes [`BATCH_BYTES`] or when its oldest line is
/// [`BATCH_AGE`] old. Written line by line, the log cost a syscall per
/// request, and the workers queued on the sink's lock (`strace -c`: about
/// one futex call per request). Elsewhere (tests, the smolmachines gate's
/// runtime) each line is written at once.
pub(crate) struct Audit {
    sink: Arc<Sink>,
}

struct Sink {
    out: Mutex<Box<dyn Write + Send>>,
}

impl Sink {
    fn write(&self, bytes: &[u8]) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if out.write_all(bytes).and_then(|_| out.flush()).is_err() {
            tracing::warn!("audit line could not be written");
        }
    }
}

/// A worker's buffer writes once it holds this much.
const BATCH_BYTES: usize = 64 * 1024;
/// ... or once its oldest line has waited this long on a busy thread.
const BATCH_AGE: Duration = Duration::from_millis(50);

/// Lines a worker thread has not written yet, and the sink they go to.
struct Pending {
    sink: Arc<Sink>,
    buf: Vec<u8>,
    since: Instant,
}

thread_local! {
    /// Whether this thread batches (set by the worker threads only).
    static BATCHING: Cell<bool> = const { Cell::new(false) };
    static PENDING: RefCell<Option<Pending>> = const { RefCell::new(None) };
}

/// Makes the calling thread batch its audit lines; it must then call
/// [`flush_thread`] whenever it goes idle.
pub(crate) fn batch_on_this_thread() {
    BATCHING.with(|b| b.set(true));
}

/// Writes the lines this thread has gathered.
pub(crate) fn flush_thread() {
    if let Some(p) = PENDING.with(|p| p.borrow_mut().take()) {
        p.sink.write(&p.buf);
    }
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Audit")
    }
}

impl Audit {
    pub(crate) fn open(cfg: &AuditConfig) -> Result<Self, EgressError> {
        let out: Box<dyn Write + Send> = match &cfg.path {
            None => Box::new(std::io::stdout()),
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| EgressError::Audit {
                        path: p.clone(),
                        source,
                    })?,
            ),
        };
        Ok(Self {
            sink: Arc::new(Sink {
                out: Mutex::new(out),
            }),
        })
    }

    pub(crate) fn write(&self, rec: &AuditRecord) {
        // Sized for a typical line, so serialising does not regrow it.
        let mut line = Vec::with_capacity(384);
        if serde_json::to_writer(&mut line, rec).is_err() {
            return;
        }
        line.push(b'\n');
        if !BATCHING.with(Cell::get) {
            self.sink.write(&line);
            return;
        }
        let full = PENDING.with(|p| {
            let mut p = p.borrow_mut();
            match p.as_mut() {
                // Same sink: append. (A reload brings a new sink; lines
                // for the old one are written first.)
                Some(q) if Arc::ptr_eq(&q.sink, &self.sink) => q.buf.extend_from_slice(&line),
                _ => {
                    if let Some(old) = p.take() {
                        old.sink.write(&old.buf);
                    }
                    *p = Some(Pending {
                        sink: self.sink.clone(),
                        buf: line,
                        since: Instant::now(),
                    });
                }
            }
            p.as_ref()
                .is_some_and(|q| q.buf.len() >= BATCH_BYTES || q.since.elapsed() >= BATCH_AGE)
        });
        if full {
            flush_thread();
        }
    }
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(p: &std::path::Path) -> usize {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .count()
    }

    #[test]
    fn worker_threads_write_their_lines_when_they_flush_and_other_threads_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let cfg = AuditConfig {
            path: Some(path.clone()),
        };
        let rec = AuditRecord {
            host: "api.test".into(),
            decision: "allow".into(),
            ..Default::default()
        };
        let first = Audit::open(&cfg).unwrap();
        first.write(&rec);
        assert_eq!(
            lines(&path),
            1,
            "a thread that does not batch writes at once"
        );
        std::thread::spawn(move || {
            batch_on_this_thread();
            first.write(&rec);
            first.write(&rec);
            assert_eq!(lines(&path), 1, "a worker gathers its lines");
            // A reload opens a new sink: the old one's lines go out first.
            let reloaded = Audit::open(&cfg).unwrap();
            reloaded.write(&rec);
            assert_eq!(lines(&path), 3);
            flush_thread();
            assert_eq!(lines(&path), 4, "flushing writes what was gathered");
            let text = std::fs::read_to_string(&path).unwrap();
            for l in text.lines() {
                let v: serde_json::Value = serde_json::from_str(l).expect("whole JSON lines");
                assert_eq!(v["host"], "api.test");
            }
        })
        .join()
        .unwrap();
    }
}
