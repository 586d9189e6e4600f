//! Where each key and value of a manifest sits in its text, from the same
//! parser `toml` uses, so an error can name the exact line and key path.
//!
//! Key paths are written as TOML keys plus array indexes:
//! `egress.route[1].inject[0].header`, `egress.resolve."api.example.com"`.
//! An array of tables (`[[egress.route]]`) and an inline array of tables
//! (`route = [{ … }]`) give the same paths.

use std::collections::HashMap;
use std::ops::Range;

use toml_edit::{ImDocument, Item, Key, Table, Value};

/// The span of one key path: its key (absent for array elements) and its
/// value (for a `[table]`, its header).
#[derive(Debug, Clone, Default)]
struct Entry {
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
}

/// Every key path of a document, with its spans.
#[derive(Debug, Default)]
pub(super) struct Spans {
    entries: HashMap<String, Entry>,
}

impl Spans {
    /// Indexes `text`; a text that does not parse has no spans.
    pub(super) fn of(text: &str) -> Self {
        let mut spans = Spans::default();
        if let Ok(doc) = ImDocument::parse(text) {
            spans.table(String::new(), doc.as_table());
        }
        spans
    }

    /// Where the value at `path` starts (its key's start for a value
    /// without a span); for a path that is not in the text, where its
    /// nearest ancestor that is starts.
    pub(super) fn value_start(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(e) = self.entries.get(p) {
                if let Some(r) = e.value.as_ref().or(e.key.as_ref()) {
                    return Some(r.start);
                }
            }
            p = parent(p)?;
        }
    }

    /// Where the key at `path` starts (its value's, for an array element).
    pub(super) fn key_start(&self, path: &str) -> Option<usize> {
        match self.entries.get(path) {
            Some(Entry { key: Some(k), .. }) => Some(k.start),
            _ => self.value_start(path),
        }
    }

    /// The key path of the innermost key or value holding `offset`.
    pub(super) fn path_at(&self, offset: usize) -> Option<String> {
        self.entries
            .iter()
            .flat_map(|(path, e)| {
                [&e.key, &e.value]
                    .into_iter()
                    .flatten()
                    .map(move |r| (path, r))
            })
            .filter(|(_, r)| r.start <= offset && offset < r.end.max(r.start + 1))
            // Innermost: the shortest span; among equal ones, the deepest path.
            .min_by_key(|(path, r)| (r.len(), usize::MAX - path.len()))
            .map(|(path, _)| path.clone())
    }

    fn push(&mut self, path: &str, key: Option<&Key>, value: Option<Range<usize>>) {
        let key = key.and_then(Key::span);
        // A table split over several headers or dotted keys: keep the first.
        self.entries
            .entry(path.to_string())
            .or_insert(Entry { key, value });
    }

    fn table(&mut self, path: String, table: &Table) {
        for (name, item) in table.iter() {
            let key = table.key(name);
            self.item(child(&path, name), key, item);
        }
    }

    fn item(&mut self, path: String, key: Option<&Key>, item: &Item) {
        match item {
            Item::None => {}
            Item::Value(v) => self.value(path, key, v),
            Item::Table(t) => {
                self.push(&path, key, t.span());
                self.table(path, t);
            }
            Item::ArrayOfTables(a) => {
                self.push(&path, key, a.span());
                for (i, t) in a.iter().enumerate() {
                    let at = format!("{path}[{i}]");
                    self.push(&at, None, t.span());
                    self.table(at, t);
                }
            }
        }
    }

    fn value(&mut self, path: String, key: Option<&Key>, value: &Value) {
        self.push(&path, key, value.span());
        match value {
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    self.value(format!("{path}[{i}]"), None, v);
                }
            }
            Value::InlineTable(t) => {
                for (name, v) in t.iter() {
                    self.value(child(&path, name), t.key(name), v);
                }
            }
            _ => {}
        }
    }
}

/// `parent.key`, the key quoted when it is not a bare key.
pub fn child(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let key = if bare {
        key.to_string()
    } else {
        // A TOML basic string, which a JSON string is for what keys hold.
        serde_json::to_string(key).unwrap_or_else(|_| format!("\"{key}\""))
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// The path one step up: `a.b[2]` → `a.b` → `a`; None at the top.
fn parent(path: &str) -> Option<&str> {
    // The last `.` or `[` outside quotes.
    let mut cut = None;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in path.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '.' | '[' if !quoted => cut = Some(i),
            _ => {}
        }
    }
    cut.map(|i| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_skip_quoted_dots() {
        assert_eq!(parent("egress.resolve.\"a.b\""), Some("egress.resolve"));
        assert_eq!(parent("egress.route[1]"), Some("egress.route"));
        assert_eq!(parent("egress"), None);
        assert_eq!(child("env", "A-B"), "env.A-B");
        assert_eq!(child("env", "a.b"), "env.\"a.b\"");
    }
}
