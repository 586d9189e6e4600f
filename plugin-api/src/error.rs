//! The one error type that crosses the plugin boundary.

use serde::{Deserialize, Serialize};

/// What went wrong, in a form the host can act on: which kind of failure,
/// whether trying again can help, what to do about it.
///
/// Crosses the boundary as JSON. The message must never contain a secret
/// value: plugins name refs and files, never their contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct PluginError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// One line saying what failed and where.
    pub message: String,
    /// What the user can do about it, when the plugin knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Whether the same call may succeed if tried again (a daemon restarting,
    /// a transient network fault).
    #[serde(default)]
    pub retryable: bool,
}

/// Classes of plugin failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request was malformed or the manifest section is invalid.
    InvalidInput,
    /// Something the plugin needs on the host is missing (a credential, an
    /// engine, a file).
    Unavailable,
    /// The named bottle does not exist.
    NotFound,
    /// The plugin does not implement this operation.
    Unsupported,
    /// The plugin panicked; the host survived.
    Panic,
    /// Anything else inside the plugin.
    Internal,
    /// A kind added by a newer plugin-api that this build does not know.
    #[serde(other)]
    Other,
}

impl PluginError {
    /// A new error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            hint: None,
            retryable: false,
        }
    }
    /// Invalid input (bad manifest section, malformed request).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }
    /// Something required is missing on the host.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
    /// A bottle that does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    /// An operation this plugin does not implement.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
    /// An internal failure.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    /// Adds what the user should do.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    /// Marks the error as worth retrying.
    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }
    /// Encodes for the boundary.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            // Serialising plain strings and enums cannot fail; keep a valid
            // error anyway rather than panicking at the boundary.
            r#"{"kind":"internal","message":"unencodable plugin error"}"#.to_string()
        })
    }
    /// Decodes from the boundary; text that is not an encoded error becomes
    /// an `Internal` error carrying it.
    pub fn from_json(text: &str) -> Self {
        serde_json::from_str(text).unwrap_or_else(|_| Self::internal(text.to_string()))
    }
}
