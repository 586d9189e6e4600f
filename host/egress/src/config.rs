//! The proxy's config: one JSON file the host writes and the proxy reads.
//!
//! Host and proxy ship together, so unknown fields are refused rather than
//! ignored: a typo in the host is caught the first time the proxy starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bot_bottle_plugin_api::{EgressRoute, LocalResponse, Secret};
use serde::{Deserialize, Serialize};

use crate::error::EgressError;

/// The schema this proxy reads.
pub const SCHEMA: u32 = 1;

/// Everything the proxy needs. Holds real secrets (`tokens`, `ca.key_pem`):
/// its `Debug` prints them as `[redacted]`, and the file must only ever be
/// readable by the proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Payload schema, [`SCHEMA`].
    pub schema: u32,
    /// The bottle this proxy serves (audit lines carry it).
    pub bottle_id: String,
    /// Where the agent reaches the proxy.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The allow-list, in manifest order; the first match wins.
    #[serde(default)]
    pub routes: Vec<EgressRoute>,
    /// Hosts tunnelled without decryption (exact or `*.suffix`).
    #[serde(default)]
    pub tls_passthrough: Vec<String>,
    /// Requests the proxy answers itself and never forwards (OAuth refresh
    /// of a forwarded login, answered with dummies). Their hosts are let
    /// through CONNECT like a route's.
    #[serde(default)]
    pub local_responses: Vec<LocalResponse>,
    /// Token ref -> resolved value (resolved by the host).
    #[serde(default)]
    pub tokens: BTreeMap<String, Secret>,
    /// The bottle CA the proxy signs leaf certificates with.
    pub ca: CaMaterial,
    /// How the proxy reaches the outside.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// The secret scan of outbound requests.
    #[serde(default)]
    pub dlp: DlpConfig,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Where audit lines go.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Serve only clients from these networks; empty serves any. The Docker
    /// backend restricts its sidecar to the bottle's internal network, so a
    /// neighbour on the egress side (or the Docker host) cannot borrow the
    /// bottle's credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_clients: Vec<ipnet::IpNet>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 3128))
}

/// The bottle CA: certificate (public) and key (secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaMaterial {
    /// CA certificate, PEM.
    pub cert_pem: String,
    /// CA private key, PEM (PKCS#8).
    pub key_pem: Secret,
}

/// How the proxy reaches upstream servers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Extra CA certificates (PEM bundle) trusted on top of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_ca_pem: Option<String>,
    /// An HTTP proxy to chain to (`http://host:port`), reached with CONNECT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// The token (by ref, in `tokens`) holding `user:password` for the
    /// chained proxy: sent as `Proxy-Authorization: Basic …` on each
    /// CONNECT to it, and never anywhere else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_auth_ref: Option<String>,
    /// Host -> address override (air-gapped mirrors, tests). The port of the
    /// address is used, not the port the client asked for.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resolve: BTreeMap<String, SocketAddr>,
    /// Internal networks a host's DNS answer may be dialled in. By default
    /// the proxy refuses to dial a resolved loopback, link-local, private,
    /// unique-local, shared (CGNAT), multicast or reserved address
    /// ([`crate::addr`]); a network listed here is let through (the metadata
    /// addresses only when listed on their own, as a /32 or /128).
    /// `resolve` overrides and IP-literal route hosts are dialled as given
    /// regardless; with `proxy` set, the chained proxy resolves and this is
    /// not applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_internal: Vec<ipnet::IpNet>,
    /// The global addresses of the machine the bottle runs on, as its host
    /// sees them (filled in by `bottle` at launch). A sidecar in a network
    /// namespace of its own cannot tell them from any other public
    /// address, yet dialling one reaches the host's own services: each is
    /// refused as this machine's, unless `allow_internal` lists it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_addresses: Vec<std::net::IpAddr>,
}

/// What the DLP stage does with a finding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DlpMode {
    /// No scan.
    Off,
    /// Scan and write findings (rule names, never values) to the audit log.
    #[default]
    Log,
    /// Scan and refuse the request with 403 naming the rule.
    Block,
}

/// The DLP stage's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlpConfig {
    /// Off, log or block.
    #[serde(default)]
    pub mode: DlpMode,
    /// How many body bytes (after decompression) are scanned per request;
    /// the rest passes unscanned and the audit line says so.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

fn default_max_body() -> usize {
    1024 * 1024
}

impl Default for DlpConfig {
    fn default() -> Self {
        Self {
            mode: DlpMode::default(),
            max_body_bytes: default_max_body(),
        }
    }
}

/// Resource limits. Every one has a default that suits one agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Concurrent client connections, each counted until the last tunnel or
    /// WebSocket it opened closes; more wait in the accept queue.
    #[serde(default = "d_max_conn")]
    pub max_connections: usize,
    /// Largest request head (request line + headers) accepted.
    #[serde(default = "d_max_header")]
    pub max_header_bytes: usize,
    /// Time a client has to send a request head or a TLS hello.
    #[serde(default = "d_header_timeout")]
    pub header_read_timeout_ms: u64,
    /// A tunnel or upgraded connection with no traffic either way is closed
    /// after this long.
    #[serde(default = "d_idle")]
    pub idle_timeout_ms: u64,
}

fn d_max_conn() -> usize {
    1024
}
fn d_max_header() -> usize {
    64 * 1024
}
fn d_header_timeout() -> u64 {
    30_000
}
fn d_idle() -> u64 {
    600_000
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: d_max_conn(),
            max_header_bytes: d_max_header(),
            header_read_timeout_ms: d_header_timeout(),
            idle_timeout_ms: d_idle(),
        }
    }
}

/// Where audit lines go.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Append JSON lines to this file; `None` writes them to stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

impl ProxyConfig {
    /// Reads and checks a config file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, EgressError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| EgressError::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        Self::from_named_json(&text, path)
    }

    /// Reads a config from `reader` until it ends (the sidecar's standard
    /// input); `source` names it in errors.
    pub fn from_reader(mut reader: impl std::io::Read, source: &str) -> Result<Self, EgressError> {
        let mut text = String::new();
        reader
            .read_to_string(&mut text)
            .map_err(|e| EgressError::ConfigRead {
                path: source.into(),
                source: e,
            })?;
        if text.trim().is_empty() {
            return Err(EgressError::ConfigParse {
                path: Some(source.into()),
                message: "no config was given (the input was empty)".into(),
            });
        }
        Self::from_named_json(&text, Path::new(source))
    }

    /// [`Self::from_json`], with parse errors naming where the text came from.
    fn from_named_json(text: &str, source: &Path) -> Result<Self, EgressError> {
        Self::from_json(text).map_err(|e| match e {
            EgressError::ConfigParse { message, .. } => EgressError::ConfigParse {
                path: Some(source.to_owned()),
                message,
            },
            other => other,
        })
    }

    /// Parses and checks a config from JSON text.
    pub fn from_json(text: &str) -> Result<Self, EgressError> {
        // serde_json's messages quote a string value in the wrong place
        // (`invalid type: string "…"`), which may be a token: left out.
        let cfg: ProxyConfig =
            serde_json::from_str(text).map_err(|e| EgressError::ConfigParse {
                path: None,
                message: bot_bottle_plugin_api::without_quoted_values(&e.to_string()),
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: schema, hosts, token refs.
    pub fn validate(&self) -> Result<(), EgressError> {
        let bad = |message: String| EgressError::ConfigInvalid { message };
        if self.schema != SCHEMA {
            return Err(bad(format!(
                "schema {} is not supported (this proxy reads schema {SCHEMA}); run the proxy from the same bottle release as the host",
                self.schema
            )));
        }
        for (i, r) in self.routes.iter().enumerate() {
            crate::route::check_host_pattern(&r.host)
                .map_err(|m| bad(format!("routes[{i}].host {:?}: {m}", r.host)))?;
            if let Some(p) = &r.path_prefix {
                if !p.starts_with('/') {
                    return Err(bad(format!(
                        "routes[{i}].path_prefix {p:?} must start with '/'"
                    )));
                }
            }
            for h in &r.inject {
                http::HeaderName::from_bytes(h.header.as_bytes()).map_err(|_| {
                    bad(format!(
                        "routes[{i}].inject header {:?} is not a valid header name",
                        h.header
                    ))
                })?;
                if let Some(tr) = &h.token_ref {
                    let Some(tok) = self.tokens.get(tr) else {
                        return Err(bad(format!(
                            "routes[{i}] ({}) needs token ref {tr} but the config has no value for it",
                            r.host
                        )));
                    };
                    // A value with a newline or another control character
                    // cannot be a header: said here, before any launch.
                    let filled = h.value.replace("{token}", tok.expose());
                    if http::HeaderValue::from_str(&filled).is_err() {
                        return Err(bad(format!(
                            "routes[{i}] ({}) header {}: the value of token ref {tr} holds a \
                             character a header cannot carry, such as a newline (value not \
                             shown); check how {tr} is set",
                            r.host, h.header
                        )));
                    }
                }
            }
        }
        for (i, l) in self.local_responses.iter().enumerate() {
            crate::route::check_host_pattern(&l.host)
                .map_err(|m| bad(format!("local_responses[{i}].host {:?}: {m}", l.host)))?;
            if !l.path.starts_with('/') {
                return Err(bad(format!(
                    "local_responses[{i}].path {:?} must start with '/'",
                    l.path
                )));
            }
            http::StatusCode::from_u16(l.status).map_err(|_| {
                bad(format!(
                    "local_responses[{i}].status {} is not an HTTP status",
                    l.status
                ))
            })?;
        }
        for (i, h) in self.tls_passthrough.iter().enumerate() {
            crate::route::check_host_pattern(h)
                .map_err(|m| bad(format!("tls_passthrough[{i}] {h:?}: {m}")))?;
        }
        if let Some(p) = &self.upstream.proxy {
            crate::upstream::parse_proxy_url(p).map_err(|m| bad(format!("upstream.proxy: {m}")))?;
        }
        if let Some(r) = &self.upstream.proxy_auth_ref {
            if self.upstream.proxy.is_none() {
                return Err(bad(format!(
                    "upstream.proxy_auth_ref {r} is set but there is no upstream.proxy to send it to"
                )));
            }
            let value = self.tokens.get(r).ok_or_else(|| {
                bad(format!(
                    "upstream.proxy_auth_ref needs token ref {r} but the config has no value for it"
                ))
            })?;
            if !value.expose().contains(':') {
                return Err(bad(format!(
                    "upstream.proxy_auth_ref {r}: the value must be `user:password` (value not shown)"
                )));
            }
        }
        if let Some(pem) = &self.upstream.extra_ca_pem {
            check_extra_ca_pem(pem).map_err(|m| bad(format!("upstream.extra_ca_pem {m}")))?;
        }
        if self.limits.max_connections == 0 {
            return Err(bad("limits.max_connections must be at least 1".into()));
        }
        Ok(())
    }
}

/// Checks PEM text as `upstream.extra_ca_pem`: at least one certificate,
/// and every block a certificate a root store takes. The same check
/// [`ProxyConfig::validate`] makes, for a host that reads the file itself;
/// the error is to follow the text's name ("holds no PEM certificate …").
pub fn check_extra_ca_pem(pem: &str) -> Result<usize, String> {
    crate::upstream::add_extra_roots(&mut rustls::RootCertStore::empty(), pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "schema": 1, "bottle_id": "bb-t",
            "ca": {"cert_pem": "x", "key_pem": "canary-key-value"},
            "routes": [{"host": "api.example.com", "inject": [{"header": "Authorization", "value": "Bearer {token}", "token_ref": "T"}]}],
            "tokens": {"T": "canary-token-value"}
        })
    }

    #[test]
    fn defaults_fill_in_and_debug_redacts() {
        let cfg = ProxyConfig::from_json(&minimal().to_string()).unwrap();
        assert_eq!(cfg.listen.port(), 3128);
        assert_eq!(cfg.dlp.mode, DlpMode::Log);
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("canary"), "{dbg}");
    }

    /// A value in the wrong place (a token pasted into a number's field) is
    /// not quoted back by the parse error: `put-config` and the sidecar's
    /// stdin print it.
    #[test]
    fn a_misplaced_value_is_not_quoted_in_the_error() {
        let mut v = minimal();
        v["limits"] = serde_json::json!({ "max_connections": "canary-misplaced-token" });
        let e = ProxyConfig::from_json(&v.to_string())
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid type") && !e.contains("canary"), "{e}");
        let mut v = minimal();
        v["dlp"] = serde_json::json!({ "mode": "canary-misplaced-token" });
        let e = ProxyConfig::from_json(&v.to_string())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown variant") && !e.contains("canary"),
            "{e}"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut v = minimal();
        v["lisen"] = serde_json::json!("1.2.3.4:1");
        let e = ProxyConfig::from_json(&v.to_string())
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn upstream_proxy_credentials_are_checked_without_showing_them() {
        let err = |upstream: serde_json::Value, tokens: serde_json::Value| {
            let mut v = minimal();
            v["upstream"] = upstream;
            v["tokens"] = tokens;
            ProxyConfig::from_json(&v.to_string())
                .err()
                .map(|e| e.to_string())
        };
        let t = serde_json::json!({"T": "x", "P": "me:canary-pw"});
        assert_eq!(
            err(
                serde_json::json!({"proxy": "http://p:3128", "proxy_auth_ref": "P"}),
                t.clone()
            ),
            None
        );
        let e = err(serde_json::json!({"proxy_auth_ref": "P"}), t.clone()).unwrap();
        assert!(e.contains("no upstream.proxy"), "{e}");
        let e = err(
            serde_json::json!({"proxy": "http://p:3128", "proxy_auth_ref": "Q"}),
            t.clone(),
        )
        .unwrap();
        assert!(e.contains("token ref Q"), "{e}");
        let e = err(
            serde_json::json!({"proxy": "http://p:3128", "proxy_auth_ref": "P"}),
            serde_json::json!({"T": "x", "P": "canary-no-colon"}),
        )
        .unwrap();
        assert!(e.contains("user:password") && !e.contains("canary"), "{e}");
        let e = err(
            serde_json::json!({"proxy": "http://me:canary-pw@p:3128"}),
            t.clone(),
        )
        .unwrap();
        assert!(
            e.contains("credentials in the proxy URL") && !e.contains("canary"),
            "{e}"
        );
        // Not even a valid URL: still not quoted.
        let e = err(
            serde_json::json!({"proxy": "http://me:canary pw@p:3128"}),
            t,
        )
        .unwrap();
        assert!(!e.contains("canary"), "{e}");
    }

    #[test]
    fn an_extra_ca_without_a_certificate_is_refused_before_serving() {
        let with_ca = |pem: &str| {
            let mut v = minimal();
            v["upstream"] = serde_json::json!({ "extra_ca_pem": pem });
            ProxyConfig::from_json(&v.to_string())
                .err()
                .map(|e| e.to_string())
        };
        let e = with_ca("just text\n").expect("no certificate is refused");
        assert!(
            e.contains("upstream.extra_ca_pem holds no PEM certificate"),
            "{e}"
        );
        let e =
            with_ca("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
                .expect("a block that is no certificate is refused");
        assert!(e.contains("upstream.extra_ca_pem"), "{e}");
        let ca = crate::ca::BottleCa::generate("bb-t", &["a.test".to_string()]).unwrap();
        assert_eq!(with_ca(&ca.cert_pem), None);
    }

    #[test]
    fn missing_token_ref_is_named_without_values() {
        let mut v = minimal();
        v["tokens"] = serde_json::json!({"OTHER": "canary-other"});
        let e = ProxyConfig::from_json(&v.to_string())
            .unwrap_err()
            .to_string();
        assert!(e.contains("token ref T"), "{e}");
        assert!(!e.contains("canary"), "{e}");
    }

    #[test]
    fn a_config_read_from_a_stream_names_the_stream_never_a_value() {
        let text = minimal().to_string();
        let cfg = ProxyConfig::from_reader(text.as_bytes(), "standard input").unwrap();
        assert_eq!(cfg.bottle_id, "bb-t");
        let e = ProxyConfig::from_reader(&b" \n"[..], "standard input")
            .unwrap_err()
            .to_string();
        assert!(e.contains("standard input") && e.contains("empty"), "{e}");
        // Cut inside a secret: the error says where, not what.
        let cut = &text[..text.find("canary-token").unwrap() + 10];
        let e = ProxyConfig::from_reader(cut.as_bytes(), "standard input")
            .unwrap_err()
            .to_string();
        assert!(e.contains("standard input"), "{e}");
        assert!(!e.contains("canary"), "{e}");
    }
}
