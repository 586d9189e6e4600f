//! The `codex` agent provider: the OpenAI Codex CLI, with the host's login
//! forwarded through the egress proxy.
//!
//! ```toml
//! [agent]
//! provider = "codex"
//! image = "bot-bottle/codex:latest"
//!
//! [agent.options]
//! forward_host_credentials = true   # forward `codex login` from ~/.codex/auth.json
//! ```
//!
//! Two ways in, and in both the agent holds dummies only:
//!
//! * **ChatGPT sign-in** (`forward_host_credentials = true` and a ChatGPT
//!   login in the host's `auth.json`): the real access token goes into
//!   `provisioned_env` under [`CODEX_HOST_CREDENTIAL_TOKEN_REF`]; the proxy
//!   sets it as `Authorization: Bearer` on `chatgpt.com/backend-api/`. The
//!   sandbox gets a dummy `auth.json` Codex accepts (JWTs whose `exp` is the
//!   real token's), and the proxy answers Codex's refresh call
//!   (`POST auth.openai.com/oauth/token`) itself with more dummies.
//! * **API key** (`CODEX_API_KEY` / `OPENAI_API_KEY` on the host, or an
//!   API-key login in `auth.json`): the real key goes into `provisioned_env`
//!   under [`CODEX_HOST_API_KEY_REF`]; the proxy sets it as `Bearer` on
//!   `api.openai.com` and `chatgpt.com/backend-api/codex/`.

mod error;
mod host;
mod jwt;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bot_bottle_plugin_api::{
    export_provider, AgentProvisionPlan, CheckReport, CheckRequest, EgressRoute, Finding,
    HeaderInjection, LocalResponse, PluginError, PluginInfo, PrepareRequest, Provider, SandboxFile,
    SandboxLayout, Secret,
};
use serde::Deserialize;
use serde_json::{json, Value};

pub use error::CodexError;
pub use host::API_KEY_ENV;
use host::{ChatgptLogin, HostLogin};

/// The ref under which the host's real ChatGPT access token is provisioned.
pub const CODEX_HOST_CREDENTIAL_TOKEN_REF: &str = "CODEX_HOST_CREDENTIAL_TOKEN_REF";
/// The ref under which the host's real OpenAI API key is provisioned.
pub const CODEX_HOST_API_KEY_REF: &str = "CODEX_HOST_API_KEY_REF";

/// The API key the agent sees in API-key mode. Deliberately not shaped like
/// an OpenAI key, so the proxy's DLP stage never mistakes it for one.
pub const DUMMY_API_KEY: &str = "bot-bottle-dummy-openai-api-key";
/// The refresh token in the sandbox's `auth.json` and in refresh answers.
pub const DUMMY_REFRESH_TOKEN: &str = "bot-bottle-dummy-refresh-token";

/// CA-trust variables: Codex (rustls) reads `CODEX_CA_CERTIFICATE`, falling
/// back to `SSL_CERT_FILE`; the rest cover the tools Codex runs (curl, git,
/// Python, Node).
pub const CA_TRUST_ENV: &[&str] = &[
    "CODEX_CA_CERTIFICATE",
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
];

/// Host and path of Codex's OAuth refresh call.
pub const REFRESH_HOST: &str = "auth.openai.com";
/// See [`REFRESH_HOST`].
pub const REFRESH_PATH: &str = "/oauth/token";
/// Codex revokes its tokens here on `codex logout`; answered locally too, so
/// the dummies never leave the bottle.
pub const REVOKE_PATH: &str = "/oauth/revoke";

/// `[agent.options]` of provider `codex`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// Forward the host's `codex login` (`auth.json`).
    #[serde(default)]
    forward_host_credentials: bool,
}

impl Options {
    fn parse(v: &Value) -> Result<Self, CodexError> {
        let map = match v {
            Value::Null => return Ok(Self::default()),
            Value::Object(m) => m,
            _ => return Err(CodexError::OptionsNotTable),
        };
        // Check key by key first, so every message names its key.
        for (key, value) in map {
            match key.as_str() {
                "forward_host_credentials" if !value.is_boolean() => {
                    return Err(CodexError::OptionType {
                        key: key.clone(),
                        expected: "true or false",
                    })
                }
                "forward_host_credentials" => {}
                _ => return Err(CodexError::UnknownOption { key: key.clone() }),
            }
        }
        serde_json::from_value(v.clone()).map_err(|_| CodexError::OptionsNotTable)
    }
}

/// Where the credential the agent will use comes from.
#[derive(Debug)]
enum Credential {
    Chatgpt(ChatgptLogin),
    ApiKey {
        key: Secret,
        source: String,
        file: Option<std::path::PathBuf>,
    },
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Picks the credential: the forwarded login when asked for and present,
/// else an API key from the host env.
fn resolve(
    options: &Options,
    host_env: &BTreeMap<String, Secret>,
    now: i64,
) -> Result<(Credential, Vec<String>), CodexError> {
    let path = host::auth_json_path(host_env);
    let mut notes = Vec::new();
    if options.forward_host_credentials {
        let path = path.ok_or(CodexError::NoHome)?;
        match host::read_auth_json(&path, now)? {
            Some(HostLogin::Chatgpt(login)) => return Ok((Credential::Chatgpt(login), notes)),
            Some(HostLogin::ApiKey { path, key }) => {
                return Ok((
                    Credential::ApiKey {
                        key,
                        source: path.display().to_string(),
                        file: Some(path),
                    },
                    notes,
                ))
            }
            None => match host::env_api_key(host_env) {
                Some((var, key)) => {
                    notes.push(format!(
                        "no Codex login at {}; using the API key in {var} instead",
                        path.display()
                    ));
                    return Ok((
                        Credential::ApiKey {
                            key,
                            source: var.to_string(),
                            file: None,
                        },
                        notes,
                    ));
                }
                None => return Err(CodexError::Missing { path }),
            },
        }
    }
    match host::env_api_key(host_env) {
        Some((var, key)) => Ok((
            Credential::ApiKey {
                key,
                source: var.to_string(),
                file: None,
            },
            notes,
        )),
        None => Err(CodexError::NoCredential {
            path: path
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "~/.codex/auth.json".into()),
        }),
    }
}

fn sandbox_codex_home(sandbox: &SandboxLayout) -> String {
    format!("{}/.codex", sandbox.home.trim_end_matches('/'))
}

/// The dummy tokens for one ChatGPT login. Deterministic: the same login
/// always gives the same dummies, so re-preparing on a credential change
/// only changes what the credential changed.
#[derive(Debug, Clone, PartialEq)]
struct Dummies {
    id_token: String,
    access_token: String,
}

impl Dummies {
    fn for_login(login: &ChatgptLogin) -> Self {
        let id = &login.identity;
        let mut auth = serde_json::Map::new();
        auth.insert("chatgpt_account_id".into(), json!(login.account_id));
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                auth.insert(k.into(), json!(v));
            }
        };
        put("chatgpt_plan_type", &id.plan_type);
        put("chatgpt_user_id", &id.chatgpt_user_id);
        put("user_id", &id.user_id);
        if let Some(f) = id.is_fedramp {
            auth.insert("chatgpt_account_is_fedramp".into(), json!(f));
        }
        let iat = login.iat.unwrap_or(login.exp - 3600).min(login.exp);
        let common = |aud: &str| {
            let mut c = json!({
                "iss": "https://auth.openai.com",
                "sub": "bot-bottle-dummy",
                "aud": [aud],
                "iat": iat,
                "exp": login.exp,
                "bot_bottle_dummy": true,
                "https://api.openai.com/auth": Value::Object(auth.clone()),
            });
            if let Some(email) = &id.email {
                c["email"] = json!(email);
                c["https://api.openai.com/profile"] = json!({ "email": email });
            }
            c
        };
        Self {
            id_token: jwt::encode_dummy(&common("bot-bottle-dummy-client")),
            access_token: jwt::encode_dummy(&common("https://api.openai.com/v1")),
        }
    }

    /// The sandbox's `auth.json`.
    fn auth_json(&self, login: &ChatgptLogin) -> String {
        let last_refresh = login
            .last_refresh
            .clone()
            .unwrap_or_else(|| host::rfc3339(login.iat.unwrap_or(login.exp).min(login.exp)));
        let v = json!({
            "OPENAI_API_KEY": null,
            "tokens": {
                "id_token": self.id_token,
                "access_token": self.access_token,
                "refresh_token": DUMMY_REFRESH_TOKEN,
                "account_id": login.account_id,
            },
            "last_refresh": last_refresh,
        });
        pretty(&v)
    }

    /// The proxy's answer to `POST auth.openai.com/oauth/token`.
    fn refresh_body(&self) -> String {
        json!({
            "id_token": self.id_token,
            "access_token": self.access_token,
            "refresh_token": DUMMY_REFRESH_TOKEN,
        })
        .to_string()
    }
}

fn pretty(v: &Value) -> String {
    // Serialising a `Value` cannot fail.
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

fn bearer(token_ref: &str) -> HeaderInjection {
    HeaderInjection {
        header: "Authorization".into(),
        value: "Bearer {token}".into(),
        token_ref: Some(token_ref.into()),
    }
}

fn route(host: &str, path_prefix: Option<&str>, inject: Vec<HeaderInjection>) -> EgressRoute {
    EgressRoute {
        path_prefix: path_prefix.map(str::to_string),
        inject,
        ..EgressRoute::allow(host)
    }
}

/// Builds the plan for `request` as of `now` (unix seconds).
pub fn prepare_at(request: &PrepareRequest, now: i64) -> Result<AgentProvisionPlan, CodexError> {
    let options = Options::parse(&request.options)?;
    let (credential, notes) = resolve(&options, &request.host_env, now)?;
    let codex_home = sandbox_codex_home(&request.sandbox);
    let auth_path = format!("{codex_home}/auth.json");

    let mut plan = AgentProvisionPlan {
        default_command: vec!["codex".into()],
        ca_trust_env: CA_TRUST_ENV.iter().map(|s| s.to_string()).collect(),
        notes,
        protected_paths: host::protected_paths(&request.host_env),
        ..Default::default()
    };
    plan.env.insert("CODEX_HOME".into(), codex_home);

    match credential {
        Credential::Chatgpt(login) => {
            let dummies = Dummies::for_login(&login);
            plan.files.push(SandboxFile::text(
                &auth_path,
                dummies.auth_json(&login),
                0o600,
            ));
            plan.provisioned_env.insert(
                CODEX_HOST_CREDENTIAL_TOKEN_REF.into(),
                login.access_token.clone(),
            );
            // FedRAMP workspaces talk to gov.chatgpt.com instead.
            let backend = if login.identity.is_fedramp == Some(true) {
                "gov.chatgpt.com"
            } else {
                "chatgpt.com"
            };
            plan.egress_routes.push(route(
                backend,
                Some("/backend-api/"),
                vec![
                    bearer(CODEX_HOST_CREDENTIAL_TOKEN_REF),
                    // The account id is an identifier, not a secret: a
                    // literal header, so a forged one never reaches upstream.
                    HeaderInjection {
                        header: "chatgpt-account-id".into(),
                        value: login.account_id.clone(),
                        token_ref: None,
                    },
                ],
            ));
            plan.local_responses.push(LocalResponse {
                host: REFRESH_HOST.into(),
                path: REFRESH_PATH.into(),
                method: "POST".into(),
                status: 200,
                content_type: "application/json".into(),
                body: dummies.refresh_body(),
            });
            plan.local_responses.push(LocalResponse {
                host: REFRESH_HOST.into(),
                path: REVOKE_PATH.into(),
                method: "POST".into(),
                status: 200,
                content_type: "application/json".into(),
                body: "{}".into(),
            });
            plan.credential_sources.push(login.path.clone());
            plan.notes.push(format!(
                "forwarding the ChatGPT login in {} ({}); the host's access token is valid until {}, the agent holds dummy tokens",
                login.path.display(),
                login
                    .identity
                    .plan_type
                    .as_deref()
                    .map(|p| format!("plan {p}"))
                    .unwrap_or_else(|| "plan unknown".into()),
                host::rfc3339(login.exp),
            ));
        }
        Credential::ApiKey { key, source, file } => {
            plan.env
                .insert("CODEX_API_KEY".into(), DUMMY_API_KEY.into());
            plan.env
                .insert("OPENAI_API_KEY".into(), DUMMY_API_KEY.into());
            // The interactive TUI reads its API key from auth.json only.
            plan.files.push(SandboxFile::text(
                &auth_path,
                pretty(&json!({ "OPENAI_API_KEY": DUMMY_API_KEY })),
                0o600,
            ));
            plan.provisioned_env
                .insert(CODEX_HOST_API_KEY_REF.into(), key);
            plan.egress_routes.push(route(
                "api.openai.com",
                None,
                vec![bearer(CODEX_HOST_API_KEY_REF)],
            ));
            plan.egress_routes.push(route(
                "chatgpt.com",
                Some("/backend-api/codex/"),
                vec![bearer(CODEX_HOST_API_KEY_REF)],
            ));
            if let Some(f) = file {
                plan.credential_sources.push(f);
            }
            plan.notes.push(format!(
                "using the OpenAI API key from {source}; the agent holds a dummy key"
            ));
        }
    }
    Ok(plan)
}

/// `bottle doctor` findings as of `now`.
pub fn check_at(request: &CheckRequest, now: i64) -> CheckReport {
    let mut findings = Vec::new();
    const SUBJECT: &str = "host credentials";
    let path = host::auth_json_path(&request.host_env);
    match &path {
        None => findings.push(Finding::warn(
            SUBJECT,
            "neither CODEX_HOME nor HOME is set, so no `codex login` can be forwarded",
            "set HOME, then run `codex login` on the host",
        )),
        Some(path) => match host::read_auth_json(path, now) {
            Ok(Some(HostLogin::Chatgpt(login))) => findings.push(Finding::ok(
                SUBJECT,
                format!(
                    "ChatGPT login in {} (token valid until {}); forwarded when [agent.options] sets forward_host_credentials = true",
                    display(path),
                    host::rfc3339(login.exp)
                ),
            )),
            Ok(Some(HostLogin::ApiKey { .. })) => findings.push(Finding::ok(
                SUBJECT,
                format!(
                    "API-key login in {}; forwarded when [agent.options] sets forward_host_credentials = true",
                    display(path)
                ),
            )),
            Ok(None) => {}
            Err(e) => {
                let hint = PluginError::from(e);
                findings.push(Finding::error(
                    SUBJECT,
                    hint.message.clone(),
                    hint.hint.unwrap_or_default(),
                ))
            }
        },
    }
    if let Some((var, _)) = host::env_api_key(&request.host_env) {
        findings.push(Finding::ok(SUBJECT, format!("OpenAI API key in {var}")));
    }
    if findings.is_empty() {
        findings.push(Finding::warn(
            SUBJECT,
            format!(
                "no Codex login at {} and no OPENAI_API_KEY or CODEX_API_KEY",
                path.as_deref().map(display).unwrap_or_default()
            ),
            "run `codex login` on the host (and set forward_host_credentials = true), or export OPENAI_API_KEY",
        ));
    }
    CheckReport { findings }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// The provider.
#[derive(Debug, Default)]
pub struct Codex;

impl Provider for Codex {
    fn info(&self) -> PluginInfo {
        PluginInfo::provider(
            "codex",
            env!("CARGO_PKG_VERSION"),
            "OpenAI Codex CLI; forwards the host's `codex login` or API key through the egress proxy",
        )
    }

    fn check(&self, request: CheckRequest) -> Result<CheckReport, PluginError> {
        Ok(check_at(&request, now_unix()))
    }

    fn prepare(&self, request: PrepareRequest) -> Result<AgentProvisionPlan, PluginError> {
        prepare_at(&request, now_unix()).map_err(PluginError::from)
    }
}

export_provider!(Codex);

#[cfg(test)]
mod tests;
