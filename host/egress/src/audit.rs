//! The audit log: one JSON line per request. Lines carry names (hosts,
//! header names, rule ids), never a header value, a query string or a body.

use std::io::Write;
use std::sync::Mutex;

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
pub(crate) struct Audit {
    out: Mutex<Box<dyn Write + Send>>,
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
            out: Mutex::new(out),
        })
    }

    pub(crate) fn write(&self, rec: &AuditRecord) {
        let Ok(mut line) = serde_json::to_vec(rec) else {
            return;
        };
        line.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if out.write_all(&line).and_then(|_| out.flush()).is_err() {
            tracing::warn!("audit line could not be written");
        }
    }
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
