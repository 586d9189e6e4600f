//! Credentials an upstream sends back. An echo service, or an error page
//! that quotes the request (`invalid token: Bearer sk-…`), would hand the
//! agent the very value the proxy injected so that it never holds it. On a
//! route that injects one, the response's headers, body and trailers are
//! searched for the tokens filled into its headers, and each copy is
//! overwritten with `*` of the same length (so `Content-Length` and
//! framing still hold) before the agent sees it. Compressed bytes cannot
//! be searched, so such routes ask the upstream for none
//! (`accept-encoding: identity`, in proxy.rs).

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};

/// Values shorter than this are not searched for: a short static value
/// would mask ordinary text. Real credentials are far longer.
const MIN_LEN: usize = 8;

/// The byte strings a route's responses must not carry: each token its
/// headers are filled with (a header value holds its token, so the token
/// is enough), also with `/` written `\/` (JSON encoders such as PHP's
/// escape it).
#[derive(Default)]
pub(crate) struct Secrets {
    /// Each value's searcher, built once (building one per search cost
    /// more than the search of a 1 KiB answer).
    needles: Vec<memchr::memmem::Finder<'static>>,
    /// The shortest value's length: shorter text holds none.
    min_len: usize,
    /// Each value in lower case: a header's name (lower case as hyper
    /// gives it) is searched for these.
    lower: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} values)", self.needles.len())
    }
}

impl Secrets {
    /// From the tokens a route's headers are filled with.
    pub(crate) fn new<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut needles: Vec<Vec<u8>> = Vec::new();
        for v in values {
            let escaped = v.contains(&b'/').then(|| {
                v.split(|&b| b == b'/')
                    .collect::<Vec<_>>()
                    .join(&b"\\/"[..])
            });
            for n in std::iter::once(v.to_vec()).chain(escaped) {
                if n.len() >= MIN_LEN && !needles.contains(&n) {
                    needles.push(n);
                }
            }
        }
        // Longest first: where one value holds another (two tokens on a
        // route), the longer is masked whole and the shorter not counted
        // again inside it.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        Self {
            min_len: needles.iter().map(Vec::len).min().unwrap_or(0),
            lower: needles.iter().map(|n| n.to_ascii_lowercase()).collect(),
            needles: needles
                .iter()
                .map(|n| memchr::memmem::Finder::new(n).into_owned())
                .collect(),
        }
    }

    /// Whether there is anything to search for.
    pub(crate) fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// Whether `buf` holds a whole value.
    fn any_in(&self, buf: &[u8]) -> bool {
        buf.len() >= self.min_len && self.needles.iter().any(|f| f.find(buf).is_some())
    }

    /// Overwrites every copy of a value in `buf` with `*`; how many.
    pub(crate) fn mask(&self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        for f in &self.needles {
            let len = f.needle().len();
            let mut from = 0;
            while let Some(i) = f.find(&buf[from..]) {
                buf[from + i..from + i + len].fill(b'*');
                from += i + len;
                n += 1;
            }
        }
        n
    }

    /// The longest end of `buf` that is the start of a value (but not a
    /// whole one): it may be completed by what comes next. Only where the
    /// value's first byte occurs near the end is it compared.
    fn partial_tail(&self, buf: &[u8]) -> usize {
        let mut longest = 0;
        for f in &self.needles {
            let needle = f.needle();
            let window = buf.len().saturating_sub(needle.len() - 1);
            for i in memchr::memchr_iter(needle[0], &buf[window..]) {
                let tail = &buf[window + i..];
                if needle.starts_with(tail) {
                    longest = longest.max(tail.len());
                    // The earliest start is the longest end.
                    break;
                }
            }
        }
        longest
    }

    /// Masks the values in an HTTP/1 reason phrase (`HTTP/1.1 401 Bearer
    /// sk-…`), which hyper keeps in the extensions and writes to an HTTP/1
    /// agent; how many copies.
    pub(crate) fn mask_reason(&self, ext: &mut http::Extensions) -> usize {
        let Some(r) = ext.get::<hyper::ext::ReasonPhrase>() else {
            return 0;
        };
        if !self.any_in(r.as_bytes()) {
            return 0;
        }
        let mut masked = r.as_bytes().to_vec();
        let n = self.mask(&mut masked);
        match hyper::ext::ReasonPhrase::try_from(masked) {
            Ok(m) => {
                ext.insert(m);
            }
            Err(_) => {
                ext.remove::<hyper::ext::ReasonPhrase>();
            }
        }
        n
    }

    /// Masks the values in each header value; how many copies.
    /// A header whose name holds a value (in any case: names arrive in
    /// lower case) is dropped, each line counted as a copy.
    pub(crate) fn mask_headers(&self, headers: &mut HeaderMap) -> usize {
        let mut n = 0;
        let named: Vec<http::HeaderName> = headers
            .keys()
            .filter(|k| {
                let k = k.as_str().as_bytes();
                k.len() >= self.min_len
                    && self
                        .lower
                        .iter()
                        .any(|l| memchr::memmem::find(k, l).is_some())
            })
            .cloned()
            .collect();
        for k in named {
            n += headers.get_all(&k).iter().count();
            headers.remove(&k);
        }
        for v in headers.values_mut() {
            if !self.any_in(v.as_bytes()) {
                continue;
            }
            let mut masked = v.as_bytes().to_vec();
            n += self.mask(&mut masked);
            if let Ok(m) = HeaderValue::from_bytes(&masked) {
                *v = m;
            }
        }
        n
    }
}

/// A response body's pieces, searched as they stream. The end of a piece
/// that could be the start of a value waits for the next piece (or the
/// body's end), so a value split across pieces is still found; a piece
/// with no such end goes on at once, as it came (SSE events end in a
/// newline, which starts no credential).
#[derive(Debug)]
pub(crate) struct Masker {
    secrets: std::sync::Arc<Secrets>,
    carry: BytesMut,
    /// Copies masked so far.
    pub(crate) masked: usize,
}

impl Masker {
    pub(crate) fn new(secrets: std::sync::Arc<Secrets>) -> Self {
        Self {
            secrets,
            carry: BytesMut::new(),
            masked: 0,
        }
    }

    /// What of `data` (and of what waited before it) may go now.
    pub(crate) fn feed(&mut self, data: Bytes) -> Bytes {
        let s = &self.secrets;
        if self.carry.is_empty() && s.partial_tail(&data) == 0 && !s.any_in(&data) {
            // The common case: nothing to change, nothing to hold.
            return data;
        }
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(&data);
        self.masked += s.mask(&mut buf);
        let hold = s.partial_tail(&buf);
        let out = buf.split_to(buf.len() - hold);
        self.carry = buf;
        out.freeze()
    }

    /// The values it masks.
    pub(crate) fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Whether nothing waits.
    pub(crate) fn is_idle(&self) -> bool {
        self.carry.is_empty()
    }

    /// What still waits at the body's end (no whole value: it would have
    /// been masked).
    pub(crate) fn finish(&mut self) -> Option<Bytes> {
        (!self.carry.is_empty()).then(|| std::mem::take(&mut self.carry).freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const TOKEN: &[u8] = b"sk-real-0123456789/abcdef";
    const HEADER: &[u8] = b"Bearer sk-real-0123456789/abcdef";

    fn secrets() -> Arc<Secrets> {
        Arc::new(Secrets::new([TOKEN, &b"short"[..]]))
    }

    /// Feeds `pieces` through a masker and returns what went out, piece by
    /// piece, and the copies masked.
    fn through(pieces: &[&[u8]]) -> (Vec<Vec<u8>>, usize) {
        let mut m = Masker::new(secrets());
        let mut out: Vec<Vec<u8>> = pieces
            .iter()
            .map(|p| m.feed(Bytes::copy_from_slice(p)).to_vec())
            .collect();
        out.extend(m.finish().map(|b| b.to_vec()));
        (out, m.masked)
    }

    #[test]
    fn values_are_masked_whole_pieces_and_length_kept() {
        let body = b"{\"error\":\"invalid header: Bearer sk-real-0123456789/abcdef\"}";
        let (out, n) = through(&[body]);
        let all = out.concat();
        assert_eq!(all.len(), body.len());
        assert!(!all.windows(TOKEN.len()).any(|w| w == TOKEN));
        assert!(n >= 1);
        assert_eq!(
            String::from_utf8_lossy(&all),
            format!(
                "{{\"error\":\"invalid header: Bearer {}\"}}",
                "*".repeat(TOKEN.len())
            )
        );
        // As PHP's json_encode writes it, `/` escaped.
        let (out, n) = through(&[br#"{"k":"sk-real-0123456789\/abcdef"}"#]);
        assert_eq!(n, 1);
        assert!(!out.concat().windows(10).any(|w| w == b"0123456789"));
        // Too short to search for: left alone.
        assert_eq!(through(&[b"short"]), (vec![b"short".to_vec()], 0));
    }

    #[test]
    fn a_value_split_across_pieces_is_masked_and_nothing_else_waits() {
        let (a, b) = TOKEN.split_at(7);
        let (out, n) = through(&[b"x=", a, b, b" end\n\n"]);
        assert_eq!(n, 1);
        let all = out.concat();
        assert_eq!(
            all,
            format!("x={} end\n\n", "*".repeat(TOKEN.len())).as_bytes()
        );
        // The start of the value waited; the pieces before it did not.
        assert_eq!(out[0], b"x=");
        assert!(out[1].is_empty());
        // Pieces that end in no value's start go on whole and at once.
        let (out, n) = through(&[b"data: one\n\n", b"data: two\n\n"]);
        assert_eq!(n, 0);
        assert_eq!(
            out,
            vec![b"data: one\n\n".to_vec(), b"data: two\n\n".to_vec()]
        );
        // A start that is not completed goes at the end, unchanged.
        let (out, _) = through(&[b"sk-re"]);
        assert_eq!(out.concat(), b"sk-re");
    }

    #[test]
    fn header_values_are_masked() {
        let mut h = HeaderMap::new();
        h.insert("x-echo", HeaderValue::from_bytes(HEADER).unwrap());
        h.insert("x-other", HeaderValue::from_static("fine"));
        assert_eq!(secrets().mask_headers(&mut h), 1);
        assert_eq!(
            h["x-echo"].as_bytes(),
            format!("Bearer {}", "*".repeat(TOKEN.len())).as_bytes()
        );
        assert_eq!(h["x-other"], "fine");
    }

    /// Texts of a small alphabet, full of copies and of starts of
    /// self-overlapping values (`abab…`, `aaa…`), cut into pieces at random:
    /// what goes out, piece by piece, is what masking the whole text gives
    /// (holds no value, only `*` changed), and what waits is never more
    /// than a value's start.
    #[test]
    fn any_cut_of_any_text_gives_what_the_whole_text_gives() {
        let values: [&[&[u8]]; 4] = [
            &[b"abababab"],
            &[b"aaaaaaaaa"],
            &[b"abcabcab", b"cabcabcabx"],
            &[b"ab/ab/ab/", b"ba/ba/ba"],
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for vs in values {
            let s = Arc::new(Secrets::new(vs.iter().copied()));
            let longest = vs.iter().map(|v| v.len() + 4).max().unwrap();
            for _ in 0..3000 {
                let mut text = Vec::new();
                while text.len() < 60 {
                    match rnd(4) {
                        0 => text.extend_from_slice(vs[rnd(vs.len())]),
                        1 => {
                            let v = vs[rnd(vs.len())];
                            text.extend_from_slice(&v[..rnd(v.len())]);
                        }
                        _ => text.push(b"abc/\\x"[rnd(6)]),
                    }
                }
                let mut whole = text.clone();
                s.mask(&mut whole);
                let mut m = Masker::new(s.clone());
                let mut out = Vec::new();
                let mut at = 0;
                while at < text.len() {
                    let end = (at + 1 + rnd(12)).min(text.len());
                    out.extend_from_slice(&m.feed(Bytes::copy_from_slice(&text[at..end])));
                    assert!(m.carry.len() < longest, "{:?}", m.carry);
                    assert!(
                        vs.iter().any(|v| v.starts_with(&m.carry))
                            || m.carry.is_empty()
                            || s.partial_tail(&m.carry) == m.carry.len(),
                        "held more than a start: {:?}",
                        m.carry
                    );
                    at = end;
                }
                out.extend(m.finish().unwrap_or_default());
                let what = String::from_utf8_lossy(&text);
                if vs.len() == 1 {
                    assert_eq!(out, whole, "text {what:?}");
                } else {
                    // Two values that overlap each other (no two real
                    // tokens do) may be masked in another order.
                    assert_eq!(out.len(), text.len());
                    assert!(
                        out.iter().zip(&text).all(|(o, t)| o == t || *o == b'*'),
                        "text {what:?}"
                    );
                }
                for v in vs {
                    assert!(!out.windows(v.len()).any(|w| w == *v));
                }
            }
        }
    }
}
