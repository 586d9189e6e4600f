//! The `claude` agent provider: Claude Code, with the host's login or API key
//! forwarded through the egress proxy.
//!
//! ```toml
//! [agent]
//! provider = "claude"
//! image = "bot-bottle/claude:latest"
//!
//! [agent.options]
//! forward_host_credentials = true   # forward `claude login` (~/.claude/.credentials.json)
//! ```
//!
//! Three ways in; in every one the agent holds dummies only and the proxy
//! sets the real credential on `api.anthropic.com`:
//!
//! * **Subscription login** (`forward_host_credentials = true`, the host's
//!   `.credentials.json`): `Authorization: Bearer` from
//!   [`CLAUDE_HOST_OAUTH_TOKEN_REF`]; the sandbox gets a dummy
//!   `.credentials.json` whose `expiresAt` is the real one, and the proxy
//!   answers the OAuth refresh (`POST platform.claude.com/v1/oauth/token`)
//!   with dummies.
//! * **Long-lived token** (`CLAUDE_CODE_OAUTH_TOKEN` on the host, from
//!   `claude setup-token`): the same bearer route; the agent gets a dummy
//!   `CLAUDE_CODE_OAUTH_TOKEN`.
//! * **API key** (`ANTHROPIC_API_KEY` on the host): `x-api-key` from
//!   [`CLAUDE_HOST_API_KEY_REF`]; the agent gets a dummy `ANTHROPIC_API_KEY`.

mod error;
mod host;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bot_bottle_plugin_api::{
    export_provider, AgentProvisionPlan, CheckReport, CheckRequest, EgressRoute, Finding,
    HeaderInjection, LocalResponse, PluginError, PluginInfo, PrepareRequest, Provider, SandboxFile,
    SandboxLayout, Secret,
};
use serde::Deserialize;
use serde_json::{json, Value};

pub use error::ClaudeError;
use host::FileLogin;
pub use host::INFERENCE_SCOPE;

/// The ref under which the host's real OAuth access token is provisioned.
pub const CLAUDE_HOST_OAUTH_TOKEN_REF: &str = "CLAUDE_HOST_OAUTH_TOKEN_REF";
/// The ref under which the host's real Anthropic API key is provisioned.
pub const CLAUDE_HOST_API_KEY_REF: &str = "CLAUDE_HOST_API_KEY_REF";

/// The access token the agent holds. It keeps the `sk-ant-oat01-` prefix
/// Claude Code uses to tell OAuth tokens from API keys, and is far too short
/// for any secret scanner to take it for a real one.
pub const DUMMY_ACCESS_TOKEN: &str = "sk-ant-oat01-bot-bottle-dummy-access-token";
/// The refresh token the agent holds.
pub const DUMMY_REFRESH_TOKEN: &str = "sk-ant-ort01-bot-bottle-dummy-refresh-token";
/// The API key the agent holds.
pub const DUMMY_API_KEY: &str = "sk-ant-api03-bot-bottle-dummy-api-key";

/// The API host every credential is injected on.
pub const API_HOST: &str = "api.anthropic.com";
/// Hosts of the OAuth token endpoint: current, and the one older clients use.
pub const REFRESH_HOSTS: &[&str] = &["platform.claude.com", "console.anthropic.com"];
/// Path of the OAuth token endpoint on [`REFRESH_HOSTS`].
pub const REFRESH_PATH: &str = "/v1/oauth/token";

/// CA-trust variables: Claude Code (a Bun binary) reads
/// `NODE_EXTRA_CA_CERTS`; the rest cover the tools it runs.
pub const CA_TRUST_ENV: &[&str] = &[
    "NODE_EXTRA_CA_CERTS",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
];

/// `[agent.options]` of provider `claude`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// Forward the host's `claude login`.
    #[serde(default)]
    forward_host_credentials: bool,
}

impl Options {
    fn parse(v: &Value) -> Result<Self, ClaudeError> {
        let map = match v {
            Value::Null => return Ok(Self::default()),
            Value::Object(m) => m,
            _ => return Err(ClaudeError::OptionsNotTable),
        };
        // Check key by key first, so every message names its key.
        for (key, value) in map {
            match key.as_str() {
                "forward_host_credentials" if !value.is_boolean() => {
                    return Err(ClaudeError::OptionType {
                        key: key.clone(),
                        expected: "true or false",
                    })
                }
                "forward_host_credentials" => {}
                _ => return Err(ClaudeError::UnknownOption { key: key.clone() }),
            }
        }
        serde_json::from_value(v.clone()).map_err(|_| ClaudeError::OptionsNotTable)
    }
}

/// Where the credential the agent will use comes from.
#[derive(Debug)]
enum Credential {
    /// `.credentials.json`.
    Subscription(FileLogin),
    /// `CLAUDE_CODE_OAUTH_TOKEN`.
    OauthToken(Secret),
    /// `ANTHROPIC_API_KEY`.
    ApiKey(Secret),
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Picks the credential. Forwarding: the long-lived token, else the login
/// file, else (with a note) the API key. Not forwarding: the API key, else
/// the long-lived token.
fn resolve(
    options: &Options,
    host_env: &BTreeMap<String, Secret>,
    now_ms: i64,
) -> Result<(Credential, Vec<String>), ClaudeError> {
    let path = host::credentials_path(host_env);
    let oauth_env = host::env_secret(host_env, "CLAUDE_CODE_OAUTH_TOKEN");
    let api_key = host::env_secret(host_env, "ANTHROPIC_API_KEY");
    let mut notes = Vec::new();
    if options.forward_host_credentials {
        if let Some(t) = oauth_env {
            return Ok((Credential::OauthToken(t), notes));
        }
        let path = path.ok_or(ClaudeError::NoHome)?;
        if let Some(login) = host::read_credentials(&path, now_ms)? {
            return Ok((Credential::Subscription(login), notes));
        }
        return match api_key {
            Some(k) => {
                notes.push(format!(
                    "no Claude Code login at {}; using the API key in ANTHROPIC_API_KEY instead",
                    path.display()
                ));
                Ok((Credential::ApiKey(k), notes))
            }
            None => Err(ClaudeError::Missing { path }),
        };
    }
    match (api_key, oauth_env) {
        (Some(k), _) => Ok((Credential::ApiKey(k), notes)),
        (None, Some(t)) => Ok((Credential::OauthToken(t), notes)),
        (None, None) => Err(ClaudeError::NoCredential {
            path: path
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "~/.claude/.credentials.json".into()),
        }),
    }
}

fn home(sandbox: &SandboxLayout) -> &str {
    sandbox.home.trim_end_matches('/')
}

fn pretty(v: &Value) -> String {
    // Serialising a `Value` cannot fail.
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

/// The sandbox's dummy `.credentials.json`: same expiry, scopes and plan as
/// the real login, dummy tokens.
fn dummy_credentials(login: &FileLogin) -> String {
    let mut oauth = json!({
        "accessToken": DUMMY_ACCESS_TOKEN,
        "refreshToken": DUMMY_REFRESH_TOKEN,
        "expiresAt": login.expires_at_ms,
        "scopes": login.scopes,
    });
    if let Some(s) = &login.subscription_type {
        oauth["subscriptionType"] = json!(s);
    }
    if let Some(t) = &login.rate_limit_tier {
        oauth["rateLimitTier"] = json!(t);
    }
    pretty(&json!({ "claudeAiOauth": oauth }))
}

/// The proxy's answer to a refresh: dummies, expiring with the real login.
fn refresh_body(login: &FileLogin, now_ms: i64) -> String {
    // A login without expiry gets a year, as `claude setup-token` tokens do.
    let expires_in = login
        .expires_at_ms
        .map(|e| ((e - now_ms) / 1000).max(1))
        .unwrap_or(365 * 24 * 3600);
    json!({
        "token_type": "Bearer",
        "access_token": DUMMY_ACCESS_TOKEN,
        "refresh_token": DUMMY_REFRESH_TOKEN,
        "expires_in": expires_in,
        "scope": login.scopes.join(" "),
    })
    .to_string()
}

/// `~/.claude.json`: skips the first-run onboarding, and pre-approves the
/// dummy API key (Claude Code asks once per key, by its last 20 characters).
fn claude_json(api_key_mode: bool) -> String {
    let mut v = json!({ "hasCompletedOnboarding": true });
    if api_key_mode {
        let tail: String = {
            let k = DUMMY_API_KEY.trim();
            k[k.len().saturating_sub(20)..].to_string()
        };
        v["customApiKeyResponses"] = json!({ "approved": [tail], "rejected": [] });
    }
    pretty(&v)
}

/// The routes to the API with `inject`: the API itself (`/v1/`, every
/// method), and reads of the account endpoints under `/api/` (profile,
/// usage, settings, the CLI's bootstrap). Nothing else on the host: a POST
/// to `/api/oauth/claude_cli/create_api_key` with the forwarded login
/// would hand the agent a permanent API key in the response body, a real
/// credential the proxy could not take back; the CLI calls it only while
/// logging in, which the bottle never does. The other `/api/` writes
/// (feedback, telemetry, notices seen) are not needed to work.
fn api_routes(inject: HeaderInjection) -> [EgressRoute; 2] {
    let route = |prefix: &str, methods: &[&str]| EgressRoute {
        path_prefix: Some(prefix.into()),
        methods: methods.iter().map(|m| m.to_string()).collect(),
        inject: vec![inject.clone()],
        ..EgressRoute::allow(API_HOST)
    };
    [route("/v1/", &[]), route("/api/", &["GET", "HEAD"])]
}

fn bearer_routes() -> [EgressRoute; 2] {
    api_routes(HeaderInjection {
        header: "Authorization".into(),
        value: "Bearer {token}".into(),
        token_ref: Some(CLAUDE_HOST_OAUTH_TOKEN_REF.into()),
    })
}

/// Builds the plan for `request` as of `now_ms` (unix milliseconds).
pub fn prepare_at(
    request: &PrepareRequest,
    now_ms: i64,
) -> Result<AgentProvisionPlan, ClaudeError> {
    let options = Options::parse(&request.options)?;
    let (credential, notes) = resolve(&options, &request.host_env, now_ms)?;
    let home = home(&request.sandbox);

    let mut plan = AgentProvisionPlan {
        default_command: vec!["claude".into()],
        ca_trust_env: CA_TRUST_ENV.iter().map(|s| s.to_string()).collect(),
        notes,
        protected_paths: host::protected_paths(&request.host_env),
        ..Default::default()
    };
    // The bottle denies telemetry, error reporting and auto-update hosts
    // anyway; this stops Claude Code from trying.
    plan.env.insert(
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".into(),
        "1".into(),
    );
    let api_key_mode = matches!(credential, Credential::ApiKey(_));
    plan.files.push(SandboxFile::text(
        format!("{home}/.claude.json"),
        claude_json(api_key_mode),
        0o600,
    ));

    match credential {
        Credential::Subscription(login) => {
            plan.files.push(SandboxFile::text(
                format!("{home}/.claude/.credentials.json"),
                dummy_credentials(&login),
                0o600,
            ));
            plan.provisioned_env.insert(
                CLAUDE_HOST_OAUTH_TOKEN_REF.into(),
                login.access_token.clone(),
            );
            plan.egress_routes.extend(bearer_routes());
            let body = refresh_body(&login, now_ms);
            for host in REFRESH_HOSTS {
                plan.local_responses.push(LocalResponse {
                    host: (*host).into(),
                    path: REFRESH_PATH.into(),
                    method: "POST".into(),
                    status: 200,
                    content_type: "application/json".into(),
                    body: body.clone(),
                });
            }
            plan.credential_sources.push(login.path.clone());
            plan.notes.push(format!(
                "forwarding the Claude Code login in {} ({}); {}; the agent holds dummy tokens",
                login.path.display(),
                login
                    .subscription_type
                    .as_deref()
                    .map(|s| format!("subscription {s}"))
                    .unwrap_or_else(|| "subscription unknown".into()),
                login
                    .expires_at_ms
                    .map(|e| format!("the host's token is valid until {}", host::rfc3339_ms(e)))
                    .unwrap_or_else(|| "the host's token does not expire".into()),
            ));
        }
        Credential::OauthToken(token) => {
            plan.env
                .insert("CLAUDE_CODE_OAUTH_TOKEN".into(), DUMMY_ACCESS_TOKEN.into());
            plan.provisioned_env
                .insert(CLAUDE_HOST_OAUTH_TOKEN_REF.into(), token);
            plan.egress_routes.extend(bearer_routes());
            plan.notes.push(
                "using the host's CLAUDE_CODE_OAUTH_TOKEN; the agent holds a dummy token".into(),
            );
        }
        Credential::ApiKey(key) => {
            plan.env
                .insert("ANTHROPIC_API_KEY".into(), DUMMY_API_KEY.into());
            plan.provisioned_env
                .insert(CLAUDE_HOST_API_KEY_REF.into(), key);
            plan.egress_routes.extend(api_routes(HeaderInjection {
                header: "x-api-key".into(),
                value: "{token}".into(),
                token_ref: Some(CLAUDE_HOST_API_KEY_REF.into()),
            }));
            plan.notes
                .push("using the host's ANTHROPIC_API_KEY; the agent holds a dummy key".into());
        }
    }
    Ok(plan)
}

/// `bottle doctor` findings as of `now_ms`.
pub fn check_at(request: &CheckRequest, now_ms: i64) -> CheckReport {
    const SUBJECT: &str = "host credentials";
    let mut findings = Vec::new();
    let path = host::credentials_path(&request.host_env);
    if let Some(path) = &path {
        match host::read_credentials(path, now_ms) {
            Ok(Some(login)) => findings.push(Finding::ok(
                SUBJECT,
                format!(
                    "Claude Code login in {} ({}); forwarded when [agent.options] sets forward_host_credentials = true",
                    path.display(),
                    login
                        .expires_at_ms
                        .map(|e| format!("token valid until {}", host::rfc3339_ms(e)))
                        .unwrap_or_else(|| "token does not expire".into())
                ),
            )),
            Ok(None) => {}
            Err(e) => {
                let e = PluginError::from(e);
                findings.push(Finding::error(
                    SUBJECT,
                    e.message,
                    e.hint.unwrap_or_default(),
                ));
            }
        }
    }
    for var in ["CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_API_KEY"] {
        if host::env_secret(&request.host_env, var).is_some() {
            findings.push(Finding::ok(SUBJECT, format!("{var} is set")));
        }
    }
    if findings.is_empty() {
        findings.push(Finding::warn(
            SUBJECT,
            format!(
                "no Claude Code login at {} and neither CLAUDE_CODE_OAUTH_TOKEN nor ANTHROPIC_API_KEY is set",
                path.map(|p| p.display().to_string())
                    .unwrap_or_else(|| "~/.claude/.credentials.json".into())
            ),
            "run `claude login` on the host (and set forward_host_credentials = true), or `claude setup-token` and export CLAUDE_CODE_OAUTH_TOKEN, or export ANTHROPIC_API_KEY",
        ));
    }
    CheckReport { findings }
}

/// The provider.
#[derive(Debug, Default)]
pub struct Claude;

impl Provider for Claude {
    fn info(&self) -> PluginInfo {
        PluginInfo::provider(
            "claude",
            env!("CARGO_PKG_VERSION"),
            "Claude Code; forwards the host's `claude login`, setup token or API key through the egress proxy",
        )
    }

    fn check(&self, request: CheckRequest) -> Result<CheckReport, PluginError> {
        Ok(check_at(&request, now_ms()))
    }

    fn prepare(&self, request: PrepareRequest) -> Result<AgentProvisionPlan, PluginError> {
        prepare_at(&request, now_ms()).map_err(PluginError::from)
    }
}

export_provider!(Claude);

#[cfg(test)]
mod tests;
