//! The crate's one error type. Messages never carry a secret value.

use std::path::PathBuf;

/// Why the proxy could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// Could not read the proxy config file.
    #[error("cannot read egress config {path}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid JSON for this schema.
    #[error("egress config{}: {message}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    ConfigParse {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// What serde found (field and position; never a value).
        message: String,
    },
    /// The config parsed but says something the proxy cannot do.
    #[error("egress config: {message}")]
    ConfigInvalid {
        /// What is wrong and where.
        message: String,
    },
    /// The CA material in the config is unusable.
    #[error("egress CA")]
    Ca(#[from] crate::ca::CaError),
    /// The upstream trust store could not be built.
    #[error("upstream trust: {0}")]
    Trust(String),
    /// Could not bind or use the listening socket.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Could not open the audit log.
    #[error("cannot open audit log {path}")]
    Audit {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Could not start the async runtime.
    #[error("cannot start the proxy's runtime")]
    Runtime(#[source] std::io::Error),
}
