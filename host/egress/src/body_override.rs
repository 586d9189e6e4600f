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

/// The kind of `_method`-bearing body a request has, if it is one a
/// framework would read an override from: only a `POST` (Rack, Symfony and
/// Spring honour an override of `POST` alone).
pub(crate) fn kind(method: &Method, headers: &HeaderMap) -> Option<Kind> {
    if !method.as_str().eq_ignore_ascii_case("POST") {
        return None;
    }
    // A second content-type line is for the server to choose between; any
    // of them that could carry a form makes this one.
    let mut types = headers.get_all(header::CONTENT_TYPE).iter().peekable();
    if types.peek().is_none() {
        return Some(Kind::Urlencoded);
    }
    types.find_map(|v| {
        let t = String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase();
        let media = t.split(';').next().unwrap_or("").trim();
        if media.starts_with("application/x-www-form-urlencoded") {
            Some(Kind::Urlencoded)
        } else if media.starts_with("multipart/") {
            // Without a boundary no server can split it into fields.
            let m = String::from_utf8_lossy(v.as_bytes())
                .parse::<mime::Mime>()
                .ok()?;
            let b = m.get_param(mime::BOUNDARY)?;
            Some(Kind::Multipart(b.as_str().to_owned()))
        } else if t.contains("/json") || t.contains("+json") {
            Some(Kind::Json)
        } else {
            None
        }
    })
}

/// Whether a form field's name is `_method` to some framework: as sent
/// (Rack, Spring), or as PHP names its `$_POST` entries, which Laravel and
/// Symfony read (leading spaces dropped, ` ` and `.` read as `_`, and a
/// `[` that no `]` closes as well: `.method` and `[method` are `_method`
/// to them). `_method[…]` (an array to PHP and Rack) counts too.
fn is_override_field(name: &str) -> bool {
    let name = name.trim_start_matches(' ');
    let base = match name.split_once('[') {
        Some((base, rest)) if rest.contains(']') => base,
        _ => name,
    };
    let php: String = base
        .chars()
        .map(|c| if matches!(c, ' ' | '.' | '[') { '_' } else { c })
        .collect();
    php == "_method"
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
            Ok(found)
        }
        // Invalid JSON is no form to Laravel either (an empty input bag).
        Kind::Json => Ok(match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(serde_json::Value::Object(fields)) => fields
                .iter()
                .filter(|(k, _)| is_override_field(k))
                .map(|(_, v)| v.as_str().unwrap_or(NOT_TEXT).to_owned())
                .collect(),
            _ => Vec::new(),
        }),
    }
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
        assert_eq!(kind(&post, &headers(&[])), Some(Kind::Urlencoded));
        assert_eq!(
            kind(
                &post,
                &headers(&["Application/X-WWW-Form-Urlencoded; charset=utf-8"])
            ),
            Some(Kind::Urlencoded)
        );
        assert_eq!(
            kind(&post, &headers(&["multipart/form-data; boundary=\"ab c\""])),
            Some(Kind::Multipart("ab c".into()))
        );
        assert_eq!(
            kind(&post, &headers(&["multipart/mixed; boundary=x"])),
            Some(Kind::Multipart("x".into()))
        );
        assert_eq!(
            kind(&post, &headers(&["application/vnd.api+json"])),
            Some(Kind::Json)
        );
        assert_eq!(
            kind(&post, &headers(&["text/plain", "application/json"])),
            Some(Kind::Json)
        );
        // Nothing a framework reads a form from.
        assert_eq!(kind(&post, &headers(&["text/plain"])), None);
        assert_eq!(kind(&post, &headers(&["multipart/form-data"])), None);
        assert_eq!(kind(&post, &headers(&["application/octet-stream"])), None);
        // Overrides of other methods are not honoured by the frameworks.
        assert_eq!(kind(&Method::PUT, &headers(&[])), None);
        assert_eq!(
            kind(&"post".parse().unwrap(), &headers(&[])),
            Some(Kind::Urlencoded)
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

        let multipart = Kind::Multipart("XyZ".into());
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhello\r\n\
                    --XyZ\r\ncontent-disposition: form-data; name=_method\r\n\r\nDELETE\r\n--XyZ--\r\n";
        assert_eq!(read(multipart.clone(), body).await, ["DELETE"]);
        let unreadable = methods_in(&multipart, Bytes::from_static(b"--nope\r\n")).await;
        assert!(unreadable.is_err(), "{unreadable:?}");

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
    }
}
