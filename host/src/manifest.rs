//! Stage 1 of the one flow: read `bottle.toml`.
//!
//! The manifest is strict: an unknown key or a wrong type stops here with a
//! message that names the file, the line and the key. Provider and backend
//! options (`[agent.options]`, `[backends.NAME]`) are passed through as JSON
//! and checked by the plugin that owns them.

use bot_bottle_plugin_api::is_env_name;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bot_bottle_plugin_api::{EgressRoute, HeaderInjection, Resources};
use serde::Deserialize;

mod spans;
pub use spans::child as key_path;
use spans::{child, Spans};

/// A manifest that failed to load. The message is complete: file, line,
/// key, what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {path}: {source}; pass the right file with -f PATH")]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A syntax error, unknown key or wrong type.
    #[error("{path}:{line}:{column}: {message}{key_note}\n  {line} | {snippet}\n  see docs/manifest.md for every key")]
    Invalid {
        /// The manifest path.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
        /// ` (key `a.b`)` when the key is known.
        key_note: String,
        /// The offending line.
        snippet: String,
    },
}

/// `bottle.toml`, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    backend: String,
    agent: RawAgent,
    #[serde(default)]
    workspace: Option<RawWorkspace>,
    #[serde(default)]
    mounts: Vec<RawMount>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    resources: RawResources,
    #[serde(default)]
    egress: RawEgress,
    #[serde(default)]
    backends: BTreeMap<String, toml::Table>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    provider: String,
    image: String,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    tty: Option<bool>,
    #[serde(default)]
    options: toml::Table,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkspace {
    path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMount {
    host: PathBuf,
    path: String,
    #[serde(default)]
    writable: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    #[serde(default)]
    cpus: Option<f64>,
    #[serde(default)]
    memory: Option<String>,
    #[serde(default)]
    pids: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEgress {
    #[serde(default)]
    route: Vec<RawRoute>,
    #[serde(default)]
    tls_passthrough: Vec<String>,
    #[serde(default)]
    dlp: Option<DlpMode>,
    #[serde(default)]
    upstream_proxy: Option<String>,
    #[serde(default)]
    upstream_proxy_auth_ref: Option<String>,
    #[serde(default)]
    upstream_ca: Option<PathBuf>,
    #[serde(default)]
    resolve: BTreeMap<String, String>,
    #[serde(default)]
    allow_internal: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    host: String,
    #[serde(default)]
    path_prefix: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    plain_http: bool,
    #[serde(default)]
    ports: Vec<u16>,
    #[serde(default)]
    inject: Vec<RawInject>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInject {
    header: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    token_ref: Option<String>,
}

/// What the egress proxy's DLP stage does with a secret-shaped value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DlpMode {
    /// No scanning.
    Off,
    /// Scan and write findings to the audit log.
    #[default]
    Log,
    /// Scan and refuse the request with 403.
    Block,
}

/// A validated manifest: every path absolute, every value checked.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where it was read from.
    pub path: PathBuf,
    /// Bottle name (`[a-z0-9][a-z0-9-]*`).
    pub name: String,
    /// Backend plugin name.
    pub backend: String,
    /// Provider plugin name.
    pub provider: String,
    /// Agent image.
    pub image: String,
    /// Agent command, when the manifest gives one.
    pub command: Option<Vec<String>>,
    /// Allocate a TTY; `None` means "when stdin is a terminal".
    pub tty: Option<bool>,
    /// `[agent.options]` as JSON, for the provider.
    pub provider_options: serde_json::Value,
    /// `[backends.<backend>]` as JSON, for the backend.
    pub backend_options: serde_json::Value,
    /// Host directory mounted read-write at the sandbox workspace.
    pub workspace: Option<PathBuf>,
    /// Other mounts, read-only unless marked writable.
    pub mounts: Vec<bot_bottle_plugin_api::Mount>,
    /// Plain env for the agent (never secrets).
    pub env: BTreeMap<String, String>,
    /// Limits.
    pub resources: Resources,
    /// Routes declared in the manifest.
    pub routes: Vec<EgressRoute>,
    /// Hosts tunnelled without decryption.
    pub tls_passthrough: Vec<String>,
    /// DLP mode.
    pub dlp: DlpMode,
    /// Upstream proxy to chain to.
    pub upstream_proxy: Option<String>,
    /// Env name holding `user:password` for the upstream proxy.
    pub upstream_proxy_auth_ref: Option<String>,
    /// Extra CA bundle the proxy trusts upstream (absolute host path).
    pub upstream_ca: Option<PathBuf>,
    /// Host → address overrides for the proxy's upstream dials.
    pub resolve: BTreeMap<String, std::net::SocketAddr>,
    /// Internal networks a route host's DNS answer may be dialled in.
    pub allow_internal: Vec<ipnet::IpNet>,
    /// `[backends.NAME]` tables for backends other than `backend`, kept for
    /// switching; [`Manifest::check_backend_tables`] refuses a name no
    /// backend has.
    pub other_backend_tables: Vec<String>,
    /// The text, to place errors found after loading (a plugin's about its
    /// options, a backend table no backend owns).
    source: String,
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        // Absolute, so relative paths in it resolve the same from anywhere
        // (a backend mounts the workspace by absolute host path).
        let path = &std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses manifest text; `path` is used for messages and to resolve
    /// relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            // The innermost key or value where the parser stopped (none for
            // a syntax error: the text has no keys yet).
            let key = Spans::of(text).path_at(offset);
            // A syntax error's line is the clue to it; a wrong type or an
            // unknown key needs no value (which may be a misplaced secret).
            let quote = if key.is_some() {
                Quote::KeyOnly
            } else {
                Quote::Value
            };
            invalid_at(
                path,
                text,
                offset,
                key.as_deref(),
                e.message().to_string(),
                quote,
            )
        })?;
        validate(path, text, raw)
    }

    /// The directory relative paths are resolved against.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// An error about the key path `key` of this manifest
    /// (`backends.docker.runtime`), pointing at its value, or at its nearest
    /// enclosing table when the key is not written.
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> ManifestError {
        At::new(&self.path, &self.source).value(key, message.into())
    }

    /// [`Manifest::error_at`] for a plugin's option: the quoted line and the
    /// message leave its value out (an option's value may be a secret the
    /// user put there by mistake, and the plugin's error is about the key).
    pub fn option_error_at(&self, key: &str, message: impl Into<String>) -> ManifestError {
        At::new(&self.path, &self.source).key_only(key, message.into())
    }

    /// Refuses a `[backends.NAME]` table that no backend can read: `NAME`
    /// is not this manifest's backend, not one of bot-bottle's own
    /// backends and not an installed backend (`installed`). A table kept
    /// for switching to another backend is fine; a misspelt one would be
    /// silently ignored.
    ///
    /// A name near a known one is a typo, and refused (the table the user
    /// meant would be ignored). Any other is taken as a table for a backend
    /// installed elsewhere (a manifest shared with people who have it), and
    /// comes back as a warning to print.
    pub fn check_backend_tables<'a>(
        &self,
        installed: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<String>, ManifestError> {
        let mut known: Vec<&str> = vec![&self.backend];
        known.extend_from_slice(IN_TREE_BACKENDS);
        for name in installed {
            known.push(name);
        }
        let mut warnings = Vec::new();
        for name in &self.other_backend_tables {
            if known.contains(&name.as_str()) {
                continue;
            }
            let key = child("backends", name);
            let at = At::new(&self.path, &self.source);
            match closest(name, &known) {
                Some(near) => {
                    return Err(at.key(
                        &key,
                        format!(
                            "no backend is named `{name}`, so this table would be ignored (this manifest uses backend `{}`); did you mean `[backends.{near}]`?",
                            self.backend
                        ),
                    ))
                }
                None => warnings.push(format!(
                    "{}: [backends.{name}] is for a backend not installed here (installed: {}); it is ignored",
                    at.line_of(&key),
                    dedup(&known).join(", ")
                )),
            }
        }
        Ok(warnings)
    }
}

/// The backends bot-bottle ships, whose tables a manifest may keep even
/// where they are not installed.
const IN_TREE_BACKENDS: &[&str] = &["docker", "smolmachines"];

/// `names` sorted, without repeats.
fn dedup<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut v = names.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// The name in `names` nearest to `word`, when it is near enough to be a
/// typo of it (a third of its letters, at least 2, changed).
fn closest<'a>(word: &str, names: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    names
        .iter()
        .map(|n| (edit_distance(word, n), *n))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, n)| n)
}

/// Levenshtein distance, with a swap of two neighbours counting as one
/// edit (`dokcer` → `docker`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Builds an `Invalid` error pointing at a byte offset of the text, about
/// the key path `key` when it is known.
/// Whether an error's quoted line shows the value after the key's `=`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    /// The error is about the value (a bad host pattern): show it.
    Value,
    /// The error is about the key or the value's type (an unknown key, a
    /// plugin's option): the value does not help, and a value put in the
    /// wrong place may be a secret, so it is not shown.
    KeyOnly,
}

fn invalid_at(
    path: &Path,
    text: &str,
    offset: usize,
    key: Option<&str>,
    message: String,
    quote: Quote,
) -> ManifestError {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    let quoted = text[line_start..].lines().next().unwrap_or("").trim_end();
    let (quoted, message) = match quote {
        Quote::Value => (quoted.to_string(), message),
        Quote::KeyOnly => (
            match quoted.split_once('=') {
                Some((k, _)) => format!("{k}= …"),
                None => quoted.to_string(),
            },
            bot_bottle_plugin_api::without_quoted_values(&message),
        ),
    };
    let snippet = hide_userinfo(&quoted);
    let key_note = key
        .map(|k| format!(" (key `{}`)", hide_userinfo(k)))
        .unwrap_or_default();
    ManifestError::Invalid {
        path: path.to_path_buf(),
        line,
        column,
        message: hide_userinfo(&message),
        key_note,
        snippet,
    }
}

/// Errors about keys already parsed, which the deserialiser's spans do not
/// reach: each names the key path it is about, and the message points at
/// that key's value (or at the key itself, for a bad name).
struct At<'a> {
    path: &'a Path,
    text: &'a str,
    spans: std::cell::OnceCell<Spans>,
}

impl<'a> At<'a> {
    fn new(path: &'a Path, text: &'a str) -> Self {
        At {
            path,
            text,
            spans: std::cell::OnceCell::new(),
        }
    }

    fn spans(&self) -> &Spans {
        // Only a manifest with an error is indexed.
        self.spans.get_or_init(|| Spans::of(self.text))
    }

    /// An error about the value at `key`.
    fn value(&self, key: &str, message: String) -> ManifestError {
        let offset = self.spans().value_start(key);
        self.error(offset, key, message, Quote::Value)
    }

    /// An error about `key` where its value is not shown ([`Quote::KeyOnly`]).
    fn key_only(&self, key: &str, message: String) -> ManifestError {
        let offset = self.spans().value_start(key);
        self.error(offset, key, message, Quote::KeyOnly)
    }

    /// An error about the name of the key `key`.
    fn key(&self, key: &str, message: String) -> ManifestError {
        let offset = self.spans().key_start(key);
        self.error(offset, key, message, Quote::KeyOnly)
    }

    fn error(
        &self,
        offset: Option<usize>,
        key: &str,
        message: String,
        quote: Quote,
    ) -> ManifestError {
        let offset = offset.unwrap_or(0);
        invalid_at(self.path, self.text, offset, Some(key), message, quote)
    }

    /// `FILE:LINE` of the key `key`, for a warning.
    fn line_of(&self, key: &str) -> String {
        let offset = self.spans().key_start(key).unwrap_or(0);
        let line = 1 + self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count();
        format!("{}:{line}", self.path.display())
    }
}

/// Text with what may be a URL's userinfo shown as `***`, for quoting a
/// manifest line or a parser's message about it (which can repeat the
/// value). In each token with an `@` (tokens end at whitespace, double
/// quotes, backticks, square and curly brackets only: `=`, `,`, `'`, `#`
/// and parentheses are legal in a password), the part before its last `@` — after a `scheme://` when there
/// is one — is hidden when it follows a scheme (`https://TOKEN@host`), holds
/// a `:` (`user:password@`) or comes before a `host:port`. Errs on the side
/// of hiding: `mailto:a@b` is hidden too; `dev@example.com`,
/// `git@github.com:org/repo` and `image@sha256:…` stay.
fn hide_userinfo(text: &str) -> String {
    let ends = |c: char| c.is_whitespace() || "\"`[]{}".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut token = String::new();
    for c in text.chars() {
        if ends(c) {
            out.push_str(&hide_in_token(&token));
            token.clear();
            out.push(c);
        } else {
            token.push(c);
        }
    }
    out.push_str(&hide_in_token(&token));
    out
}

/// [`hide_userinfo`] for one token.
fn hide_in_token(t: &str) -> String {
    // TOML may spell the `@` as an escape.
    let at = ["@", "\\u0040", "\\U00000040"]
        .iter()
        .filter_map(|a| t.rfind(a))
        .max();
    let Some(at) = at else {
        return t.to_string();
    };
    let (start, scheme) = match t[..at].find("://") {
        Some(s) => (s + 3, true),
        None => (0, false),
    };
    let user = &t[start..at];
    // `@host:8080`: a port after the host.
    let port_follows = t[at + 1..]
        .split_once(':')
        .is_some_and(|(_, rest)| rest.starts_with(|c: char| c.is_ascii_digit()));
    if user.is_empty() || !(scheme || user.contains(':') || port_follows) {
        return t.to_string();
    }
    format!("{}***{}", &t[..start], &t[at..])
}

fn is_host_pattern(s: &str) -> bool {
    let host = s.strip_prefix("*.").unwrap_or(s);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT",
];

/// Parses `512m`, `2g`, `1024` (bytes) and friends.
pub fn parse_memory(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (digits, mult) = match s.trim_end_matches(['b', 'i']).chars().last()? {
        'k' => (&s[..s.find('k')?], 1u64 << 10),
        'm' => (&s[..s.find('m')?], 1 << 20),
        'g' => (&s[..s.find('g')?], 1 << 30),
        c if c.is_ascii_digit() => (s.as_str(), 1),
        _ => return None,
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(mult)
}

fn to_json(table: toml::Table) -> serde_json::Value {
    serde_json::to_value(table).unwrap_or(serde_json::Value::Null)
}

fn validate(path: &Path, text: &str, raw: RawManifest) -> Result<Manifest, ManifestError> {
    let at = At::new(path, text);
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let absolute = |p: &Path| -> PathBuf {
        let p = expand_home(p);
        if p.is_absolute() {
            p
        } else {
            dir.join(p)
        }
    };

    if raw.name.is_empty()
        || !raw
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || raw.name.starts_with('-')
        || raw.name.len() > 40
    {
        return Err(at.value(
            "name",
            format!(
                "invalid bottle name {:?}: use 1-40 of a-z, 0-9 and '-', not starting with '-'",
                raw.name
            ),
        ));
    }

    let mut routes = Vec::new();
    for (i, r) in raw.egress.route.iter().enumerate() {
        let key = |k: &str| format!("egress.route[{i}].{k}");
        if !is_host_pattern(&r.host) {
            return Err(at.value(&key("host"), format!("invalid route host {:?}: expected a DNS name like `api.example.com` or a wildcard `*.example.com`", r.host)));
        }
        if let Some(p) = &r.path_prefix {
            if !p.starts_with('/') {
                return Err(at.value(
                    &key("path_prefix"),
                    format!("invalid path_prefix {p:?}: it must start with '/'"),
                ));
            }
        }
        if let Some(j) = r.ports.iter().position(|&p| p == 0) {
            return Err(at.value(
                &key(&format!("ports[{j}]")),
                "invalid port 0: ports are 1 to 65535".into(),
            ));
        }
        let mut methods = Vec::new();
        for (j, m) in r.methods.iter().enumerate() {
            let up = m.to_ascii_uppercase();
            if !METHODS.contains(&up.as_str()) {
                return Err(at.value(
                    &key(&format!("methods[{j}]")),
                    format!(
                        "unknown HTTP method {m:?}: expected one of {}",
                        METHODS.join(", ")
                    ),
                ));
            }
            methods.push(up);
        }
        let mut inject = Vec::new();
        for (j, h) in r.inject.iter().enumerate() {
            let key = |k: &str| key(&format!("inject[{j}].{k}"));
            if h.header.is_empty()
                || !h
                    .header
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(at.value(
                    &key("header"),
                    format!("invalid header name {:?}", h.header),
                ));
            }
            let value = h.value.clone().unwrap_or_else(|| "{token}".to_string());
            match &h.token_ref {
                Some(t) if !is_env_name(t) => {
                    return Err(at.value(&key("token_ref"), format!("invalid token_ref {t:?}: expected an env variable name like `EXAMPLE_API_TOKEN`")));
                }
                Some(_) if !value.contains("{token}") => {
                    return Err(at.value(&key("value"), format!("header value {value:?} has no `{{token}}` placeholder for its token_ref")));
                }
                None if value.contains("{token}") => {
                    // `value` may be left out (it defaults to `{token}`).
                    let culprit = if h.value.is_some() { "value" } else { "header" };
                    return Err(at.value(
                        &key(culprit),
                        format!(
                            "header `{}` uses `{{token}}` but names no token_ref",
                            h.header
                        ),
                    ));
                }
                _ => {}
            }
            inject.push(HeaderInjection {
                header: h.header.clone(),
                value,
                token_ref: h.token_ref.clone(),
            });
        }
        routes.push(EgressRoute {
            host: r.host.to_ascii_lowercase(),
            path_prefix: r.path_prefix.clone(),
            methods,
            inject,
            plain_http: r.plain_http,
            ports: r.ports.clone(),
            source: "manifest".into(),
        });
    }
    for (i, h) in raw.egress.tls_passthrough.iter().enumerate() {
        if !is_host_pattern(h) {
            return Err(at.value(
                &format!("egress.tls_passthrough[{i}]"),
                format!("invalid tls_passthrough host {h:?}: expected a DNS name or `*.suffix`"),
            ));
        }
    }
    if let Some(url) = &raw.egress.upstream_proxy {
        // Any `@` in a proxy URL is a credential, however it is spelt
        // (a password may hold spaces, quotes or braces that end no token
        // for `hide_userinfo`): the quoted line then leaves the value out.
        bot_bottle_egress::check_upstream_proxy_url(url).map_err(|m| {
            let message = format!("invalid upstream_proxy: {m}");
            if url.contains('@') {
                at.key_only("egress.upstream_proxy", message)
            } else {
                at.value("egress.upstream_proxy", message)
            }
        })?;
    }
    match (
        &raw.egress.upstream_proxy_auth_ref,
        &raw.egress.upstream_proxy,
    ) {
        (Some(r), _) if !is_env_name(r) => {
            return Err(at.value(
                "egress.upstream_proxy_auth_ref",
                format!("invalid upstream_proxy_auth_ref {r:?}: expected an env variable name like `CORP_PROXY_AUTH`"),
            ));
        }
        (Some(_), None) => {
            return Err(at.value(
                "egress.upstream_proxy_auth_ref",
                "upstream_proxy_auth_ref is set but upstream_proxy is not: set the proxy it authenticates to".into(),
            ));
        }
        _ => {}
    }
    let mut resolve = BTreeMap::new();
    for (host, addr) in &raw.egress.resolve {
        // Looked up by the exact host a request names: a wildcard or a URL
        // here would never match.
        if host.starts_with("*.") || !is_host_pattern(host) {
            return Err(at.key(
                &child("egress.resolve", host),
                format!(
                    "invalid resolve host {host:?}: expected a DNS name like `api.example.com`"
                ),
            ));
        }
        let parsed = addr.parse().map_err(|_| {
            at.value(
                &child("egress.resolve", host),
                format!("invalid resolve address {addr:?} for {host}: expected IP:PORT"),
            )
        })?;
        resolve.insert(host.to_ascii_lowercase(), parsed);
    }
    let mut allow_internal = Vec::new();
    for (i, net) in raw.egress.allow_internal.iter().enumerate() {
        // A bare address is that address alone (/32, /128).
        let parsed = net
            .parse::<ipnet::IpNet>()
            .or_else(|_| net.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                at.value(
                    &format!("egress.allow_internal[{i}]"),
                    format!(
                        "invalid allow_internal network {net:?}: expected a CIDR like \"10.20.0.0/16\" or an address"
                    ),
                )
            })?;
        allow_internal.push(parsed);
    }
    for key in raw.env.keys() {
        if !is_env_name(key) {
            return Err(at.key(&child("env", key), format!("invalid env name {key:?}")));
        }
    }
    let memory_bytes = match &raw.resources.memory {
        Some(m) => Some(parse_memory(m).ok_or_else(|| {
            at.value(
                "resources.memory",
                format!("invalid memory {m:?}: expected a size like `512m` or `2g`"),
            )
        })?),
        None => None,
    };
    // Zero would read as "no limit" to Docker (memory 0, pids 0 → max): a
    // limit the user wrote must limit, so it is refused rather than dropped.
    if memory_bytes == Some(0) {
        return Err(at.value(
            "resources.memory",
            "memory 0 would mean no limit: give a size like `512m`, or leave the key out for the backend's default".to_string(),
        ));
    }
    if raw.resources.pids == Some(0) {
        return Err(at.value(
            "resources.pids",
            "pids 0 would mean no limit: give a number of processes, or leave the key out for the backend's default".to_string(),
        ));
    }
    if let Some(c) = raw.resources.cpus {
        if !(c > 0.0 && c <= 1024.0) {
            return Err(at.value(
                "resources.cpus",
                format!("invalid cpus {c}: expected a number above 0"),
            ));
        }
    }
    let mut mounts = Vec::new();
    for (i, m) in raw.mounts.iter().enumerate() {
        if !m.path.starts_with('/') {
            return Err(at.value(
                &format!("mounts[{i}].path"),
                format!(
                    "invalid mount path {:?}: it must be absolute inside the sandbox",
                    m.path
                ),
            ));
        }
        mounts.push(bot_bottle_plugin_api::Mount {
            host: absolute(&m.host),
            sandbox: m.path.clone(),
            writable: m.writable,
        });
    }
    if let Some(cmd) = &raw.agent.command {
        if cmd.is_empty() {
            return Err(at.value("agent.command", "agent command is empty: give at least the program, or leave `command` out for the provider's default".into()));
        }
    }

    let backend_options = raw
        .backends
        .get(&raw.backend)
        .cloned()
        .map(to_json)
        .unwrap_or(serde_json::json!({}));
    let other_backend_tables = raw
        .backends
        .keys()
        .filter(|b| **b != raw.backend)
        .cloned()
        .collect();
    Ok(Manifest {
        path: path.to_path_buf(),
        name: raw.name,
        backend: raw.backend,
        provider: raw.agent.provider,
        image: image_path_or_reference(&raw.agent.image, absolute),
        command: raw.agent.command,
        tty: raw.agent.tty,
        provider_options: to_json(raw.agent.options),
        backend_options,
        workspace: raw.workspace.map(|w| absolute(&w.path)),
        mounts,
        env: raw.env,
        resources: Resources {
            cpus: raw.resources.cpus,
            memory_bytes,
            pids: raw.resources.pids,
        },
        routes,
        tls_passthrough: raw
            .egress
            .tls_passthrough
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        dlp: raw.egress.dlp.unwrap_or_default(),
        upstream_proxy: raw.egress.upstream_proxy,
        upstream_proxy_auth_ref: raw.egress.upstream_proxy_auth_ref,
        upstream_ca: raw.egress.upstream_ca.map(|p| absolute(&p)),
        resolve,
        allow_internal,
        other_backend_tables,
        source: text.to_string(),
    })
}

/// `image` as the backend gets it: a `docker save` archive path made
/// absolute like the manifest's other paths (written as a path, `./`,
/// `../`, `~/`, or an archive's name, `*.tar`, `*.tar.gz`, `*.tgz`, beside
/// the manifest), anything else as written: an image reference, even when
/// a file of that name happens to sit beside the manifest (`org/agent`).
/// The backend tells an archive from a reference by an absolute path to a
/// file.
fn image_path_or_reference(image: &str, absolute: impl Fn(&Path) -> PathBuf) -> String {
    let written_as_path = ["./", "../", "~/"].iter().any(|p| image.starts_with(p));
    let archive_name = [".tar", ".tar.gz", ".tgz"]
        .iter()
        .any(|e| image.ends_with(e));
    let p = absolute(Path::new(image));
    if written_as_path || (archive_name && !image.starts_with('/') && p.is_file()) {
        p.to_string_lossy().into_owned()
    } else {
        image.to_string()
    }
}

fn expand_home(p: &Path) -> PathBuf {
    match p.strip_prefix("~") {
        Ok(rest) => dirs::home_dir()
            .map(|h| h.join(rest))
            .unwrap_or_else(|| p.to_path_buf()),
        Err(_) => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "demo"
backend = "docker"

[agent]
provider = "generic"
image = "busybox"
command = ["sh", "-c", "true"]

[agent.options]
dummy_env = ["EXAMPLE_TOKEN"]

[resources]
memory = "512m"
pids = 64

[[egress.route]]
host = "api.example.test"
path_prefix = "/v1/"
methods = ["get", "POST"]
inject = [{ header = "Authorization", value = "Bearer {token}", token_ref = "EXAMPLE_TOKEN" }]

[backends.docker]
runtime = "runsc"
"#;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("/tmp/x/bottle.toml"), text)
    }

    #[test]
    fn parses_a_full_manifest() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.name, "demo");
        assert_eq!(m.routes[0].methods, ["GET", "POST"]);
        assert_eq!(
            m.routes[0].inject[0].token_ref.as_deref(),
            Some("EXAMPLE_TOKEN")
        );
        assert_eq!(m.resources.memory_bytes, Some(512 << 20));
        assert_eq!(m.backend_options["runtime"], "runsc");
        assert_eq!(m.provider_options["dummy_env"][0], "EXAMPLE_TOKEN");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = GOOD.replace("pids = 64", "pids = 64\nswap = 1");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.starts_with("/tmp/x/bottle.toml:16:1: unknown field `swap`"),
            "{e}"
        );
        assert!(e.contains("(key `resources.swap`)"), "{e}");
    }

    #[test]
    fn wrong_type_names_file_line_and_key() {
        let text = GOOD.replace("pids = 64", "pids = \"many\"");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("bottle.toml:15:8:"), "{e}");
        assert!(e.contains("key `resources.pids`"), "{e}");
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn an_image_archive_beside_the_manifest_is_made_absolute() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("agent.tar"), "").unwrap();
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                d.path().join(p)
            }
        };
        let archive = d.path().join("agent.tar");
        let got = |i: &str| PathBuf::from(image_path_or_reference(i, abs));
        assert_eq!(got("agent.tar"), archive);
        // (Paths compare by component: `/d/./agent.tar` is `/d/agent.tar`.)
        assert_eq!(got("./agent.tar"), archive);
        assert_eq!(
            image_path_or_reference("../x/agent.tar", abs),
            d.path().join("../x/agent.tar").to_string_lossy()
        );
        // References stay references, a missing archive included, and a
        // reference that is also the name of a file beside the manifest.
        std::fs::create_dir_all(d.path().join("org")).unwrap();
        std::fs::write(d.path().join("org/agent"), "").unwrap();
        for r in [
            "ubuntu",
            "ghcr.io/o/agent:1",
            "other.tar",
            "/abs/agent.tar",
            "org/agent",
        ] {
            assert_eq!(image_path_or_reference(r, abs), r);
        }
    }

    #[test]
    fn a_zero_limit_is_refused_not_read_as_none() {
        for (from, to, key) in [
            ("pids = 64", "pids = 0", "resources.pids"),
            ("memory = \"512m\"", "memory = \"0\"", "resources.memory"),
        ] {
            let e = parse(&GOOD.replace(from, to)).unwrap_err().to_string();
            assert!(
                e.contains(&format!("key `{key}`")) && e.contains("would mean no limit"),
                "{e}"
            );
        }
    }

    #[test]
    fn semantic_errors_point_at_the_line() {
        let text = GOOD.replace(
            "host = \"api.example.test\"",
            "host = \"https://api.example.test\"",
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains(":18:8: invalid route host"), "{e}");
        let text = GOOD.replace(
            "token_ref = \"EXAMPLE_TOKEN\"",
            "token_ref = \"not a name\"",
        );
        assert!(parse(&text)
            .unwrap_err()
            .to_string()
            .contains("invalid token_ref"));
        let text = GOOD.replace("value = \"Bearer {token}\"", "value = \"Bearer\"");
        assert!(parse(&text)
            .unwrap_err()
            .to_string()
            .contains("no `{token}` placeholder"));
    }

    #[test]
    fn a_route_names_its_ports() {
        assert!(parse(GOOD).unwrap().routes[0].ports.is_empty());
        let text = GOOD.replace("path_prefix = \"/v1/\"", "ports = [443, 8443]");
        assert_eq!(parse(&text).unwrap().routes[0].ports, [443, 8443]);
        let text = GOOD.replace("path_prefix = \"/v1/\"", "ports = [0]");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains(":19:10: invalid port 0"), "{e}");
        let text = GOOD.replace("path_prefix = \"/v1/\"", "ports = [70000]");
        assert!(parse(&text).is_err());
    }

    #[test]
    fn allow_internal_takes_networks_and_lone_addresses() {
        assert!(parse(GOOD).unwrap().allow_internal.is_empty());
        let with = |line: &str| {
            GOOD.replace(
                "[[egress.route]]",
                &format!("[egress]\n{line}\n\n[[egress.route]]"),
            )
        };
        let m = parse(&with(
            "allow_internal = [\"10.20.0.0/16\", \"192.168.7.9\", \"fd12::/64\"]",
        ))
        .unwrap();
        let nets: Vec<String> = m.allow_internal.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.20.0.0/16", "192.168.7.9/32", "fd12::/64"]);
        let e = parse(&with("allow_internal = [\"10.20.0.0/33\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(":18:19: invalid allow_internal network \"10.20.0.0/33\""),
            "{e}"
        );
    }

    #[test]
    fn the_upstream_proxy_takes_its_credential_by_ref_only() {
        let with = |egress: &str| {
            GOOD.replace(
                "[[egress.route]]",
                &format!("[egress]\n{egress}\n\n[[egress.route]]"),
            )
        };
        let m = parse(&with(
            "upstream_proxy = \"http://proxy.corp:8080\"\nupstream_proxy_auth_ref = \"CORP_PROXY_AUTH\"",
        ))
        .unwrap();
        assert_eq!(
            m.upstream_proxy_auth_ref.as_deref(),
            Some("CORP_PROXY_AUTH")
        );
        // A password in the URL is refused, and not echoed.
        let e = parse(&with(
            "upstream_proxy = \"http://me:canary-pw@proxy.corp:8080\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(":18:18: invalid upstream_proxy: credentials in the proxy URL"),
            "{e}"
        );
        assert!(!e.contains("canary-pw"), "{e}");
        // Nor whatever else is wrong with the line: no scheme, a wrong
        // type, a syntax error.
        for line in [
            "upstream_proxy = \"me:canary-pw@proxy.corp:8080\"",
            "upstream_proxy = [\"http://me:canary-pw@proxy.corp:8080\"]",
            "upstream_proxy = \"http://me:canary-pw@proxy.corp:8080",
            "upstream_proxy = \"me:canary-pw@proxy.corp:8080\" # see http://wiki/proxy",
            // The parser's message repeats the value.
            "resolve = \"http://me:canary-pw@proxy.corp:8080\"",
            "dlp = \"https://canary-pw@proxy.corp\"",
            // A key path names it too.
            "resolve = { \"http://me:canary-pw@proxy.corp\" = \"10.0.0.1:8080\" }",
            // Characters a password may hold that end no token.
            "upstream_proxy = \"http://me:abc=canary-pw@proxy.corp:8080\"",
            "upstream_proxy = \"http://me:canary-pw,x@proxy.corp:8080",
            "upstream_proxy = \"http://me:it'scanary-pw@proxy.corp:8080",
            "upstream_proxy = \"http://me:pa#canary-pw@proxy.corp:8080",
            "upstream_proxy = \"canary-pw-token@proxy.corp:8080",
            "dlp = \"https://me:k=canary-pw@proxy.corp\"",
            "upstream_proxy = \"http://me:ab)canary-pw@proxy.corp:8080\"",
            "dlp = \"http://me:ab(canary-pw@proxy.corp\"",
            "upstream_proxy = \"http://me:canary-pw\\u0040proxy.corp:8080\"",
            // Spaces, quotes and braces in a password end tokens.
            "upstream_proxy = \"http://user:canary{pw}x@proxy.corp:3128\"",
            "upstream_proxy = \"http://user:canary pw@proxy.corp\"",
            "upstream_proxy = \"http://user:canary\\\"pw@proxy.corp\"",
            "upstream_proxy = \"canary-pw@proxy.corp\"",
        ] {
            let e = parse(&with(line)).unwrap_err().to_string();
            assert!(
                !e.contains("canary-pw") && (e.contains("***") || e.contains("= …")),
                "{e}"
            );
        }
        // What is not a credential stays as it is.
        for kept in [
            "dev@example.com",
            "git@github.com:org/repo",
            "img@sha256:ab12",
        ] {
            let e = parse(&with(&format!("upstream_proxy = \"{kept}\" oops")))
                .unwrap_err()
                .to_string();
            assert!(e.contains(kept), "{e}");
        }

        let e = parse(&with("upstream_proxy_auth_ref = \"CORP_PROXY_AUTH\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream_proxy is not"), "{e}");
        let e = parse(&with(
            "upstream_proxy = \"http://proxy.corp:8080\"\nupstream_proxy_auth_ref = \"not a name\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains(":19:27: invalid upstream_proxy_auth_ref"), "{e}");
    }

    /// The head every case below starts from: valid on its own.
    const HEAD: &str = "name = \"demo\"\nbackend = \"docker\"\n\n[agent]\nprovider = \"generic\"\nimage = \"busybox\"\n";

    /// Each case: what follows [`HEAD`], with `#<` ending the line the
    /// error must name, and the key path it must name.
    const WHERE_CASES: &[(&str, &str)] = &[
        // Semantic checks in inline tables and inline arrays of tables.
        (
            "[[egress.route]]\nhost = \"a.example.com\"\ninject = [{ header = \"Auth orization\", value = \"Bearer {token}\", token_ref = \"T\" }] #<\n",
            "egress.route[0].inject[0].header",
        ),
        (
            "[[egress.route]]\nhost = \"a.example.com\"\ninject = [{ header = \"Authorization\", value = \"Bearer {token}\", token_ref = \"ux-token\" }] #<\n",
            "egress.route[0].inject[0].token_ref",
        ),
        (
            "[[egress.route]]\nhost = \"a.example.com\"\ninject = [{ header = \"Authorization\", value = \"Bearer\", token_ref = \"T\" }] #<\n",
            "egress.route[0].inject[0].value",
        ),
        (
            "[[egress.route]]\nhost = \"a.example.com\"\ninject = [{ header = \"Authorization\" }] #<\n",
            "egress.route[0].inject[0].header",
        ),
        (
            "[[egress.route]]\nhost = \"a.example.com\"\n\n[[egress.route.inject]]\nheader = \"X-Key\"\nvalue = \"{token}\"\ntoken_ref = \"bad ref\" #<\n",
            "egress.route[0].inject[0].token_ref",
        ),
        (
            "[egress]\nresolve = { \"api.quickstart.test\" = \"localhost:443\" } #<\n",
            "egress.resolve.\"api.quickstart.test\"",
        ),
        (
            "[egress.resolve]\n\"a.example.com\" = \"10.0.0.1:443\"\n\"*.example.com\" = \"10.0.0.1:443\" #<\n",
            "egress.resolve.\"*.example.com\"",
        ),
        (
            "[egress.resolve]\n\"a.example.com\" = \"10.0.0.1:443\"\n\"b.example.com\" = \"10.0.0.1\" #<\n",
            "egress.resolve.\"b.example.com\"",
        ),
        (
            "[egress]\nroute = [{host=\"ok.example.com\"},{host=\"bad_host\"}] #<\n",
            "egress.route[1].host",
        ),
        // The same key in another table, or in an earlier route.
        (
            "[workspace]\npath = \"proj\"\n\n[[mounts]]\nhost = \"data\"\npath = \"data\" #<\n",
            "mounts[0].path",
        ),
        (
            "[[egress.route]]\nhost = \"a.example.com\"\npath_prefix = \"/v1/\"\n\n[[egress.route]]\nhost = \"b.example.com\"\npath_prefix = \"nope\" #<\n",
            "egress.route[1].path_prefix",
        ),
        (
            "[[mounts]]\nhost = \"data\"\npath = \"/data\"\n\n[[egress.route]]\nhost = \"bad host\" #<\n",
            "egress.route[0].host",
        ),
        (
            "[[egress.route]]\nhost = \"a.example.com\"\nports = [443, 0] #<\n",
            "egress.route[0].ports[1]",
        ),
        (
            "[[egress.route]]\nhost = \"a.example.com\"\n\n[[egress.route]]\nhost = \"b.example.com\"\nmethods = [\"GET\",\n  \"FETCH\", #<\n]\n",
            "egress.route[1].methods[1]",
        ),
        (
            "[egress]\ntls_passthrough = [\"ok.example.com\", \"not ok\"] #<\n",
            "egress.tls_passthrough[1]",
        ),
        (
            "[egress]\nallow_internal = [\"10.0.0.0/8\", \"10.0.0.0/99\"] #<\n",
            "egress.allow_internal[1]",
        ),
        (
            "[egress]\nupstream_proxy_auth_ref = \"PROXY_AUTH\" #<\n",
            "egress.upstream_proxy_auth_ref",
        ),
        (
            "[egress]\nupstream_proxy = \"ftp://proxy.corp:8080\" #<\n",
            "egress.upstream_proxy",
        ),
        ("[env]\nOK = \"1\"\n\"NOT OK\" = \"1\" #<\n", "env.\"NOT OK\""),
        ("env = { OK = \"1\", 9LIVES = \"1\" } #<\n", "agent.env"),
        ("[resources]\ncpus = 1.0\nmemory = \"lots\" #<\n", "resources.memory"),
        ("[resources]\nmemory = \"1g\"\ncpus = 0.0 #<\n", "resources.cpus"),
        ("[agent.options]\nx = 1\n\n[resources]\nmemory = { size = \"lots\" } #<\n", "resources.memory"),
        // Parser errors: the key path comes from where the parser stopped.
        ("[mounts] #<\nhost = \"data\"\npath = \"/data\"\n", "mounts"),
        (
            "[[egress.route]]\nhost = \"a.example.com\"\ninject = [{ header = \"X\", tokn_ref = \"T\" }] #<\n",
            "egress.route[0].inject[0].tokn_ref",
        ),
        (
            "[[egress.route]]\nhost = \"a.example.com\"\n\n[[egress.route]]\nhost = \"b.example.com\"\nports = [\"443\"] #<\n",
            "egress.route[1].ports[0]",
        ),
        ("[egress]\ndlp = \"loud\" #<\n", "egress.dlp"),
        (
            "[[mounts]]\nhost = \"a\"\npath = \"/a\"\n\n[[mounts]] #<\nhost = \"b\"\n",
            "mounts[1]",
        ),
        ("[workspace]\npath = \"proj\"\nwritable = true #<\n", "workspace.writable"),
    ];

    #[test]
    fn every_error_names_its_line_and_key_path() {
        let mut failures = Vec::new();
        for (tail, key) in WHERE_CASES {
            let text = format!("{HEAD}{tail}");
            let line = 1 + text
                .lines()
                .position(|l| l.ends_with("#<"))
                .expect("a case marks its line");
            let e = match parse(&text) {
                Ok(_) => {
                    failures.push(format!("accepted:\n{text}"));
                    continue;
                }
                Err(e) => e.to_string(),
            };
            let at = format!("/tmp/x/bottle.toml:{line}:");
            let named = format!("(key `{key}`)");
            let quoted = format!("  {line} | ");
            if !(e.starts_with(&at) && e.contains(&named) && e.contains(&quoted)) {
                failures.push(format!("want line {line}, key `{key}`; got:\n{e}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    #[test]
    fn a_backend_table_no_backend_owns_is_refused() {
        let with = |table: &str| GOOD.replace("[backends.docker]", table);
        // Kept for switching: bot-bottle's own backends, or an installed one.
        assert!(parse(&with("[backends.smolmachines]"))
            .unwrap()
            .check_backend_tables([])
            .is_ok());
        let m = parse(&with("[backends.firecracker]")).unwrap();
        assert_eq!(
            m.check_backend_tables(["docker", "firecracker"]).unwrap(),
            Vec::<String>::new()
        );
        // Otherwise refused where the table is, with the nearest name.
        let e = parse(&with("[backends.dokcer]"))
            .unwrap()
            .check_backend_tables(["docker", "smolmachines"])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/tmp/x/bottle.toml:23:11: no backend is named `dokcer`"),
            "{e}"
        );
        assert!(e.contains("did you mean `[backends.docker]`?"), "{e}");
        assert!(e.contains("(key `backends.dokcer`)"), "{e}");
        // A name near none is a backend installed elsewhere: a warning, as
        // a manifest shared with people who have it must still run here.
        let w = m.check_backend_tables(["docker"]).unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("/tmp/x/bottle.toml:23: [backends.firecracker] is for a backend not installed here (installed: docker, smolmachines)"),
            "{w:?}"
        );
        // Written as a dotted key, in an inline table.
        let text = GOOD
            .replace("[backends.docker]\nruntime = \"runsc\"", "")
            .replace(
                "backend = \"docker\"\n",
                "backend = \"docker\"\nbackends = { docker = {}, smolmachine = {} }\n",
            );
        let e = parse(&text)
            .unwrap()
            .check_backend_tables([])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(":4:27: no backend is named `smolmachine`"),
            "{e}"
        );
        assert!(e.contains("did you mean `[backends.smolmachines]`?"), "{e}");
    }

    #[test]
    fn errors_after_loading_point_at_their_key() {
        let m = parse(GOOD).unwrap();
        let e = m
            .error_at(
                "backends.docker.runtime",
                "runtime `runsc` is not installed",
            )
            .to_string();
        assert!(e.starts_with("/tmp/x/bottle.toml:24:11: runtime"), "{e}");
        assert!(e.contains("(key `backends.docker.runtime`)"), "{e}");
        // A key not written: its table's line.
        let e = m.error_at("agent.options.greeting", "missing").to_string();
        assert!(e.starts_with("/tmp/x/bottle.toml:10:1: missing"), "{e}");
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("dokcer", "docker"), 1);
        assert_eq!(edit_distance("doker", "docker"), 1);
        assert_eq!(edit_distance("smolmachine", "smolmachines"), 1);
        assert_eq!(edit_distance("firecracker", "docker"), 7);
        assert_eq!(closest("podman", &["docker", "smolmachines"]), None);
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("2g"), Some(2 << 30));
        assert_eq!(parse_memory("512MiB"), Some(512 << 20));
        assert_eq!(parse_memory("1024"), Some(1024));
        assert_eq!(parse_memory("lots"), None);
    }
}
