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
/// string "…"`, `integer `…``, `floating point `…``, `unknown variant `…``.
/// A value in the wrong place of a config or manifest may be a secret, and
/// the message is about its place or type; field names (the manifest's
/// keys, which its errors are about), the expected names and the position
/// stay.
pub fn without_quoted_values(message: &str) -> String {
    // (what opens a quoted value, what closes it). A variant's name is
    // printed raw, so it may hold a backtick: it ends at the `, expected`
    // serde writes after it, where there is one.
    const QUOTES: [(&str, &str); 5] = [
        ("string \"", "\""),
        ("integer `", "`"),
        ("floating point `", "`"),
        ("char '", "'"),
        ("variant `", "`, expected"),
    ];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    loop {
        let next = QUOTES
            .iter()
            .filter_map(|(open, close)| rest.find(open).map(|i| (i, *open, *close)))
            .min_by_key(|(i, ..)| *i);
        let Some((i, open, close)) = next else {
            break;
        };
        out.push_str(&rest[..i + open.len() - 1]);
        let after = &rest[i + open.len()..];
        let end = if close.len() > 1 {
            // Up to the last `, expected` (a name may hold one too), else
            // the first closing backtick.
            after
                .rfind(close)
                .map(|j| (j, 1))
                .or_else(|| after.find('`').map(|j| (j, 1)))
        } else {
            // The first closing quote that is not escaped.
            let q = close.chars().next().unwrap_or('"');
            let mut escaped = false;
            let mut found = None;
            for (j, c) in after.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    c if c == q && !escaped => {
                        found = Some((j, q.len_utf8()));
                        break;
                    }
                    _ => escaped = false,
                }
            }
            found
        };
        out.push_str("(value not shown)");
        rest = match end {
            Some((j, n)) => &after[j + n..],
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
        assert_eq!(w(r#"string "open"#), "string (value not shown)");
        // Numbers, a name holding a backtick, a value written as a key.
        assert_eq!(
            w("invalid type: integer `987654321012345`, expected a string"),
            "invalid type: integer (value not shown), expected a string"
        );
        assert_eq!(
            w("invalid value: floating point `1500.5`, expected u16"),
            "invalid value: floating point (value not shown), expected u16"
        );
        assert_eq!(
            w("unknown variant `ab`cdSECRET`, expected one of `off`, `log`"),
            "unknown variant (value not shown), expected one of `off`, `log`"
        );
        assert_eq!(
            w("unknown field `swap`, expected"),
            "unknown field `swap`, expected"
        );
    }
}
