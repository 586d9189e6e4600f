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
    /// The key of the plugin's manifest options (`[agent.options]` for a
    /// provider, `[backends.NAME]` for a backend) this error is about, so
    /// the host can name its line: `Some([])` for the table as a whole,
    /// `Some(["runtime"])` for one key, a nested key's names in order.
    /// `None` when the error is not about the options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options_key: Option<Vec<String>>,
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

/// The key path of line `line` (1-based) of pretty-printed JSON: the keys
/// of the objects open there, outermost first (an array element counts as
/// its array's key).
fn key_at_line(text: &str, line: usize) -> Vec<String> {
    // (indent, key) of each key whose value is still open.
    let mut open: Vec<(usize, String)> = Vec::new();
    for l in text.lines().take(line) {
        let indent = l.len() - l.trim_start().len();
        let body = l.trim_start();
        let key = body
            .starts_with('"')
            .then(|| {
                let mut it = serde_json::Deserializer::from_str(body).into_iter::<String>();
                let k = it.next()?.ok()?;
                body[it.byte_offset()..].starts_with(':').then_some(k)
            })
            .flatten();
        match key {
            Some(k) => {
                open.retain(|(i, _)| *i < indent);
                open.push((indent, k));
            }
            // A closing bracket belongs to the key at its own indent.
            None if body.starts_with(['}', ']']) => open.retain(|(i, _)| *i <= indent),
            None => open.retain(|(i, _)| *i < indent),
        }
    }
    open.into_iter().map(|(_, k)| k).collect()
}

impl PluginError {
    /// A new error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            hint: None,
            retryable: false,
            options_key: None,
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
    /// Marks the error as being about the options key `key` (its names in
    /// order; none for the options table as a whole).
    pub fn in_options<I, S>(mut self, key: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.options_key = Some(key.into_iter().map(Into::into).collect());
        self
    }
    /// Reads a plugin's options (`[agent.options]`, `[backends.NAME]`,
    /// passed as JSON) into `T`: `null` is `T::default()`. The error is
    /// `InvalidInput`, its message starts with `table` and it names the key
    /// it is about (see [`PluginError::options_key`]), for unknown keys and
    /// wrong types alike.
    pub fn options<T>(value: &serde_json::Value, table: &str) -> Result<T, PluginError>
    where
        T: serde::de::DeserializeOwned + Default,
    {
        if value.is_null() {
            return Ok(T::default());
        }
        // serde_json's errors carry a line, not a key: read the options
        // from text with one key per line, and find the key at that line.
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| PluginError::internal(format!("{table}: {e}")))?;
        serde_json::from_str(&text).map_err(|e| {
            let shown = e.to_string();
            let message = shown
                .strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
                .unwrap_or(&shown);
            PluginError::invalid(format!("{table}: {message}"))
                .in_options(key_at_line(&text, e.line()))
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Opts {
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        pull: Option<bool>,
        #[serde(default)]
        names: Vec<String>,
        #[serde(default)]
        nested: Option<Nested>,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Nested {
        depth: u8,
    }

    fn key_of(v: serde_json::Value) -> (String, Option<Vec<String>>) {
        let e = PluginError::options::<Opts>(&v, "[backends.x]").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        (e.message, e.options_key)
    }

    #[test]
    fn options_errors_name_their_key() {
        let k = |v| key_of(v).1.unwrap();
        assert_eq!(k(serde_json::json!({"pull": true, "usr": "a"})), ["usr"]);
        assert_eq!(k(serde_json::json!({"names": [], "pull": "yes"})), ["pull"]);
        assert_eq!(k(serde_json::json!({"names": ["a", 1]})), ["names"]);
        assert_eq!(
            k(serde_json::json!({"nested": {"depth": "deep"}, "pull": true})),
            ["nested", "depth"]
        );
        assert_eq!(k(serde_json::json!({"nested": {}})), ["nested"]);
        assert_eq!(k(serde_json::json!({"a\"b:": 1})), ["a\"b:"]);
        let (message, _) = key_of(serde_json::json!({"pull": 1}));
        assert_eq!(
            message,
            "[backends.x]: invalid type: integer `1`, expected a boolean"
        );
        assert!(PluginError::options::<Opts>(&serde_json::Value::Null, "t").is_ok());
    }

    #[test]
    fn options_key_crosses_the_boundary() {
        let e = PluginError::invalid("x").in_options(["a", "b"]);
        assert_eq!(PluginError::from_json(&e.to_json()), e);
        // An error from a plugin built before the field is about no key.
        let old = PluginError::from_json(r#"{"kind":"invalid_input","message":"m"}"#);
        assert_eq!(old.options_key, None);
        assert!(!PluginError::invalid("x").to_json().contains("options_key"));
    }
}
