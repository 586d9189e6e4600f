//! Finding a credential in what the agent (or `bottle plan`) sees, in the
//! forms a careless provider may have written it: as is, base64 (standard
//! or URL alphabet, padded or not, at any alignment inside a longer
//! encoding), hex in either case, JSON-escaped (`\u002d` for any
//! character, `\/`) or percent-encoded. Defence in depth for
//! [`crate::plan`]: a provider must never put a real value there at all.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;

/// Values shorter than this are not looked for: too short to be a
/// credential, and they would match by chance.
pub const MIN_LEN: usize = 8;

/// The encoded forms of one secret value.
#[derive(Debug)]
pub struct Forms {
    needles: Vec<Vec<u8>>,
}

/// The characters of `base64(k zero bytes ++ value)` that depend on the
/// value's bytes alone: what any base64 text holding the value at an offset
/// of `k` modulo 3 contains, whatever surrounds it.
fn base64_cores(value: &[u8], engine: &impl Engine) -> Vec<Vec<u8>> {
    (0..3usize)
        .map(|k| {
            let mut buf = vec![0u8; k];
            buf.extend_from_slice(value);
            let enc = engine.encode(&buf).into_bytes();
            let start = (8 * k).div_ceil(6);
            let end = (8 * (k + value.len()) / 6).min(enc.len());
            enc[start..end].to_vec()
        })
        .collect()
}

impl Forms {
    /// The forms of `value`.
    pub fn of(value: &str) -> Self {
        let v = value.as_bytes();
        let mut needles = vec![v.to_vec()];
        needles.extend(base64_cores(v, &STANDARD_NO_PAD));
        needles.extend(base64_cores(v, &URL_SAFE_NO_PAD));
        needles.push(hex::encode(v).into_bytes());
        needles.push(hex::encode_upper(v).into_bytes());
        needles.sort();
        needles.dedup();
        Self { needles }
    }

    /// Whether `text` holds the value in any of its forms, also after
    /// undoing JSON escapes and percent-encoding (in either order).
    pub fn found_in(&self, text: &[u8]) -> bool {
        let json = json_unescape(text);
        let pct = percent_decode(text);
        [
            percent_decode(&json),
            json_unescape(&pct),
            json,
            pct,
            text.to_vec(),
        ]
        .iter()
        .any(|h| self.needles.iter().any(|n| contains(h, n)))
    }

    /// [`Forms::found_in`] for a file as a provider sent it: base64 files
    /// are looked at decoded as well.
    pub fn found_in_file(&self, contents: &str, base64: bool) -> bool {
        if self.found_in(contents.as_bytes()) {
            return true;
        }
        if !base64 {
            return false;
        }
        let compact: Vec<u8> = contents
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        [STANDARD.decode(&compact), STANDARD_NO_PAD.decode(&compact)]
            .into_iter()
            .flatten()
            .any(|bytes| self.found_in(&bytes))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn hex_digit(b: u8) -> Option<u32> {
    (b as char).to_digit(16)
}

/// JSON string escapes undone wherever they appear (`\uXXXX`, surrogate
/// pairs, `\/`, `\n` …); anything that is not a valid escape is kept.
fn json_unescape(s: &[u8]) -> Vec<u8> {
    let unit = |at: usize| -> Option<u32> {
        if s.get(at) != Some(&b'\\') || s.get(at + 1) != Some(&b'u') {
            return None;
        }
        let digits = s.get(at + 2..at + 6)?;
        digits
            .iter()
            .try_fold(0u32, |acc, &b| Some(acc * 16 + hex_digit(b)?))
    };
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' {
            if let Some(u) = unit(i) {
                let (c, used) = match (u, unit(i + 6)) {
                    (0xD800..=0xDBFF, Some(lo @ 0xDC00..=0xDFFF)) => (
                        char::from_u32(0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00)),
                        12,
                    ),
                    _ => (char::from_u32(u), 6),
                };
                if let Some(c) = c {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    i += used;
                    continue;
                }
            }
            let simple = match s.get(i + 1) {
                Some(b'"') => Some(b'"'),
                Some(b'\\') => Some(b'\\'),
                Some(b'/') => Some(b'/'),
                Some(b'b') => Some(8),
                Some(b'f') => Some(12),
                Some(b'n') => Some(b'\n'),
                Some(b'r') => Some(b'\r'),
                Some(b't') => Some(b'\t'),
                _ => None,
            };
            if let Some(b) = simple {
                out.push(b);
                i += 2;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// `%XX` sequences decoded wherever they appear (`+` is kept: base64 uses it).
fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            if let (Some(h), Some(l)) = (
                s.get(i + 1).copied().and_then(hex_digit),
                s.get(i + 2).copied().and_then(hex_digit),
            ) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE;

    const SECRET: &str = "sk-ant-oat01-Zq9/x+Lm_42-canary";

    fn json_u(s: &str) -> String {
        s.chars().map(|c| format!("\\u{:04x}", c as u32)).collect()
    }

    #[test]
    fn every_common_encoding_is_found() {
        let f = Forms::of(SECRET);
        let v = SECRET.as_bytes();
        let wrapped = format!("{{\"token\":\"{SECRET}\"}}");
        let forms = [
            SECRET.to_string(),
            STANDARD.encode(v),
            STANDARD_NO_PAD.encode(v),
            URL_SAFE.encode(v),
            URL_SAFE_NO_PAD.encode(v),
            // At every alignment inside a longer encoding.
            STANDARD.encode(&wrapped),
            STANDARD.encode(format!("x{wrapped}")),
            URL_SAFE_NO_PAD.encode(format!("xy{wrapped}")),
            hex::encode(v),
            hex::encode_upper(v),
            serde_json::to_string(SECRET).unwrap(),
            SECRET.replace('/', "\\/"),
            SECRET.replace('-', "\\u002d"),
            SECRET.replace('-', "\\u002D"),
            json_u(SECRET),
            SECRET
                .bytes()
                .map(|b| format!("%{b:02X}"))
                .collect::<String>(),
            SECRET.replace('/', "%2f").replace('+', "%2B"),
        ];
        for form in forms {
            let text = format!("prefix {form} suffix");
            assert!(f.found_in(text.as_bytes()), "not found: {form}");
        }
        // A surrogate pair spelled out, around the value.
        let astral = format!("\\ud83d\\ude00{}", json_u(SECRET));
        assert!(f.found_in(astral.as_bytes()));
    }

    #[test]
    fn base64_files_are_looked_at_decoded() {
        let f = Forms::of(SECRET);
        let inner = STANDARD.encode(format!("zz{SECRET}"));
        // A base64 file whose bytes hold the value base64-encoded again.
        let file = STANDARD.encode(format!("token={inner}\n"));
        assert!(f.found_in_file(&file, true));
        let json_in_file = STANDARD.encode(json_u(SECRET));
        assert!(f.found_in_file(&json_in_file, true));
        assert!(!f.found_in_file("bm90aGluZyBoZXJl", true));
    }

    #[test]
    fn other_text_is_not_a_match() {
        let f = Forms::of(SECRET);
        for text in [
            "sk-ant-oat01-bot-bottle-dummy-access-token",
            "{\"token\":\"sk-ant-oat01-Zq9/x+Lm_42-canar\"}",
            "\\u00zz %zz %4",
            "",
        ] {
            assert!(!f.found_in(text.as_bytes()), "{text}");
        }
    }
}
