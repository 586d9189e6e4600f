//! A string that must never be printed.

use serde::{Deserialize, Serialize};

/// A secret value (a token, a key). `Debug` and `Display` print
/// `[redacted]`; only [`Secret::expose`] gives the value, so every place that
/// reads one is easy to find.
///
/// Serialises transparently: it crosses the boundary and reaches the egress
/// proxy's config as its plain value, and nowhere else.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The value itself. Call only where it is used (injection, the proxy
    /// config), never to log or format.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("canary-0123456789");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "canary-0123456789");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"canary-0123456789\"");
    }
}
