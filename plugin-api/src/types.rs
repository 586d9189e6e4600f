//! The data that crosses the plugin boundary as versioned JSON.
//!
//! Rules that keep a 1.x host and every 1.x plugin compatible:
//! * every new field is optional (`#[serde(default)]`) and old readers
//!   ignore fields they do not know (no `deny_unknown_fields` here);
//! * fields are never renamed or removed within a major version;
//! * every request carries `schema` ([`crate::PAYLOAD_SCHEMA`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

fn schema_default() -> u32 {
    crate::PAYLOAD_SCHEMA
}

/// Which family a plugin belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    /// Turns an agent section into an [`AgentProvisionPlan`].
    Provider,
    /// Brings a [`LaunchSpec`] up as a bottle.
    Backend,
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Provider => "provider",
            Self::Backend => "backend",
        })
    }
}

/// A plugin's description of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// The name manifests use (`provider = "codex"`, `backend = "docker"`).
    pub name: String,
    /// Provider or backend.
    pub kind: PluginKind,
    /// The plugin's own version.
    pub version: String,
    /// One line for `bottle plugins list`.
    #[serde(default)]
    pub description: String,
    /// The ABI the plugin was built against; filled in by the export helper.
    #[serde(default)]
    pub abi: String,
}

impl PluginInfo {
    /// Describes a provider plugin.
    pub fn provider(name: &str, version: &str, description: &str) -> Self {
        Self::new(name, PluginKind::Provider, version, description)
    }
    /// Describes a backend plugin.
    pub fn backend(name: &str, version: &str, description: &str) -> Self {
        Self::new(name, PluginKind::Backend, version, description)
    }
    fn new(name: &str, kind: PluginKind, version: &str, description: &str) -> Self {
        Self {
            name: name.to_string(),
            kind,
            version: version.to_string(),
            description: description.to_string(),
            abi: crate::ABI_VERSION.to_string(),
        }
    }
}

// ---------------------------------------------------------------- checks

/// Asks a plugin whether it can work on this host (`bottle doctor`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CheckRequest {
    /// Payload schema.
    #[serde(default = "schema_default")]
    pub schema: u32,
    /// The host environment (providers look for credentials here).
    #[serde(default)]
    pub host_env: BTreeMap<String, Secret>,
    /// The plugin's options from a manifest, when one is at hand.
    #[serde(default)]
    pub options: serde_json::Value,
    /// The bottle a manifest describes, when one is at hand (`bottle
    /// doctor -f`): a backend checks what only its engine can tell (the
    /// image is there or can be pulled, a network exists, the limits fit
    /// the engine). Absent from older hosts; older plugins ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bottle: Option<ValidateRequest>,
}

/// A bottle as a backend will be asked to launch it, without the egress
/// half (no secrets, no CA): what [`crate::Backend::validate`] checks at
/// `bottle plan` time, before anything is created, and what `bottle doctor
/// -f` hands [`crate::Backend::check`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ValidateRequest {
    /// Payload schema.
    #[serde(default = "schema_default")]
    pub schema: u32,
    /// The manifest's name.
    pub bottle_name: String,
    /// The agent, as [`LaunchSpec::agent`] will hold it (the CA files the
    /// host adds at launch are not among its files).
    pub agent: AgentLaunch,
    /// The manifest's `[backends.NAME]` table for this backend, as JSON.
    #[serde(default)]
    pub backend_options: serde_json::Value,
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Works.
    Ok,
    /// Works with a limitation.
    Warn,
    /// Does not work until the user acts.
    Error,
}

/// One line of `bottle doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Ok, warn or error.
    pub severity: Severity,
    /// What was checked ("docker daemon", "host credentials").
    pub subject: String,
    /// What was found.
    pub message: String,
    /// What to do, for warnings and errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Finding {
    /// A passing check.
    pub fn ok(subject: &str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Ok,
            subject: subject.into(),
            message: message.into(),
            hint: None,
        }
    }
    /// A limitation.
    pub fn warn(subject: &str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warn,
            subject: subject.into(),
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
    /// A failure the user must fix.
    pub fn error(subject: &str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            subject: subject.into(),
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

/// A plugin's answer to [`CheckRequest`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// One entry per thing checked.
    pub findings: Vec<Finding>,
}

// ---------------------------------------------------------------- prepare

/// Where things live inside the sandbox; the host decides, providers follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxLayout {
    /// The agent user's home directory.
    pub home: String,
    /// Where the bottle CA certificate alone is placed (PEM).
    pub ca_cert_path: String,
    /// Where the CA bundle is placed: the host's public roots plus the
    /// bottle CA. Every CA-trust variable points here, so clients that
    /// replace (rather than extend) their roots still reach passthrough hosts.
    #[serde(default = "default_bundle_path")]
    pub ca_bundle_path: String,
    /// Where the workspace is mounted (the agent's working directory).
    pub workspace: String,
}

impl Default for SandboxLayout {
    fn default() -> Self {
        Self {
            home: "/home/agent".into(),
            ca_cert_path: "/etc/bot-bottle/ca.pem".into(),
            ca_bundle_path: default_bundle_path(),
            workspace: "/workspace".into(),
        }
    }
}

fn default_bundle_path() -> String {
    "/etc/bot-bottle/ca-bundle.pem".into()
}

/// What the host gives a provider at prepare time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrepareRequest {
    /// Payload schema.
    #[serde(default = "schema_default")]
    pub schema: u32,
    /// The bottle's name from the manifest.
    pub bottle_name: String,
    /// The `[agent]` table of the manifest except `provider`, as JSON: the
    /// provider's own options (`forward_host_credentials`, …).
    #[serde(default)]
    pub options: serde_json::Value,
    /// The host environment. Values are secrets until proven otherwise.
    #[serde(default)]
    pub host_env: BTreeMap<String, Secret>,
    /// Paths inside the sandbox.
    #[serde(default)]
    pub sandbox: SandboxLayout,
}

/// How a file's bytes are written in JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileEncoding {
    /// UTF-8 text.
    #[default]
    Utf8,
    /// Standard base64 of arbitrary bytes.
    Base64,
}

/// A file to place in the sandbox before the agent starts (dummy credential
/// files, configuration). Never a real secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxFile {
    /// Absolute path inside the sandbox.
    pub path: String,
    /// The contents, encoded as [`SandboxFile::encoding`] says.
    pub contents: String,
    /// How `contents` is encoded.
    #[serde(default)]
    pub encoding: FileEncoding,
    /// Unix permission bits.
    #[serde(default = "default_mode")]
    pub mode: u32,
}

fn default_mode() -> u32 {
    0o644
}

impl SandboxFile {
    /// A text file with the given mode.
    pub fn text(path: impl Into<String>, contents: impl Into<String>, mode: u32) -> Self {
        Self {
            path: path.into(),
            contents: contents.into(),
            encoding: FileEncoding::Utf8,
            mode,
        }
    }
}

/// A header the egress proxy sets on matching requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderInjection {
    /// Header name (`Authorization`, `x-api-key`, …).
    pub header: String,
    /// Value template; `{token}` is replaced by the resolved token ref.
    #[serde(default = "default_template")]
    pub value: String,
    /// The env name whose value fills `{token}`. `None` for a literal value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ref: Option<String>,
}

fn default_template() -> String {
    "{token}".into()
}

/// One allowed way out of the bottle, optionally carrying a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRoute {
    /// Exact host or `*.suffix` wildcard.
    pub host: String,
    /// Only paths under this prefix match (on the normalised path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Only these methods match; empty means any (TRACE is always refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Headers the proxy sets; client-sent copies are replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inject: Vec<HeaderInjection>,
    /// Allow this route over plain HTTP (injection over plain HTTP happens
    /// only when this is set).
    #[serde(default)]
    pub plain_http: bool,
    /// Ports this route allows; empty means the scheme's own: 443 for
    /// HTTPS, 80 for plain HTTP. (A route's credential goes to the ports it
    /// names only, never to whatever service listens elsewhere on the host.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Who asked for the route (`manifest`, `provider:codex`), for `bottle plan`.
    #[serde(default)]
    pub source: String,
}

impl EgressRoute {
    /// A host-only route with no credential.
    pub fn allow(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            path_prefix: None,
            methods: vec![],
            inject: vec![],
            plain_http: false,
            ports: vec![],
            source: String::new(),
        }
    }
    /// The token refs this route's headers need.
    pub fn token_refs(&self) -> impl Iterator<Item = &str> {
        self.inject.iter().filter_map(|h| h.token_ref.as_deref())
    }
}

/// What a provider contributes to a bottle.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentProvisionPlan {
    /// Payload schema.
    #[serde(default = "schema_default")]
    pub schema: u32,
    /// Env for the agent. Never a real secret (dummies only).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Files to place in the sandbox (dummy credential files).
    #[serde(default)]
    pub files: Vec<SandboxFile>,
    /// Env names the agent's clients read for extra CA trust; the host sets
    /// each to the bottle CA certificate's path.
    #[serde(default)]
    pub ca_trust_env: Vec<String>,
    /// Routes the agent needs (API hosts, with their credentials by ref).
    #[serde(default)]
    pub egress_routes: Vec<EgressRoute>,
    /// Hosts tunnelled without decryption.
    #[serde(default)]
    pub tls_passthrough: Vec<String>,
    /// Host-side secrets read at prepare time, by ref name. The host merges
    /// them over its own env (these win) before resolving token refs. They
    /// go to the egress proxy only, never into the sandbox.
    #[serde(default)]
    pub provisioned_env: BTreeMap<String, Secret>,
    /// The agent command to run when the manifest names none.
    #[serde(default)]
    pub default_command: Vec<String>,
    /// Requests the egress proxy answers itself and never forwards (OAuth
    /// refresh of a forwarded login, answered with fresh dummies).
    #[serde(default)]
    pub local_responses: Vec<LocalResponse>,
    /// Host files the credentials came from. While the bottle runs, the host
    /// watches them; on a change it calls `prepare` again and pushes the new
    /// token values and local responses into the running proxy.
    #[serde(default)]
    pub credential_sources: Vec<PathBuf>,
    /// Every host file where the agent's tool keeps credentials (or settings
    /// that hold secrets), whichever credential this bottle uses: the host
    /// refuses a mount, read-only or not, that holds one. Unlike
    /// [`AgentProvisionPlan::credential_sources`] they are not watched, so a
    /// file the tool rewrites often costs nothing. Added in ABI 1.0 as an
    /// optional field: an older provider sends none, and its
    /// `credential_sources` alone are protected.
    #[serde(default)]
    pub protected_paths: Vec<PathBuf>,
    /// Human notes for `bottle plan` (what was found, what was forwarded).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// A canned answer the egress proxy gives for one host + path + method,
/// without contacting the upstream. The body holds dummies only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalResponse {
    /// Exact host.
    pub host: String,
    /// Exact (normalised) path, without the query.
    pub path: String,
    /// Method; default `POST`.
    #[serde(default = "default_post")]
    pub method: String,
    /// Status code; default 200.
    #[serde(default = "default_ok")]
    pub status: u16,
    /// Content type; default `application/json`.
    #[serde(default = "default_json")]
    pub content_type: String,
    /// The body (dummies only: it is served to the agent).
    pub body: String,
}

fn default_post() -> String {
    "POST".into()
}
fn default_ok() -> u16 {
    200
}
fn default_json() -> String {
    "application/json".into()
}

/// New egress secrets for a running bottle (live credential rotation).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EgressUpdate {
    /// Payload schema.
    #[serde(default = "schema_default")]
    pub schema: u32,
    /// Bottle id.
    pub bottle_id: String,
    /// The proxy's whole new config (JSON, with secrets). The backend puts
    /// it where the running proxy reads it, by a path the sandbox cannot
    /// reach, and tells the proxy to reload (SIGHUP).
    pub config: Secret,
}

// ---------------------------------------------------------------- launch

/// A host path made visible in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute host path.
    pub host: PathBuf,
    /// Absolute path inside the sandbox.
    pub sandbox: String,
    /// Read-only unless set.
    #[serde(default)]
    pub writable: bool,
}

/// Resource limits; `None` means the backend's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// CPUs (fractional allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Maximum number of processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// The agent side of a launch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentLaunch {
    /// Image reference (local or pullable), or a path to a `docker save`
    /// archive for backends that support it.
    pub image: String,
    /// Command and arguments.
    pub command: Vec<String>,
    /// Env for the agent, complete except for the proxy variables the
    /// backend adds (it alone knows the proxy's address).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Files to place before start (dummy credentials, the CA certificate).
    #[serde(default)]
    pub files: Vec<SandboxFile>,
    /// Working directory.
    pub workdir: String,
    /// Mounts; the workspace is the writable one.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Limits.
    #[serde(default)]
    pub resources: Resources,
    /// Allocate a terminal.
    #[serde(default)]
    pub tty: bool,
    /// Keep stdin open.
    #[serde(default)]
    pub interactive: bool,
    /// The host calls `wait` with `attach` right after `launch` (`bottle
    /// run` without `--detach`). A backend that can should connect to the
    /// agent's output (and stdin) before the agent starts, so that nothing
    /// it prints is lost between its start and the attach.
    #[serde(default)]
    pub attached: bool,
}

/// The egress side of a launch: everything a backend needs to run the proxy
/// for this bottle, already resolved by the host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EgressLaunch {
    /// Host path of the program that serves the proxy (`bottle`, run as
    /// `bottle egress serve --config FILE`).
    pub program: PathBuf,
    /// The proxy's whole config as JSON, including resolved token values and
    /// the CA key. Goes to the proxy only: never the agent, a label, a log or
    /// a command line.
    pub config: Secret,
    /// Port the proxy listens on for the agent.
    pub listen_port: u16,
    /// The bottle CA certificate (PEM, public).
    pub ca_cert_pem: String,
}

/// The memory an egress proxy whose config is `config` (its JSON) may use,
/// in bytes: [`EGRESS_MEMORY_BASE`] plus [`EGRESS_MEMORY_PER_BODY`] times
/// its `dlp.max_body_bytes` (default 1 MiB; a config that does not parse
/// gets the default). Every backend bounds its proxy by it (Docker: the
/// sidecar's memory limit, no swap; smolmachines: the gate's data limit).
/// The proxy bounds what it holds per request and per stream, but not
/// everything across all of them (docs/egress.md, "Limits and known
/// gaps": an agent that controls an allowed upstream and reads none of
/// its answers can make it hold ~20 MB a stream). The limit keeps that
/// inside the bottle: the proxy is stopped, the agent with it (fail
/// closed) and told why, and the machine keeps its memory.
pub fn egress_memory_limit(config: &str) -> u64 {
    let max_body = serde_json::from_str::<serde_json::Value>(config)
        .ok()
        .and_then(|c| c.pointer("/dlp/max_body_bytes")?.as_u64())
        .unwrap_or(1 << 20);
    EGRESS_MEMORY_BASE.saturating_add(max_body.saturating_mul(EGRESS_MEMORY_PER_BODY))
}

/// What the proxy may use besides its held bodies: it runs in ~10-50 MiB,
/// and each pooled HTTP/2 upstream connection may take up to 32 MiB of
/// answers a client is slow to read.
pub const EGRESS_MEMORY_BASE: u64 = 512 << 20;
/// Held bodies: the DLP's shared budget is 32 of them, a compressed one
/// may be held at up to 8, and the held copies of a body read for its
/// `_method` field come on top.
pub const EGRESS_MEMORY_PER_BODY: u64 = 64;

/// Everything a backend needs to bring a bottle up. Backends do not resolve
/// secrets and do not know about providers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Payload schema.
    #[serde(default = "schema_default")]
    pub schema: u32,
    /// Unique id of this bottle run (`bb-<name>-<random>`); every resource
    /// the backend makes is labelled with it.
    pub bottle_id: String,
    /// The manifest's name.
    pub bottle_name: String,
    /// The agent.
    pub agent: AgentLaunch,
    /// The egress proxy.
    pub egress: EgressLaunch,
    /// The manifest's `[backends.NAME]` table for the chosen backend, as JSON.
    #[serde(default)]
    pub backend_options: serde_json::Value,
    /// Labels to put on every resource (in addition to the bottle id).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// What `launch` returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BottleHandle {
    /// The bottle id from the spec.
    pub bottle_id: String,
    /// Backend-specific details for `bottle ls --json` (never secrets).
    #[serde(default)]
    pub details: serde_json::Value,
}

/// Names one bottle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BottleRef {
    /// Payload schema.
    #[serde(default = "schema_default")]
    pub schema: u32,
    /// The bottle id (or a unique prefix / the manifest name; backends match
    /// ids exactly, the host resolves names first).
    pub bottle_id: String,
}

/// Which bottles to list.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListRequest {
    /// Payload schema.
    #[serde(default = "schema_default")]
    pub schema: u32,
}

/// One bottle in `bottle ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BottleStatus {
    /// Bottle id.
    pub bottle_id: String,
    /// Manifest name.
    pub name: String,
    /// Backend name.
    pub backend: String,
    /// `running`, `exited`, `created`, `broken` …
    pub state: String,
    /// Agent image.
    #[serde(default)]
    pub image: String,
    /// Creation time, RFC 3339, when known.
    #[serde(default)]
    pub created: String,
    /// Backend-specific details (never secrets).
    #[serde(default)]
    pub details: serde_json::Value,
}

/// Which logs to print.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogsRequest {
    /// Payload schema.
    #[serde(default = "schema_default")]
    pub schema: u32,
    /// Bottle id.
    pub bottle_id: String,
    /// The egress proxy's audit log instead of the agent's output.
    #[serde(default)]
    pub egress: bool,
    /// Keep following.
    #[serde(default)]
    pub follow: bool,
}

/// Wait for the agent to finish, optionally attached to this terminal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaitRequest {
    /// Payload schema.
    #[serde(default = "schema_default")]
    pub schema: u32,
    /// Bottle id.
    pub bottle_id: String,
    /// Attach the process's stdin/stdout/stderr to the agent.
    #[serde(default)]
    pub attach: bool,
}

/// How the agent (or an exec) ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitReport {
    /// The process's exit code (128+N for signal N).
    pub exit_code: i32,
    /// Why, when it was not a normal exit (`egress proxy died`, `oom`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Run a command in a running bottle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Payload schema.
    #[serde(default = "schema_default")]
    pub schema: u32,
    /// Bottle id.
    pub bottle_id: String,
    /// Command and arguments.
    pub command: Vec<String>,
    /// Allocate a terminal.
    #[serde(default)]
    pub tty: bool,
}

/// Remove bottles and what they made.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemoveRequest {
    /// Payload schema.
    #[serde(default = "schema_default")]
    pub schema: u32,
    /// This bottle; `None` with `garbage` set removes every leftover.
    #[serde(default)]
    pub bottle_id: Option<String>,
    /// Remove everything labelled as ours whose bottle is gone.
    #[serde(default)]
    pub garbage: bool,
    /// Also remove cached images the backend built.
    #[serde(default)]
    pub images: bool,
}

/// What `remove` removed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemoveReport {
    /// One line per removed resource (`container bb-x-agent`).
    pub removed: Vec<String>,
}

/// Whether `s` is a name a process environment can carry and a shell can
/// set: letters, digits and `_`, not starting with a digit. Providers check
/// the env names they take from options with it, as the host checks the
/// manifest's.
pub fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod memory_limit_tests {
    use super::egress_memory_limit;

    #[test]
    fn the_proxys_memory_limit_grows_with_the_bodies_it_may_hold() {
        const MIB: u64 = 1 << 20;
        assert_eq!(egress_memory_limit("{}"), 576 * MIB);
        assert_eq!(egress_memory_limit("not json"), 576 * MIB);
        assert_eq!(
            egress_memory_limit(r#"{"dlp":{"max_body_bytes":8388608}}"#),
            (512 + 64 * 8) * MIB
        );
        assert_eq!(
            egress_memory_limit(&format!(r#"{{"dlp":{{"max_body_bytes":{}}}}}"#, u64::MAX)),
            u64::MAX
        );
    }
}
