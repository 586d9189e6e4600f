//! The DLP stage: scans what the agent sends (URL, headers, body) for
//! secret-shaped values, **before** the proxy injects anything, so it sees
//! only dummies plus what the agent really tries to send.
//!
//! Rules: the high-precision, prefix-anchored rules of the gitleaks rule set
//! (MIT, <https://github.com/gitleaks/gitleaks>, `config/gitleaks.toml`),
//! transcribed to Rust `regex` syntax, plus one literal rule per configured
//! real token (a real token leaving the bottle means it leaked into it).
//! No crate on crates.io offered a maintained rule set usable as a library
//! (see docs/egress.md); entropy-only and keyword-context rules of gitleaks are
//! left out because they misfire on ordinary API traffic.

use std::io::Read;

use http::HeaderMap;
use regex::bytes::{Regex, RegexBuilder};

use crate::config::{DlpConfig, DlpMode, ProxyConfig};

/// `(rule id, pattern)`, after gitleaks' ids.
pub(crate) const RULES: &[(&str, &str)] = &[
    (
        "aws-access-token",
        r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b",
    ),
    ("github-pat", r"ghp_[0-9a-zA-Z]{36}"),
    ("github-fine-grained-pat", r"github_pat_\w{82}"),
    ("github-oauth", r"gho_[0-9a-zA-Z]{36}"),
    ("github-app-token", r"(?:ghu|ghs)_[0-9a-zA-Z]{36}"),
    ("github-refresh-token", r"ghr_[0-9a-zA-Z]{36}"),
    ("gitlab-pat", r"glpat-[\w-]{20}"),
    (
        "slack-bot-token",
        r"xoxb-[0-9]{10,13}-[0-9]{10,13}[a-zA-Z0-9-]*",
    ),
    (
        "slack-user-token",
        r"xox[pe](?:-[0-9]{10,13}){3}-[a-zA-Z0-9-]{28,34}",
    ),
    ("slack-app-token", r"(?i)xapp-\d-[A-Z0-9]+-\d+-[a-z0-9]+"),
    (
        "stripe-access-token",
        r"\b(?:sk|rk)_(?:test|live|prod)_[a-zA-Z0-9]{10,99}\b",
    ),
    (
        "openai-api-key",
        r"\bsk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,}|\bsk-[a-zA-Z0-9]{20}T3BlbkFJ[a-zA-Z0-9]{20}",
    ),
    (
        "anthropic-api-key",
        r"\bsk-ant-(?:api03|admin01)-[a-zA-Z0-9_\-]{80,}",
    ),
    ("gcp-api-key", r"\bAIza[\w-]{35}\b"),
    (
        "private-key",
        // gitleaks bounds the label at 100; unbounded it is the same
        // rule for real keys, and text full of `-----BEGIN` no longer
        // costs a state per start (2.6 against 400 MB/s).
        r"-----BEGIN[ A-Z0-9_-]*PRIVATE KEY(?: BLOCK)?-----",
    ),
    ("huggingface-access-token", r"\bhf_[a-zA-Z]{34}\b"),
    ("npm-access-token", r"\bnpm_[a-zA-Z0-9]{36}\b"),
    ("pypi-upload-token", r"pypi-AgEIcHlwaS5vcmc[\w-]{50,}"),
    ("sendgrid-api-token", r"\bSG\.[\w-]{22}\.[\w-]{43}\b"),
    ("digitalocean-pat", r"\bdop_v1_[a-f0-9]{64}\b"),
];

/// Overlap of a stream scan at least: the longest minimal match of the
/// rules above (a fine-grained GitHub token, 93 bytes; a private-key header
/// with a label as long as gitleaks allows, ~130), with room, written
/// with every byte escaped as `\uXXXX` (six bytes each, see [`unescaped`]).
const MIN_OVERLAP: usize = 1024;

/// Bytes an escape may take for one byte it stands for (`\u0041`).
const ESCAPE_GROWTH: usize = 6;

/// Bytes of a stream, arrived at once in many small pieces, that are
/// gathered and scanned as one at most: a request body's pieces past the
/// cap in `block` mode (`dlp_body::ScannedBody`), the agent's small
/// WebSocket frames (`ws`). Each scan covers the overlap kept from the one
/// before as well, so one scan per tiny piece cost ~1000 times the piece;
/// the bound keeps one scan short enough for the worker thread.
pub(crate) const COALESCE_BYTES: usize = 64 * 1024;

/// The compiled rules. Each rule is its own regex, searched on its own: one
/// `RegexSet` for all (one pass) runs at ~550 MB/s on ordinary text but at
/// 6–13 MB/s on text an agent can craft, where a rule's prefix recurs
/// inside the counted class after it (`github_pat_` inside `\w{82}`): the
/// set's lazy DFA tracks every start at once and thrashes its cache (and
/// keeps what it thrashed, so ordinary text after it scanned at 7.5 MB/s).
/// A single regex with a literal prefix finds candidates with a prefilter
/// and checks each from its start: 250 MB/s or more on every such text
/// tried, faster on ordinary text, and a few microseconds for a 4 KiB
/// head of any text (`bot-bottle-bench-dlp`).
/// `Clone` gives each worker thread its own copy: a cloned `Regex` shares
/// the compiled rules but has its own pool of search caches, and a regex
/// used from a thread other than its first goes through a slower, shared
/// path of that pool on every search (~2% of the proxy's CPU per request
/// with two workers sharing one).
#[derive(Clone)]
pub(crate) struct Dlp {
    pub(crate) mode: DlpMode,
    pub(crate) max_body: usize,
    /// Bytes kept between the pieces of a stream scan: longer than any
    /// rule's shortest match and than every configured token.
    pub(crate) overlap: usize,
    rules: Vec<Regex>,
    names: Vec<String>,
    /// What this `Dlp` (and its clones) has scanned, for tests of what a
    /// stream's scanning costs.
    #[cfg(test)]
    pub(crate) scanned: std::sync::Arc<ScanCount>,
}

/// Calls of [`Dlp::scan_escaped`] (every scan) and the bytes they were given.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct ScanCount {
    pub(crate) scans: std::sync::atomic::AtomicUsize,
    pub(crate) bytes: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
impl ScanCount {
    /// `(scans, bytes)` so far.
    pub(crate) fn get(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.scans.load(Relaxed), self.bytes.load(Relaxed))
    }
}

impl std::fmt::Debug for Dlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dlp")
            .field("mode", &self.mode)
            .field("rules", &self.names.len())
            .finish()
    }
}

impl Dlp {
    pub(crate) fn new(cfg: &ProxyConfig) -> Result<Self, crate::error::EgressError> {
        let DlpConfig {
            mode,
            max_body_bytes,
        } = cfg.dlp;
        let mut pats: Vec<String> = RULES.iter().map(|(_, p)| (*p).to_owned()).collect();
        let mut names: Vec<String> = RULES.iter().map(|(n, _)| (*n).to_owned()).collect();
        for (r, v) in &cfg.tokens {
            if v.expose().len() >= 8 {
                pats.push(regex::escape(v.expose()));
                names.push(format!("bottle-token:{r}"));
            }
        }
        let invalid = |e: regex::Error| crate::error::EgressError::ConfigInvalid {
            message: format!(
                "DLP rules do not compile: {}",
                e.to_string().lines().next().unwrap_or_default()
            ),
        };
        let rules = pats
            .iter()
            .map(|p| {
                RegexBuilder::new(p)
                    .unicode(false)
                    .size_limit(64 << 20)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let overlap = cfg
            .tokens
            .values()
            .map(|v| v.expose().len() * ESCAPE_GROWTH + 1)
            .fold(MIN_OVERLAP, usize::max);
        Ok(Self {
            mode,
            max_body: max_body_bytes,
            overlap,
            rules,
            names,
            #[cfg(test)]
            scanned: Default::default(),
        })
    }

    /// Rule ids found in a body's `data`: [`Dlp::scan_escaped`], and as a
    /// quoted-printable reader gives it ([`quoted_printable`]; multipart
    /// parts can ask a server for that, a request head cannot).
    pub(crate) fn scan_into(&self, data: &[u8], out: &mut Vec<String>) {
        self.scan_escaped(data, out);
        if let Some(q) = quoted_printable(data) {
            self.scan_raw(&q, out);
        }
    }

    /// Rule ids found in `data` as sent and, if it has escapes, as a server
    /// reads it once they are decoded ([`unescaped`]): `%67hp_…` in a URL
    /// or form and `\u0067hp_…` in JSON are `ghp_…` to the server, and
    /// `"\nAKIA…"` is a key after a newline, where `\b` holds.
    fn scan_escaped(&self, data: &[u8], out: &mut Vec<String>) {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering::Relaxed;
            self.scanned.scans.fetch_add(1, Relaxed);
            self.scanned.bytes.fetch_add(data.len(), Relaxed);
        }
        self.scan_raw(data, out);
        if let Some(u) = unescaped(data) {
            self.scan_raw(&u, out);
        }
    }

    fn scan_raw(&self, data: &[u8], out: &mut Vec<String>) {
        for (rule, name) in self.rules.iter().zip(&self.names) {
            if rule.is_match(data) && !out.contains(name) {
                out.push(name.clone());
            }
        }
    }

    /// Rule ids found in the request line and headers.
    pub(crate) fn scan_head(&self, uri: &str, headers: &HeaderMap, out: &mut Vec<String>) {
        // One pass over the whole head; lines are separated so no rule
        // matches across two headers.
        let mut head = Vec::with_capacity(uri.len() + 64 * headers.len());
        head.extend_from_slice(uri.as_bytes());
        for (n, v) in headers {
            head.push(b'\n');
            head.extend_from_slice(n.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(v.as_bytes());
        }
        self.scan_escaped(&head, out);
    }

    /// Rule ids found in a body: its bytes as sent, and, when its
    /// `content-encoding` is gzip, deflate, zstd or br, what they decode to —
    /// in chunks with an overlap, so no decoded copy is kept, up to
    /// [`DECODED_PER_BODY_BYTE`] times `max_body` decoded bytes.
    pub(crate) fn scan_body(
        &self,
        body: &[u8],
        encoding: Option<&str>,
        out: &mut Vec<String>,
    ) -> Decoded {
        self.scan_into(body, out);
        let enc = encoding.map(|e| e.trim().to_ascii_lowercase());
        let ceiling = self.max_body.saturating_mul(DECODED_PER_BODY_BYTE);
        let mut scan = StreamScan::new(self);
        match enc.as_deref() {
            None | Some("") | Some("identity") => Decoded::NotEncoded,
            // Several gzip members concatenated are one body to a server.
            Some("gzip") | Some("x-gzip") => decode_into(
                flate2::read::MultiGzDecoder::new(body),
                ceiling,
                &mut scan,
                out,
            ),
            Some("deflate") => {
                // Servers take both zlib-wrapped and raw deflate here.
                let mut zlib = StreamScan::new(self);
                let mut found = Vec::new();
                match decode_into(
                    flate2::read::ZlibDecoder::new(body),
                    ceiling,
                    &mut zlib,
                    &mut found,
                ) {
                    Decoded::Failed if zlib.seen == 0 => decode_into(
                        flate2::read::DeflateDecoder::new(body),
                        ceiling,
                        &mut scan,
                        out,
                    ),
                    d => {
                        merge(out, found);
                        d
                    }
                }
            }
            Some("zstd") => decode_zstd(body, ceiling, &mut scan, out),
            Some("br") => decode_into(
                brotli_decompressor::Decompressor::new(body, 64 * 1024),
                ceiling,
                &mut scan,
                out,
            ),
            // Stacked encodings (`gzip, br`) and the rare rest (compress).
            Some(_) => Decoded::Unknown,
        }
    }
}

/// `data` with the escapes servers decode before they read a value taken
/// out: `%XX` (a URL's path and query, form bodies, cookies) and JSON's
/// string escapes (`\n`, `\u0041`...). `None` when it has neither `%`
/// nor `\`. One pass: what an escape decodes to is not decoded again.
fn unescaped(data: &[u8]) -> Option<Vec<u8>> {
    // memchr: a byte loop here cost the scan of ordinary text ~40%.
    memchr::memchr2(b'%', b'\\', data)?;
    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    // Runs without an escape are copied whole (memchr again: byte by byte,
    // JSON with a `\n` every few words scanned at 434 MB/s).
    while let Some(run) = memchr::memchr2(b'%', b'\\', &data[i..]) {
        out.extend_from_slice(&data[i..i + run]);
        i += run;
        let b = data[i];
        if b == b'%' {
            if let (Some(h), Some(l)) = (hex(data.get(i + 1)), hex(data.get(i + 2))) {
                out.push((h << 4 | l) as u8);
                i += 3;
                continue;
            }
        } else if b == b'\\' {
            match data.get(i + 1) {
                Some(b'u') => {
                    let u = (2..6).try_fold(0u32, |acc, k| Some(acc << 4 | hex(data.get(i + k))?));
                    if let Some(u) = u {
                        let c = char::from_u32(u).unwrap_or(char::REPLACEMENT_CHARACTER);
                        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                        i += 6;
                        continue;
                    }
                }
                Some(&e @ (b'n' | b'r' | b't' | b'b' | b'f' | b'/' | b'\\' | b'"')) => {
                    out.push(match e {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'f' => 12,
                        x => x,
                    });
                    i += 2;
                    continue;
                }
                _ => {}
            }
        }
        out.push(b);
        i += 1;
    }
    out.extend_from_slice(&data[i..]);
    Some(out)
}

/// `data` as a quoted-printable reader gives it: `=XX` (either case) is
/// that byte, and `=` ending a line (spaces or tabs may follow it) joins
/// the line to the next. Go's `mime/multipart` decodes a part so when it
/// says `Content-Transfer-Encoding: quoted-printable`, before a Go server
/// reads the field, so `=67hp_…` there is `ghp_…`. The part's header may
/// be in an earlier piece of a stream than its text, so any `=` escape
/// counts, not only after that header. `None` when there is none.
fn quoted_printable(data: &[u8]) -> Option<Vec<u8>> {
    // What the `=` at `i` stands for, and how many bytes it takes up:
    // `Some(byte)` for `=XX`, `None` for a soft line break.
    let escape = |i: usize| -> Option<(Option<u8>, usize)> {
        let hex = |k: usize| data.get(i + k).and_then(|b| (*b as char).to_digit(16));
        if let (Some(h), Some(l)) = (hex(1), hex(2)) {
            return Some((Some((h << 4 | l) as u8), 3));
        }
        let mut j = i + 1;
        while matches!(data.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        if data.get(j) == Some(&b'\r') {
            j += 1;
        }
        (data.get(j) == Some(&b'\n')).then_some((None, j + 1 - i))
    };
    // Most text has no `=` escape (`a = b`, base64's `==`): no copy.
    let first = memchr::memchr_iter(b'=', data).find(|&i| escape(i).is_some())?;
    let mut out = Vec::with_capacity(data.len());
    out.extend_from_slice(&data[..first]);
    let mut i = first;
    while let Some(run) = memchr::memchr(b'=', &data[i..]) {
        out.extend_from_slice(&data[i..i + run]);
        i += run;
        match escape(i) {
            Some((byte, len)) => {
                out.extend(byte);
                i += len;
            }
            None => {
                out.push(b'=');
                i += 1;
            }
        }
    }
    out.extend_from_slice(&data[i..]);
    Some(out)
}

/// Decoded bytes scanned per body byte at most: a bound on the work a
/// compression bomb can cause (zstd reaches ratios in the thousands).
pub(crate) const DECODED_PER_BODY_BYTE: usize = 64;

/// What decoding a body for the scan came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// No content-encoding: the bytes themselves were scanned.
    NotEncoded,
    /// Decoded to the end, all of it scanned.
    Whole,
    /// The decoded size passed the ceiling; the rest was not scanned.
    OverCeiling,
    /// Not a valid stream of its encoding (or cut short: a prefix).
    Failed,
    /// An encoding the scanner does not know (compress, stacked ones, ...).
    Unknown,
}

/// Scans a stream of bytes in pieces, keeping the last [`Dlp::overlap`]
/// bytes of each piece so a value split across two is still found.
pub(crate) struct StreamScan<'a> {
    dlp: &'a Dlp,
    window: Vec<u8>,
    /// Bytes fed so far.
    pub(crate) seen: u64,
}

impl<'a> StreamScan<'a> {
    pub(crate) fn new(dlp: &'a Dlp) -> Self {
        Self {
            dlp,
            window: Vec::new(),
            seen: 0,
        }
    }

    /// The last bytes fed (at most the overlap), as context for a scan of
    /// what follows.
    pub(crate) fn into_tail(self) -> Vec<u8> {
        self.window
    }

    pub(crate) fn feed(&mut self, data: &[u8], out: &mut Vec<String>) {
        self.seen += data.len() as u64;
        self.window.extend_from_slice(data);
        self.dlp.scan_into(&self.window, out);
        let keep = self.window.len().min(self.dlp.overlap);
        self.window.drain(..self.window.len() - keep);
    }
}

/// Adds the rule ids of `found` not yet in `out`.
pub(crate) fn merge(out: &mut Vec<String>, found: Vec<String>) {
    for f in found {
        if !out.contains(&f) {
            out.push(f);
        }
    }
}

/// Reads `r` to its end in chunks, scanning each, up to `ceiling` bytes.
fn decode_into(
    mut r: impl Read,
    ceiling: usize,
    scan: &mut StreamScan<'_>,
    out: &mut Vec<String>,
) -> Decoded {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if scan.seen >= ceiling as u64 {
            return Decoded::OverCeiling;
        }
        match r.read(&mut buf) {
            Ok(0) => return Decoded::Whole,
            Ok(n) => scan.feed(&buf[..n], out),
            Err(_) => return Decoded::Failed,
        }
    }
}

/// zstd: every frame of the body (a server decodes them all, one after the
/// other), scanned as one stream.
fn decode_zstd(
    body: &[u8],
    ceiling: usize,
    scan: &mut StreamScan<'_>,
    out: &mut Vec<String>,
) -> Decoded {
    let mut rest = body;
    while !rest.is_empty() {
        let frame = match ruzstd::decoding::StreamingDecoder::new(&mut rest) {
            Ok(d) => d,
            Err(_) => return Decoded::Failed,
        };
        match decode_into(frame, ceiling, scan, out) {
            Decoded::Whole => {}
            other => return other,
        }
    }
    Decoded::Whole
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn dlp() -> Dlp {
        let cfg: ProxyConfig = serde_json::from_value(serde_json::json!({
            "schema": 1, "bottle_id": "b", "ca": {"cert_pem": "", "key_pem": ""},
            "tokens": {"REAL": "canary-real-token-123456"}
        }))
        .unwrap();
        Dlp::new(&cfg).unwrap()
    }

    #[test]
    fn rules_compile_and_find() {
        let d = dlp();
        let mut out = vec![];
        d.scan_body(
            b"x ghp_abcdefghijklmnopqrstuvwxyz0123456789 y AKIAIOSFODNN7EXAMPLE",
            None,
            &mut out,
        );
        assert_eq!(
            out,
            vec!["aws-access-token".to_string(), "github-pat".to_string()]
        );
        let mut out = vec![];
        d.scan_body(b"nothing here but dummy-token", None, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn compressed_bodies_and_real_tokens() {
        let d = dlp();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"{\"k\":\"canary-real-token-123456\"}")
            .unwrap();
        let gz = gz.finish().unwrap();
        let mut out = vec![];
        d.scan_body(&gz, Some("gzip"), &mut out);
        assert_eq!(out, vec!["bottle-token:REAL".to_string()]);
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn a_value_among_recurring_prefixes_is_found() {
        // Text made to slow a regex engine (the prefix recurring inside the
        // class after it) still yields the one real value, and only it.
        let d = dlp();
        let mut text = "github_pat_abc".repeat(2000);
        text.push_str(" github_pat_");
        text.push_str(&"A".repeat(82));
        let mut out = vec![];
        d.scan_body(text.as_bytes(), None, &mut out);
        assert_eq!(out, vec!["github-fine-grained-pat".to_string()]);
        let mut out = vec![];
        d.scan_body("-----BEGIN ".repeat(3000).as_bytes(), None, &mut out);
        assert!(out.is_empty(), "{out:?}");
        let mut out = vec![];
        let key = format!(
            "{}-----BEGIN EC PRIVATE KEY-----",
            "-----BEGIN ".repeat(3000)
        );
        d.scan_body(key.as_bytes(), None, &mut out);
        assert_eq!(out, vec!["private-key".to_string()]);
    }

    #[test]
    fn every_gzip_member_is_scanned() {
        // `gzip` bodies may hold several members; servers decode them all.
        let d = dlp();
        let mut body = gzip(b"harmless");
        body.extend(gzip(b"x ghp_abcdefghijklmnopqrstuvwxyz0123456789 y"));
        let mut out = vec![];
        assert_eq!(d.scan_body(&body, Some("gzip"), &mut out), Decoded::Whole);
        assert_eq!(out, vec!["github-pat".to_string()]);
    }

    #[test]
    fn decoded_bytes_past_the_cap_are_scanned_up_to_the_ceiling() {
        let d = dlp(); // max_body 1 MiB
                       // A few KiB on the wire, 3 MiB decoded, the value at the end, split
                       // across the scanner's read chunks somewhere in between.
        let mut plain = vec![b' '; 3 * 1024 * 1024];
        plain.extend_from_slice(b"AKIAIOSFODNN7EXAMPLE ");
        let mut out = vec![];
        assert_eq!(
            d.scan_body(&gzip(&plain), Some("gzip"), &mut out),
            Decoded::Whole
        );
        assert_eq!(out, vec!["aws-access-token".to_string()]);
        // Past the ceiling, the scan stops and says so.
        let bomb = gzip(&vec![b' '; 65 * 1024 * 1024]);
        let mut out = vec![];
        assert_eq!(
            d.scan_body(&bomb, Some("gzip"), &mut out),
            Decoded::OverCeiling
        );
    }

    fn brotli(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
        drop(w);
        out
    }

    #[test]
    fn brotli_bodies_are_decoded_and_scanned() {
        let d = dlp();
        let mut plain = vec![b' '; 200 * 1024];
        plain.extend_from_slice(b"x ghp_abcdefghijklmnopqrstuvwxyz0123456789 y");
        let br = brotli(&plain);
        assert!(br.len() < 1024, "brotli made {} bytes", br.len());
        let mut out = vec![];
        assert_eq!(d.scan_body(&br, Some("br"), &mut out), Decoded::Whole);
        assert_eq!(out, vec!["github-pat".to_string()]);
        // A body that is not brotli fails to decode (block mode refuses it),
        // and the ceiling holds for brotli too.
        let mut out = vec![];
        assert_eq!(
            d.scan_body(b"not brotli at all", Some("br"), &mut out),
            Decoded::Failed
        );
        let bomb = brotli(&vec![b' '; 65 * 1024 * 1024]);
        assert_eq!(
            d.scan_body(&bomb, Some("br"), &mut out),
            Decoded::OverCeiling
        );
        // Stacked encodings stay unknown.
        assert_eq!(
            d.scan_body(&br, Some("gzip, br"), &mut out),
            Decoded::Unknown
        );
    }

    #[test]
    fn values_behind_escapes_servers_decode_are_found() {
        let d = dlp();
        for (text, rule) in [
            // A URL's query or path, a form field: percent-decoded.
            (&b"/v1/x?k=%41KIAIOSFODNN7EXAMPLE"[..], "aws-access-token"),
            (
                b"k=%67hp_abcdefghijklmnopqrstuvwxyz0123456789",
                "github-pat",
            ),
            // JSON: \u escapes, and a key right after an escaped newline
            // (`\nAKIA` has no word boundary before the A as sent).
            (
                br#"{"k":"\u0067hp_abcdefghijklmnopqrstuvwxyz0123456789"}"#,
                "github-pat",
            ),
            (br#"{"k":"\nAKIAIOSFODNN7EXAMPLE"}"#, "aws-access-token"),
            (
                br#"{"k":"\u002d----BEGIN RSA PRIVATE KEY-----"}"#,
                "private-key",
            ),
            (b"k=%0Acanary-real-token-12345%36", "bottle-token:REAL"),
        ] {
            let mut out = vec![];
            d.scan_body(text, None, &mut out);
            assert_eq!(
                out,
                vec![rule.to_string()],
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        // Escaped all through, across two pieces of a stream.
        let esc: String = "ghp_abcdefghijklmnopqrstuvwxyz0123456789"
            .bytes()
            .map(|b| format!("\\u{b:04x}"))
            .collect();
        let mut scan = StreamScan::new(&d);
        let mut out = vec![];
        scan.feed(&[b' '; 5000], &mut out);
        scan.feed(&esc.as_bytes()[..100], &mut out);
        scan.feed(&esc.as_bytes()[100..], &mut out);
        assert_eq!(out, vec!["github-pat".to_string()]);
        let mut out = vec![];
        d.scan_body(b"100% sure, a \\ path", None, &mut out);
        assert!(out.is_empty());
        // What is around and between escapes is kept as it is.
        assert_eq!(
            unescaped(br#"ab%41c\n\u0041%zz\qd"#).as_deref(),
            Some(&b"abAc\nA%zz\\qd"[..])
        );
        assert_eq!(unescaped(b"plain"), None);
    }

    #[test]
    fn values_in_quoted_printable_parts_are_found() {
        let d = dlp();
        // A multipart part as Go's mime/multipart decodes it: `=67` is
        // `g`, and a soft line break (`=` at a line's end) splits a value.
        let body = b"--b\r\nContent-Disposition: form-data; name=\"k\"\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\r\n\
=67hp_abcdefghijklmn=\r\nopqrstuvwxyz0123456789\r\n--b--\r\n";
        let mut out = vec![];
        d.scan_body(body, None, &mut out);
        assert_eq!(out, vec!["github-pat".to_string()]);
        assert_eq!(
            quoted_printable(b"a=3Db=3d =  \nc=\r\nd = e==").as_deref(),
            Some(&b"a=b= cd = e=="[..])
        );
        assert_eq!(quoted_printable(b"x = 1; y == z; w=>v; base64=="), None);
        // No server reads a request head so: a query or cookie's `=XX`
        // stays as it is (and costs no second copy of every head).
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            "k=67hp_abcdefghijklmnopqrstuvwxyz0123456789"
                .parse()
                .unwrap(),
        );
        let mut out = vec![];
        d.scan_head(
            "/?q=67hp_abcdefghijklmnopqrstuvwxyz0123456789",
            &h,
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_stream_scan_finds_a_value_split_across_pieces() {
        let d = dlp();
        let mut scan = StreamScan::new(&d);
        let mut out = vec![];
        scan.feed(&[b'.'; 5000], &mut out);
        scan.feed(b"key=AKIAIOSF", &mut out);
        assert!(out.is_empty());
        scan.feed(b"ODNN7EXAMPLE end", &mut out);
        assert_eq!(out, vec!["aws-access-token".to_string()]);
    }
}
