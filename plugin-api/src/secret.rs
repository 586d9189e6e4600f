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

/// A serde message with the values it quotes left out: `invalid type:
/// string "…"`, `invalid value: string "…"`, `unknown variant `…``. A value
/// in the wrong place of a config or manifest may be a secret, and the
/// message is about its place or type; field names and the expected
/// variants stay.
pub fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    loop {
        let next = [("string \"", '"'), ("variant `", '`')]
            .iter()
            .filter_map(|(open, close)| rest.find(open).map(|i| (i, *open, *close)))
            .min_by_key(|(i, ..)| *i);
        let Some((i, open, close)) = next else {
            break;
        };
        out.push_str(&rest[..i + open.len() - 1]);
        let after = &rest[i + open.len()..];
        // The closing quote: the first not escaped.
        let mut end = None;
        let mut escaped = false;
        for (j, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                c if c == close && !escaped => {
                    end = Some(j);
                    break;
                }
                _ => escaped = false,
            }
        }
        out.push_str("(value not shown)");
        rest = match end {
            Some(j) => &after[j + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod quoted_tests {
    use super::without_quoted_values as w;

    #[test]
    fn quoted_values_are_left_out_and_names_stay() {
        assert_eq!(
            w(r#"invalid type: string "sk-live-1\"2", expected u64 at line 1"#),
            "invalid type: string (value not shown), expected u64 at line 1"
        );
        assert_eq!(
            w("unknown variant `sk-x`, expected one of `off`, `log`"),
            "unknown variant (value not shown), expected one of `off`, `log`"
        );
        assert_eq!(w("unknown field `api_key`"), "unknown field `api_key`");
        assert_eq!(w(r#"string "open"#), "string (value not shown)");
    }
}
