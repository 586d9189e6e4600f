//! A method override in a request's body: the `_method` field of a form.
//!
//! A `POST` whose form body has `_method=DELETE` is a `DELETE` to Rails
//! and every Rack app (`Rack::MethodOverride`, in Rails' default
//! middleware), to Laravel and Symfony, and to Spring's
//! `HiddenHttpMethodFilter`. So on a route whose `methods` allow `POST`
//! but not `DELETE`, the proxy reads the body of a `POST` the way those
//! frameworks do before anything is sent ([`kind`], [`methods_in`]), and
//! the request is refused like one with an override header
//! ([`crate::route::method_override`]).
//!
//! The body is read as sent. None of those frameworks decodes a request's
//! `content-encoding` before it reads the form, so a compressed form
//! carries no override to them, and a `content-encoding` header on an
//! uncompressed one does not hide it here.

use bytes::Bytes;
use http::{header, HeaderMap, Method};

/// A body a framework reads a `_method` field from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `application/x-www-form-urlencoded`, or no `content-type` at all
    /// (Rack parses a `POST` without one as a form).
    Urlencoded,
    /// `multipart/*` with its boundary (Rack parses `multipart/mixed` and
    /// `multipart/related` as well as `multipart/form-data`).
    Multipart(String),
    /// JSON (`…/json`, `…+json`): Laravel reads its top-level `_method`.
    Json,
}

/// The kinds of `_method`-bearing body a request has, each one a
/// framework would read an override from: only a `POST` (Rack, Symfony and
/// Spring honour an override of `POST` alone). A body is read as each of
/// them, since servers disagree on which applies.
pub(crate) fn kinds(method: &Method, headers: &HeaderMap) -> Vec<Kind> {
    if !method.as_str().eq_ignore_ascii_case("POST") {
        return Vec::new();
    }
    // An empty content-type is none to Rack, which reads such a body as a
    // form.
    let types: Vec<String> = headers
        .get_all(header::CONTENT_TYPE)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .filter(|t| !t.trim().is_empty())
        .collect();
    if types.is_empty() {
        return vec![Kind::Urlencoded];
    }
    // A second content-type line is for the server to choose between; any
    // of them that could carry a form makes this one.
    let mut found = Vec::new();
    for v in &types {
        let t = v.to_ascii_lowercase();
        // Rack cuts the media type at `;` or `,`, PHP at a space as well.
        let media = t.split([';', ',']).next().unwrap_or("").trim();
        if media.starts_with("application/x-www-form-urlencoded") {
            found.push(Kind::Urlencoded);
        } else if media.starts_with("multipart/") {
            // Without a boundary no server can split it into fields.
            if let Some(b) = boundary(v) {
                found.push(Kind::Multipart(b));
            }
        }
        // Laravel reads JSON wherever the header says `/json`, even in a
        // form's parameters.
        if t.contains("/json") || t.contains("+json") {
            found.push(Kind::Json);
        }
    }
    found.dedup();
    found
}

/// A JSON body's charset that Express's body parser decodes before it reads
/// the JSON (any `utf-*` iconv-lite knows: `utf-16le`, `utf-16`, `utf-7`…)
/// and this reader, which reads UTF-8 as sent, cannot: a `_method` in such
/// a body is hidden from it, so the caller refuses the body. Every
/// `charset` parameter of every content-type line counts (the `content-type`
/// module takes the last), unquoted and unescaped as it reads them.
pub(crate) fn unread_json_charset(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::CONTENT_TYPE)
        .iter()
        .flat_map(|v| {
            let t = String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase();
            t.split(';')
                .skip(1)
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    (k.trim() == "charset").then(|| {
                        v.chars()
                            .filter(|c| !matches!(c, '"' | '\\') && !c.is_whitespace())
                            .collect::<String>()
                    })
                })
                .collect::<Vec<_>>()
        })
        .find(|c| c.starts_with("utf") && !matches!(c.as_str(), "utf-8" | "utf8"))
}

/// A multipart content-type's boundary: the `boundary` parameter, or, in
/// one that does not parse as a media type (`multipart/form-data,
/// boundary=x`), what Rack and PHP take for it (the text after the first
/// `boundary` and `=`). Which boundary splits the body does not decide
/// what is found: [`methods_in`] also counts the `_method` names in its
/// bytes.
fn boundary(v: &str) -> Option<String> {
    if let Ok(m) = v.parse::<mime::Mime>() {
        if let Some(b) = m.get_param(mime::BOUNDARY) {
            return Some(b.as_str().to_owned());
        }
    }
    let at = v.to_ascii_lowercase().find("boundary")?;
    let rest = &v[at + "boundary".len()..];
    let value = rest[rest.find('=')? + 1..].trim_start_matches('"');
    let b = value.split(['"', ';', ',']).next().unwrap_or("");
    (!b.is_empty()).then(|| b.to_owned())
}

/// Whether a form field's name is `_method` to some framework: as sent
/// (Spring), as PHP names its `$_POST` entries, which Laravel and Symfony
/// read (cut at a NUL, leading spaces dropped, ` ` and `.` read as `_`,
/// and a `[` that no `]` closes as well: `.method` is `_method` to them),
/// and as Rack and Express's `qs` name a key (brackets around it dropped:
/// `[_method]` and `]_method` are `_method` to them). `_method[…]` (an
/// array to PHP and Rack) counts too.
pub(crate) fn is_override_field(name: &str) -> bool {
    let name = name.split('\0').next().unwrap_or("");
    let name = name.trim_start_matches(' ');
    let base = match name.split_once('[') {
        Some((base, rest)) if rest.contains(']') => base,
        _ => name,
    };
    let php: String = base
        .chars()
        .map(|c| if matches!(c, ' ' | '.' | '[') { '_' } else { c })
        .collect();
    let rack = name
        .trim_start_matches(['[', ']'])
        .split(['[', ']'])
        .next()
        .unwrap_or("");
    php == "_method" || rack == "_method"
}

/// How many times a multipart body's bytes name a `_method` field some
/// server might read: `_method` or `.method` (PHP's name for it) as a
/// whole word, with
/// backslashes dropped (Rack unquotes `\_method`) and percent-escapes
/// decoded (busboy decodes `name*=UTF-8''%5Fmethod`).
fn override_names_in(body: &[u8]) -> usize {
    let plain: Vec<u8> = body.iter().copied().filter(|&b| b != b'\\').collect();
    let decoded = crate::path_readings::percent_decoded_bytes(&plain);
    // Only a whole name counts: `obj.method()` and `self._method` name no
    // field to any server (a letter, digit, `_` or `.` on either side
    // makes another name).
    let word = |b: Option<&u8>| b.is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_');
    (0..decoded.len().saturating_sub(6))
        .filter(|&i| {
            matches!(decoded[i], b'_' | b'.')
                && decoded[i + 1..].starts_with(b"method")
                && !(i > 0 && (word(decoded.get(i - 1)) || decoded[i - 1] == b'.'))
                && !word(decoded.get(i + 7))
        })
        .count()
}

/// What a body of `kind` asks for in its `_method` fields: each value,
/// or a placeholder that no route allows for one that is not text. `Err`
/// (what went wrong) when a multipart body cannot be split into fields —
/// a server might still read it, so the caller refuses it.
pub(crate) async fn methods_in(kind: &Kind, body: Bytes) -> Result<Vec<String>, String> {
    match kind {
        Kind::Urlencoded => Ok(form_urlencoded::parse(&body)
            .filter(|(k, _)| is_override_field(k))
            .map(|(_, v)| v.into_owned())
            .collect()),
        Kind::Multipart(boundary) => {
            let names = override_names_in(&body);
            let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
            let mut parts = multer::Multipart::new(stream, boundary);
            let mut found = Vec::new();
            while let Some(field) = parts.next_field().await.map_err(|e| e.to_string())? {
                if field.name().is_some_and(is_override_field) {
                    let value = field.bytes().await.map_err(|e| e.to_string())?;
                    found.push(
                        std::str::from_utf8(&value)
                            .map(str::to_owned)
                            .unwrap_or_else(|_| NOT_TEXT.into()),
                    );
                }
            }
            // Servers split a multipart body differently (another boundary,
            // a bare LF before it, parts after the last one, a second
            // `name`, Rack's `Content-ID`): a `_method` name in its bytes
            // that is no field's name here may be one to them.
            if names > found.len() {
                return Err(format!(
                    "it names _method {names} times but has {} such field(s)",
                    found.len()
                ));
            }
            Ok(found)
        }
        // Invalid JSON is no form to Laravel either (an empty input bag).
        Kind::Json => {
            let mut top = JsonTop::default();
            top.feed(&body);
            Ok(top.found)
        }
    }
}

/// The `_method` values at the top of a JSON object, read as it arrives
/// ([`JsonTop::feed`], a piece at a time: the same reader serves a body
/// held whole and one that streams past the cap, [`WatchedJson`]). Read
/// leniently, by hand: PHP and Node take what `serde_json` refuses
/// (`1e999`, arrays 200 deep, lone surrogates), and a body no server takes
/// costs nothing to read too. Only the top level's keys and the values of
/// its `_method` keys are decoded; other values are skipped by their
/// brackets and quotes. Every `_method` key counts, duplicates too (servers
/// take the first or the last).
#[derive(Debug, Default)]
pub(crate) struct JsonTop {
    at: At,
    /// Brackets open inside the top-level object's current value.
    depth: usize,
    /// Inside a string: what it is, and the escape being read.
    string: Option<Str>,
    /// The key just read names `_method`: its value is recorded.
    wanted: bool,
    /// The `_method` values found, in order.
    pub(crate) found: Vec<String>,
}

/// Where the reader is in the top-level object.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Before the opening `{` (a UTF-8 byte-order mark is skipped).
    #[default]
    Start,
    Key,
    Colon,
    /// Before a value, or inside one that is not a string.
    Value,
    /// After a value: `,` or `}`.
    Next,
    /// Not an object, or its end: nothing more is read.
    Done,
}

/// A string being read.
#[derive(Debug, Default)]
struct Str {
    /// A key, or a `_method` key's value: its text is kept (up to
    /// [`KEEP_UNITS`]); otherwise it is only stepped over.
    keep: Option<Keep>,
    /// After a `\`.
    escape: bool,
    /// Inside `\uXXXX`: digits read so far and their value.
    hex: Option<(u8, u16)>,
    /// Bytes of UTF-8 not yet turned into UTF-16 units.
    bytes: Vec<u8>,
    units: Vec<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    Key,
    Value,
}

/// Units of a key or value kept: enough for any name a server reads as
/// `_method` (a PHP name is cut at a NUL) and any method; a longer value is
/// kept cut, which names no method, so it is refused.
const KEEP_UNITS: usize = 256;

impl Str {
    fn push_byte(&mut self, b: u8) {
        if self.keep.is_some() && self.units.len() + self.bytes.len() < KEEP_UNITS {
            self.bytes.push(b);
        }
    }
    fn push_unit(&mut self, u: u16) {
        if self.keep.is_some() && self.units.len() + self.bytes.len() < KEEP_UNITS {
            self.flush();
            self.units.push(u);
        }
    }
    fn flush(&mut self) {
        self.units
            .extend(String::from_utf8_lossy(&self.bytes).encode_utf16());
        self.bytes.clear();
    }
    /// The text, a lone surrogate as U+FFFD.
    fn text(mut self) -> String {
        self.flush();
        String::from_utf16_lossy(&self.units)
    }
}

impl JsonTop {
    /// Reads the next piece of the body.
    pub(crate) fn feed(&mut self, data: &[u8]) {
        for &b in data {
            if self.at == At::Done {
                return;
            }
            if self.string.is_some() {
                self.string_byte(b);
                continue;
            }
            match (self.at, b) {
                (At::Start, b' ' | b'\t' | b'\r' | b'\n' | 0xEF | 0xBB | 0xBF) => {}
                (At::Start, b'{') => self.at = At::Key,
                (_, b' ' | b'\t' | b'\r' | b'\n') => {}
                (At::Key, b'"') => self.open(Some(Keep::Key)),
                (At::Colon, b':') => self.at = At::Value,
                (At::Value, b'"') => {
                    let keep = (self.depth == 0 && self.wanted).then_some(Keep::Value);
                    self.open(keep);
                }
                (At::Value, b'{' | b'[') => {
                    self.not_text();
                    self.depth += 1;
                }
                (At::Value, b'}' | b']') if self.depth > 0 => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        self.at = At::Next;
                    }
                }
                (At::Value | At::Next, b',') if self.depth == 0 => self.at = At::Key,
                (At::Value | At::Next, b'}') if self.depth == 0 => self.at = At::Done,
                // A number, `true`, `null`, or anything inside a nested value.
                (At::Value, _) => self.not_text(),
                // Not JSON any server reads: no override either.
                _ => self.at = At::Done,
            }
        }
    }

    fn open(&mut self, keep: Option<Keep>) {
        self.string = Some(Str {
            keep,
            ..Str::default()
        });
    }

    /// The value of a `_method` key is not a string.
    fn not_text(&mut self) {
        if self.depth == 0 && self.wanted {
            self.wanted = false;
            self.found.push(NOT_TEXT.into());
        }
    }

    fn string_byte(&mut self, b: u8) {
        let Some(s) = self.string.as_mut() else {
            return;
        };
        if let Some((n, v)) = s.hex {
            match (b as char).to_digit(16) {
                Some(d) if n < 3 => s.hex = Some((n + 1, v << 4 | d as u16)),
                Some(d) => {
                    s.hex = None;
                    s.push_unit(v << 4 | d as u16);
                }
                // Not an escape any parser takes: the body is no JSON.
                None => self.at = At::Done,
            }
            return;
        }
        if s.escape {
            s.escape = false;
            match b {
                b'u' => s.hex = Some((0, 0)),
                b'b' => s.push_byte(8),
                b'f' => s.push_byte(12),
                b'n' => s.push_byte(b'\n'),
                b'r' => s.push_byte(b'\r'),
                b't' => s.push_byte(b'\t'),
                other => s.push_byte(other),
            }
            return;
        }
        match b {
            b'\\' => s.escape = true,
            b'"' => {
                let s = self.string.take().unwrap_or_default();
                match s.keep {
                    Some(Keep::Key) => {
                        self.wanted = is_override_field(&s.text());
                        self.at = At::Colon;
                    }
                    Some(Keep::Value) => {
                        self.wanted = false;
                        self.found.push(s.text());
                        self.at = At::Next;
                    }
                    // A string at the top level ends the value; inside a
                    // nested one, the value goes on.
                    None if self.depth == 0 => self.at = At::Next,
                    None => {}
                }
            }
            _ => s.push_byte(b),
        }
    }
}

/// The rest of a JSON body past the cap, read for `_method` as it goes
/// upstream. A `_method` the route does not allow stops it before the next
/// piece is sent: the upstream gets a cut body, which no server parses, so
/// none honours the override (as the DLP's `block` mode stops a body). The
/// method asked for lands in `stopped`, for the answer to the agent.
pub(crate) struct WatchedJson {
    inner: crate::upstream::Body,
    top: JsonTop,
    refused: Box<dyn Fn(&str) -> bool + Send>,
    stopped: Stopped,
}

/// The method a streamed JSON body asked for that stopped it.
pub(crate) type Stopped = std::sync::Arc<std::sync::Mutex<Option<String>>>;

/// The error a [`WatchedJson`] ends with.
#[derive(Debug, thiserror::Error)]
#[error("stopped: the body's _method field asks for a method the route does not allow")]
pub(crate) struct OverrideStopped;

impl WatchedJson {
    /// Watches all of `inner`; `refused` says which methods stop it.
    pub(crate) fn new(
        inner: crate::upstream::Body,
        refused: Box<dyn Fn(&str) -> bool + Send>,
        stopped: Stopped,
    ) -> Self {
        Self {
            inner,
            top: JsonTop::default(),
            refused,
            stopped,
        }
    }
}

impl hyper::body::Body for WatchedJson {
    type Data = Bytes;
    type Error = crate::upstream::BoxError;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(d) = f.data_ref() {
                this.top.feed(d);
                let asked = this
                    .top
                    .found
                    .iter()
                    .flat_map(|v| v.split(','))
                    .map(str::trim)
                    .find(|m| (this.refused)(m))
                    .map(str::to_owned);
                // Those allowed are done with: a body of any length repeating
                // an allowed `_method` kept each one (~3 bytes held a byte
                // sent: 100 MB streamed took 330 MB).
                this.top.found.clear();
                if let Some(m) = asked {
                    *this.stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(m);
                    return std::task::Poll::Ready(Some(Err(Box::new(OverrideStopped))));
                }
            }
        }
        std::task::Poll::Ready(frame)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether Express's body parser decodes `encoding` before it reads a form
/// or JSON ([`decoded`]).
pub(crate) fn express_decodes(encoding: Option<&str>) -> bool {
    encoding.is_some_and(|e| {
        matches!(
            e.trim().to_ascii_lowercase().as_str(),
            "gzip" | "x-gzip" | "deflate" | "br"
        )
    })
}

/// A body decoded as Express's body parser decodes it before it reads a
/// form or JSON (gzip, deflate, br; Rack, PHP and Spring decode nothing):
/// `Ok(None)` for a body in no such encoding, or one that does not decode
/// (Express refuses it, so it carries no override); `Err(())` when it
/// decodes past `ceiling` bytes.
pub(crate) fn decoded(
    body: &[u8],
    encoding: Option<&str>,
    ceiling: usize,
) -> Result<Option<Vec<u8>>, ()> {
    use std::io::Read;
    let enc = encoding.map(|e| e.trim().to_ascii_lowercase());
    // What decoded before an error counts too: Node's gunzip ends a body
    // at NUL bytes after a member (padding) where flate2 finds no header.
    let read = |r: &mut dyn Read| -> Option<Result<Vec<u8>, ()>> {
        let mut out = Vec::new();
        match r.take(ceiling as u64 + 1).read_to_end(&mut out) {
            _ if out.len() > ceiling => Some(Err(())),
            Ok(_) => Some(Ok(out)),
            Err(_) if out.is_empty() => None,
            Err(_) => Some(Ok(out)),
        }
    };
    let got = match enc.as_deref() {
        Some("gzip") | Some("x-gzip") => read(&mut flate2::read::MultiGzDecoder::new(body)),
        Some("deflate") => read(&mut flate2::read::ZlibDecoder::new(body))
            .or_else(|| read(&mut flate2::read::DeflateDecoder::new(body))),
        Some("br") => read(&mut brotli_decompressor::Decompressor::new(body, 64 * 1024)),
        _ => None,
    };
    got.transpose()
}

/// The value recorded for a `_method` that is not text (an array, an
/// object, a file's bytes): no route's `methods` name it, so it is refused.
const NOT_TEXT: &str = "(not text)";

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(types: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for t in types {
            h.append(header::CONTENT_TYPE, t.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_a_post_with_a_form_or_json_body_is_read() {
        let post = Method::POST;
        let one = |t: &[&str]| kinds(&post, &headers(t));
        assert_eq!(one(&[]), [Kind::Urlencoded]);
        // An empty content-type is none to Rack.
        assert_eq!(one(&[""]), [Kind::Urlencoded]);
        assert_eq!(
            one(&["Application/X-WWW-Form-Urlencoded; charset=utf-8"]),
            [Kind::Urlencoded]
        );
        assert_eq!(
            one(&["multipart/form-data; boundary=\"ab c\""]),
            [Kind::Multipart("ab c".into())]
        );
        assert_eq!(
            one(&["multipart/mixed; boundary=x"]),
            [Kind::Multipart("x".into())]
        );
        // What Rack and PHP take for a boundary where it is no parameter.
        for t in [
            "multipart/form-data, boundary=x",
            "multipart/form-data boundary=x",
            "multipart/form-data; boundary=x; foo",
        ] {
            assert_eq!(one(&[t]), [Kind::Multipart("x".into())], "{t}");
        }
        assert_eq!(one(&["application/vnd.api+json"]), [Kind::Json]);
        assert_eq!(one(&["text/plain", "application/json"]), [Kind::Json]);
        // Laravel reads JSON wherever the header says `/json`; every
        // content-type line counts.
        assert_eq!(
            one(&["application/x-www-form-urlencoded; x=/json"]),
            [Kind::Urlencoded, Kind::Json]
        );
        assert_eq!(
            one(&["application/json", "application/x-www-form-urlencoded"]),
            [Kind::Json, Kind::Urlencoded]
        );
        // Nothing a framework reads a form from.
        assert!(one(&["text/plain"]).is_empty());
        assert!(one(&["multipart/form-data"]).is_empty());
        assert!(one(&["application/octet-stream"]).is_empty());
        // Overrides of other methods are not honoured by the frameworks.
        assert!(kinds(&Method::PUT, &headers(&[])).is_empty());
        assert_eq!(
            kinds(&"post".parse().unwrap(), &headers(&[])),
            [Kind::Urlencoded]
        );
    }

    async fn read(kind: Kind, body: &str) -> Vec<String> {
        methods_in(&kind, Bytes::from(body.to_owned()))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_forms_method_fields_are_read_as_the_frameworks_read_them() {
        let form = Kind::Urlencoded;
        assert_eq!(read(form.clone(), "a=1&_method=DELETE").await, ["DELETE"]);
        // Percent-escapes and `+`, in name and value; every copy of the field.
        assert_eq!(
            read(form.clone(), "%5Fmethod=DEL%45TE&_method=put+x&b=2").await,
            ["DELETE", "put x"]
        );
        // PHP's names: `.method` and ` method` are `_method` to it.
        assert_eq!(read(form.clone(), ".method=DELETE").await, ["DELETE"]);
        assert_eq!(read(form.clone(), "[method=PATCH").await, ["PATCH"]);
        assert_eq!(read(form.clone(), "+_method=PUT").await, ["PUT"]);
        assert_eq!(read(form.clone(), "_method[]=DELETE").await, ["DELETE"]);
        assert!(read(form.clone(), "method=DELETE&x_method=PUT")
            .await
            .is_empty());
        // PHP cuts a name at a NUL; Rack and `qs` drop brackets around it.
        assert_eq!(read(form.clone(), "_method%00x=DELETE").await, ["DELETE"]);
        for name in [
            "[_method",
            "]_method",
            "_method]",
            "[_method]",
            "[[_method]]",
        ] {
            assert_eq!(
                read(form.clone(), &format!("{name}=DELETE")).await,
                ["DELETE"],
                "{name}"
            );
        }

        let multipart = Kind::Multipart("XyZ".into());
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhello\r\n\
                    --XyZ\r\ncontent-disposition: form-data; name=_method\r\n\r\nDELETE\r\n--XyZ--\r\n";
        assert_eq!(read(multipart.clone(), body).await, ["DELETE"]);
        let unreadable = methods_in(&multipart, Bytes::from_static(b"--nope\r\n")).await;
        assert!(unreadable.is_err(), "{unreadable:?}");
        let allowed =
            "--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nPOST\r\n--XyZ--\r\n";
        assert_eq!(read(multipart.clone(), allowed).await, ["POST"]);
        // A `_method` name that is no field's name to multer is one to some
        // server: a second `name` (Rack takes the last), Rack's
        // `Content-ID`, a part after a bare-LF boundary (PHP), after the
        // last boundary (PHP), an escaped or percent-encoded name.
        // Code that mentions a method is no field name.
        let code = "--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.js\"\r\n\r\nobj.method(); self._method; x_method\r\n--XyZ--\r\n";
        assert!(read(multipart.clone(), code).await.is_empty());
        for part in [
            "Content-Disposition: form-data; name=\"a\"; name=\"_method\"\r\n\r\nDELETE",
            "Content-Disposition: form-data; name=\"a\"; name=_method(\r\n\r\nDELETE",
            "Content-Disposition: form-data\r\nContent-ID: _method\r\n\r\nDELETE",
            "Content-Disposition: form-data; name=\"a\"\r\n\r\nx\n--XyZ\r\nContent-Disposition: form-data; name=.method\r\n\r\nDELETE",
            "Content-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--XyZ--\r\n--XyZ\r\nContent-Disposition: form-data; name=_method\r\n\r\nDELETE",
            "Content-Disposition: form-data; name=\"_\\method\"\r\n\r\nDELETE",
            "Content-Disposition: form-data; name*=UTF-8''%5Fmethod\r\n\r\nDELETE",
        ] {
            let body = format!("--XyZ\r\n{part}\r\n--XyZ--\r\n");
            let read = methods_in(&multipart, Bytes::from(body)).await;
            assert!(read.is_err(), "{part}: {read:?}");
        }

        assert_eq!(
            read(
                Kind::Json,
                r#"{"a":{"_method":"GET"},"\u005fmethod":"DELETE"}"#
            )
            .await,
            ["DELETE"]
        );
        assert_eq!(
            read(Kind::Json, r#"{"_method":["DELETE"]}"#).await,
            [NOT_TEXT]
        );
        assert!(read(Kind::Json, r#"["_method","DELETE"]"#).await.is_empty());
        assert!(read(Kind::Json, "not json _method=DELETE").await.is_empty());
        // What PHP's and Node's parsers take and `serde_json` does not.
        let deep = format!(
            r#"{{"x":{}{},"_method":"DELETE"}}"#,
            "[".repeat(300),
            "]".repeat(300)
        );
        for body in [
            deep.as_str(),
            r#"{"n":1e999,"_method":"DELETE"}"#,
            r#"{"\ud800":"\udc00x","_method":"DELETE"}"#,
            r#"{"_method":"DELETE","_method":"POST"}"#,
        ] {
            assert_eq!(
                read(Kind::Json, body).await.first().map(String::as_str),
                Some("DELETE"),
                "{body}"
            );
        }
        assert_eq!(
            read(
                Kind::Json,
                r#" {"a":"}\"_method\":1","_method" : "P\u004fST"} "#
            )
            .await,
            ["POST"]
        );
    }

    /// A JSON body is read the same a byte at a time as whole: a body that
    /// streams past the cap arrives in pieces cut anywhere.
    #[test]
    fn json_read_in_pieces_finds_what_it_finds_whole() {
        let deep = format!(
            r#"{{"x":{}1{},"_method":"DELETE"}}"#,
            "[".repeat(300),
            "]".repeat(300)
        );
        for body in [
            r#"{"a":{"_method":"GET"},"\u005fmethod":"DEL\u0045TE"}"#,
            r#"{"s":"a\"b\\","_method":["x"],"n":-1.5e3,"_method":true}"#,
            "\u{feff}{ \"_method\"\n:\t\"PATCH\" }",
            r#"{"\ud83d\ude00":1,".method":"PUT"}"#,
            r#"{"a":"}\"_method\":1"}"#,
            deep.as_str(),
        ] {
            let mut whole = JsonTop::default();
            whole.feed(body.as_bytes());
            let mut pieces = JsonTop::default();
            for b in body.as_bytes() {
                pieces.feed(std::slice::from_ref(b));
            }
            assert_eq!(whole.found, pieces.found, "{body}");
            assert!(
                !whole.found.is_empty() || body.starts_with(r#"{"a":"}"#),
                "{body}"
            );
        }
    }

    #[test]
    fn compressed_bodies_are_decoded_as_express_decodes_them() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"_method=DELETE").unwrap();
        let gz = gz.finish().unwrap();
        assert!(express_decodes(Some(" GZip ")) && !express_decodes(Some("zstd")));
        assert_eq!(
            decoded(&gz, Some("gzip"), 100),
            Ok(Some(b"_method=DELETE".to_vec()))
        );
        assert_eq!(decoded(&gz, Some("gzip"), 10), Err(()));
        // Not what it says it is: Express refuses it, so it asks for nothing.
        assert_eq!(decoded(b"_method=DELETE", Some("gzip"), 100), Ok(None));
        assert_eq!(decoded(&gz, None, 100), Ok(None));
        // Node ignores NUL padding after a gzip member; flate2 calls it a
        // bad header. What decoded before it is read.
        let padded = [gz.as_slice(), b"\0\0\0"].concat();
        assert_eq!(
            decoded(&padded, Some("gzip"), 100),
            Ok(Some(b"_method=DELETE".to_vec()))
        );
    }

    #[test]
    fn json_in_a_charset_express_decodes_is_not_read_as_sent() {
        let json = |t: &str| unread_json_charset(&headers(&[t]));
        for t in [
            "application/json; charset=utf-16le",
            "application/json; charset=UTF-16",
            "application/json; charset=\"utf-7\"",
            "application/json; charset=\"utf\\-16be\"",
            "application/json; charset=utf-8; charset=utf-16le",
        ] {
            assert!(json(t).is_some(), "{t}");
        }
        for t in [
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=\"UTF-8\"",
            "application/json; charset=iso-8859-1",
        ] {
            assert_eq!(json(t), None, "{t}");
        }
    }

    /// A streamed JSON body repeating an allowed `_method` keeps none of
    /// them (each was kept: a body's length in memory, three times over),
    /// and a refused one after them still stops it.
    #[tokio::test]
    async fn a_streamed_body_keeps_no_allowed_method() {
        use http_body_util::BodyExt;
        let piece = Bytes::from(r#""_method":"POST","#.repeat(1000));
        let mut frames = vec![Bytes::from_static(b"{")];
        frames.extend(std::iter::repeat_n(piece, 100));
        frames.push(Bytes::from_static(br#""_method":"DELETE"}"#));
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(
            frames
                .into_iter()
                .map(|b| Ok::<_, crate::upstream::BoxError>(hyper::body::Frame::data(b))),
        ))
        .boxed_unsync();
        let stopped = Stopped::default();
        let mut w = WatchedJson::new(body, Box::new(|m| m != "POST"), stopped.clone());
        let mut most = 0;
        let mut failed = false;
        while let Some(f) = w.frame().await {
            most = most.max(w.top.found.len());
            if f.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "a refused _method went through");
        assert_eq!(stopped.lock().unwrap().as_deref(), Some("DELETE"));
        assert_eq!(most, 0, "allowed _method values kept");
    }
}
