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
use regex::bytes::{RegexSet, RegexSetBuilder};

use crate::config::{DlpConfig, DlpMode, ProxyConfig};

/// `(rule id, pattern)`, after gitleaks' ids.
const RULES: &[(&str, &str)] = &[
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
        r"-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----",
    ),
    ("huggingface-access-token", r"\bhf_[a-zA-Z]{34}\b"),
    ("npm-access-token", r"\bnpm_[a-zA-Z0-9]{36}\b"),
    ("pypi-upload-token", r"pypi-AgEIcHlwaS5vcmc[\w-]{50,}"),
    ("sendgrid-api-token", r"\bSG\.[\w-]{22}\.[\w-]{43}\b"),
    ("digitalocean-pat", r"\bdop_v1_[a-f0-9]{64}\b"),
];

/// The compiled rule set.
pub(crate) struct Dlp {
    pub(crate) mode: DlpMode,
    pub(crate) max_body: usize,
    set: RegexSet,
    names: Vec<String>,
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
        let set = RegexSetBuilder::new(&pats)
            .unicode(false)
            .size_limit(64 << 20)
            .build()
            .map_err(|e| crate::error::EgressError::ConfigInvalid {
                message: format!(
                    "DLP rules do not compile: {}",
                    e.to_string().lines().next().unwrap_or_default()
                ),
            })?;
        Ok(Self {
            mode,
            max_body: max_body_bytes,
            set,
            names,
        })
    }

    fn scan_into(&self, data: &[u8], out: &mut Vec<String>) {
        for i in self.set.matches(data).iter() {
            if !out.contains(&self.names[i]) {
                out.push(self.names[i].clone());
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
        self.scan_into(&head, out);
    }

    /// Rule ids found in (the first `max_body` bytes of) a body, decoded
    /// per `content-encoding` when it is gzip, deflate or zstd.
    pub(crate) fn scan_body(&self, body: &[u8], encoding: Option<&str>, out: &mut Vec<String>) {
        let enc = encoding.map(|e| e.trim().to_ascii_lowercase());
        let decoded = match enc.as_deref() {
            Some("gzip") | Some("x-gzip") => {
                read_capped(flate2::read::GzDecoder::new(body), self.max_body)
            }
            Some("deflate") => {
                let z = read_capped(flate2::read::ZlibDecoder::new(body), self.max_body);
                if z.is_empty() {
                    read_capped(flate2::read::DeflateDecoder::new(body), self.max_body)
                } else {
                    z
                }
            }
            Some("zstd") => match ruzstd::decoding::StreamingDecoder::new(body) {
                Ok(d) => read_capped(d, self.max_body),
                Err(_) => Vec::new(),
            },
            _ => Vec::new(),
        };
        self.scan_into(&body[..body.len().min(self.max_body)], out);
        if !decoded.is_empty() {
            self.scan_into(&decoded, out);
        }
    }
}

/// Reads up to `cap` bytes, keeping what was decoded before any error (a
/// truncated prefix of a compressed body still yields its start).
fn read_capped(mut r: impl Read, cap: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while out.len() < cap {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n.min(cap - out.len())]),
        }
    }
    out
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
}
