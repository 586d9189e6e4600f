//! Just enough JWT for dummies: assemble unsigned-looking tokens and read a
//! token's claims. Nothing here verifies a signature — Codex does not either;
//! it only reads the claims of the tokens in its `auth.json`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

/// The header every dummy carries. `kid` marks it as ours for anyone who
/// decodes one while debugging.
const DUMMY_HEADER: &str = r#"{"alg":"RS256","typ":"JWT","kid":"bot-bottle-dummy"}"#;

/// The signature part of every dummy: three base64url parts are what Codex
/// checks for; the signature is never verified by the client.
const DUMMY_SIGNATURE: &[u8] = b"bot-bottle-dummy-signature";

/// `base64url(header).base64url(claims).base64url(signature)`, no padding.
pub(crate) fn encode_dummy(claims: &Value) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(DUMMY_HEADER),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(DUMMY_SIGNATURE),
    )
}

/// The claims of a JWT, or `None` when `token` is not three non-empty
/// base64url parts whose middle one is a JSON object. Never says why in a way
/// that could quote the token.
pub(crate) fn claims(token: &str) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || header.is_empty() || payload.is_empty() || signature.is_empty() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = encode_dummy(&serde_json::json!({"exp": 42, "x": "y"}));
        assert_eq!(t.split('.').count(), 3);
        let c = claims(&t).unwrap();
        assert_eq!(c["exp"], 42);
        assert!(!t.contains('='), "no padding");
    }

    #[test]
    fn rejects_non_jwts() {
        for bad in [
            "",
            "a.b",
            "a..c",
            "a.b.c.d",
            "abc",
            "a.!!!.c",
            "a.bm90IGpzb24.c",
        ] {
            assert!(claims(bad).is_none(), "{bad}");
        }
        // A JSON payload that is not an object.
        let t = format!("h.{}.s", URL_SAFE_NO_PAD.encode("[1]"));
        assert!(claims(&t).is_none());
    }

    #[test]
    fn accepts_padded_payloads() {
        let t = format!(
            "h.{}.s",
            base64::engine::general_purpose::URL_SAFE.encode(r#"{"exp":1}"#)
        );
        assert_eq!(claims(&t).unwrap()["exp"], 1);
    }
}
