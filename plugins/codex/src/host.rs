//! Reading the host's Codex credentials: `$CODEX_HOME/auth.json` (default
//! `~/.codex/auth.json`) and the API-key env vars.
//!
//! Every path comes from the request's `host_env`, never from `std::env`, so
//! tests point it at temp dirs. The file is parsed as untyped JSON and picked
//! apart field by field so that no error message can ever quote a value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bot_bottle_plugin_api::Secret;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::CodexError;
use crate::jwt;

/// Env vars that hold an OpenAI API key, in Codex's order of precedence.
pub const API_KEY_ENV: &[&str] = &["CODEX_API_KEY", "OPENAI_API_KEY"];

/// Where the host's `auth.json` is: `$CODEX_HOME/auth.json`, else
/// `$HOME/.codex/auth.json`; `None` when neither variable is set.
pub(crate) fn auth_json_path(host_env: &BTreeMap<String, Secret>) -> Option<PathBuf> {
    let non_empty = |k: &str| {
        host_env
            .get(k)
            .map(|v| v.expose().to_string())
            .filter(|v| !v.is_empty())
    };
    if let Some(codex_home) = non_empty("CODEX_HOME") {
        return Some(PathBuf::from(codex_home).join("auth.json"));
    }
    non_empty("HOME").map(|h| PathBuf::from(h).join(".codex").join("auth.json"))
}

/// Every host file where Codex keeps a credential or a secret, for any
/// credential mode: `auth.json` (the login or API key), `.credentials.json`
/// (MCP servers' OAuth tokens when no keyring is used) and `config.toml`
/// (MCP servers' env and bearer tokens; its `notify` is a command), in
/// `$CODEX_HOME` and in `$HOME/.codex` (a login may sit in either).
pub(crate) fn protected_paths(host_env: &BTreeMap<String, Secret>) -> Vec<PathBuf> {
    let non_empty = |k: &str| {
        host_env
            .get(k)
            .map(|v| v.expose().to_string())
            .filter(|v| !v.is_empty())
    };
    let dirs = non_empty("CODEX_HOME")
        .map(PathBuf::from)
        .into_iter()
        .chain(non_empty("HOME").map(|h| PathBuf::from(h).join(".codex")));
    dirs.flat_map(|d| ["auth.json", ".credentials.json", "config.toml"].map(|f| d.join(f)))
        .collect()
}

/// An API key from the host env: which variable and its value.
pub(crate) fn env_api_key(host_env: &BTreeMap<String, Secret>) -> Option<(&'static str, Secret)> {
    API_KEY_ENV.iter().find_map(|name| {
        let v = host_env.get(*name)?.expose().trim();
        (!v.is_empty()).then(|| (*name, Secret::new(v)))
    })
}

/// Who the ChatGPT login belongs to: non-secret claims copied from the
/// host's id token into the dummies (Codex shows the plan and e-mail, and
/// checks the account id).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Identity {
    pub email: Option<String>,
    pub plan_type: Option<String>,
    pub chatgpt_user_id: Option<String>,
    pub user_id: Option<String>,
    pub is_fedramp: Option<bool>,
}

/// A ChatGPT sign-in read from the host's `auth.json`.
#[derive(Debug, Clone)]
pub(crate) struct ChatgptLogin {
    /// The file it came from.
    pub path: PathBuf,
    /// The real access token (for the proxy only).
    pub access_token: Secret,
    /// The access token's `exp` (unix seconds).
    pub exp: i64,
    /// The access token's `iat`, when present.
    pub iat: Option<i64>,
    /// `tokens.account_id` (or the id token's `chatgpt_account_id`).
    pub account_id: String,
    /// `last_refresh`, normalised to RFC 3339, when present and valid.
    pub last_refresh: Option<String>,
    /// Non-secret identity claims.
    pub identity: Identity,
}

/// What the host's `auth.json` holds.
#[derive(Debug, Clone)]
pub(crate) enum HostLogin {
    /// A ChatGPT sign-in (tokens).
    Chatgpt(ChatgptLogin),
    /// `codex login --with-api-key`: an API key stored in the file.
    ApiKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: Secret,
    },
}

/// Reads and checks the host's `auth.json`. `Ok(None)` when it does not
/// exist; an error when it exists but cannot be used, or when its access
/// token expired before `now` (unix seconds).
pub(crate) fn read_auth_json(path: &Path, now: i64) -> Result<Option<HostLogin>, CodexError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CodexError::Unreadable {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        }
    };
    parse_auth_json(path, &text, now).map(Some)
}

fn malformed(path: &Path, what: impl Into<String>) -> CodexError {
    CodexError::Malformed {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// The string at `key`, treating `null` and absence alike; an error naming
/// the key when it is something else.
fn opt_str<'a>(
    path: &Path,
    obj: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<&'a str>, CodexError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(malformed(path, format!("`{field}` is not a string"))),
    }
}

pub(crate) fn parse_auth_json(path: &Path, text: &str, now: i64) -> Result<HostLogin, CodexError> {
    // serde_json's own messages can quote the input; report position only.
    let value: Value = serde_json::from_str(text).map_err(|e| {
        malformed(
            path,
            format!("not valid JSON (line {}, column {})", e.line(), e.column()),
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(malformed(path, "not a JSON object"));
    };

    let api_key = opt_str(path, &obj, "OPENAI_API_KEY", "OPENAI_API_KEY")?
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let tokens = match obj.get("tokens") {
        None | Some(Value::Null) => None,
        Some(Value::Object(t)) => Some(t),
        Some(_) => return Err(malformed(path, "`tokens` is not an object")),
    };
    let mode = opt_str(path, &obj, "auth_mode", "auth_mode")?;

    // Codex's own rule: `auth_mode` when present, else an API key when
    // present, else ChatGPT tokens.
    let use_api_key = match mode {
        Some(m) if m.eq_ignore_ascii_case("apikey") || m == "api_key" => true,
        Some("chatgpt") => false,
        Some(other) => {
            return Err(CodexError::UnsupportedMode {
                path: path.to_path_buf(),
                mode: printable_mode(other),
            })
        }
        None => api_key.is_some(),
    };
    if use_api_key {
        let key = api_key.ok_or_else(|| {
            malformed(path, "`auth_mode` is apikey but `OPENAI_API_KEY` is empty")
        })?;
        return Ok(HostLogin::ApiKey {
            path: path.to_path_buf(),
            key: Secret::new(key),
        });
    }

    let tokens = tokens.ok_or_else(|| {
        malformed(
            path,
            "it holds no credential (neither `tokens` nor `OPENAI_API_KEY`)",
        )
    })?;
    let access_token = opt_str(path, tokens, "access_token", "tokens.access_token")?
        .filter(|t| !t.is_empty())
        .ok_or_else(|| malformed(path, "`tokens.access_token` is missing"))?;
    let access_claims = jwt::claims(access_token)
        .ok_or_else(|| malformed(path, "`tokens.access_token` is not a JWT"))?;
    let exp = access_claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or_else(|| malformed(path, "`tokens.access_token` has no numeric `exp` claim"))?;
    let iat = access_claims.get("iat").and_then(Value::as_i64);

    let id_claims = match opt_str(path, tokens, "id_token", "tokens.id_token")? {
        Some(t) => {
            jwt::claims(t).ok_or_else(|| malformed(path, "`tokens.id_token` is not a JWT"))?
        }
        None => Map::new(),
    };
    let auth_claim = id_claims
        .get("https://api.openai.com/auth")
        .and_then(Value::as_object);
    let claim_str = |k: &str| {
        auth_claim
            .and_then(|a| a.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };

    let account_id = opt_str(path, tokens, "account_id", "tokens.account_id")?
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .or_else(|| claim_str("chatgpt_account_id"))
        .ok_or_else(|| {
            malformed(
                path,
                "no ChatGPT account id (`tokens.account_id` or the id token's `chatgpt_account_id`)",
            )
        })?;

    let identity = Identity {
        email: id_claims
            .get("email")
            .and_then(Value::as_str)
            .or_else(|| {
                id_claims
                    .get("https://api.openai.com/profile")
                    .and_then(|p| p.get("email"))
                    .and_then(Value::as_str)
            })
            .map(str::to_string),
        plan_type: claim_str("chatgpt_plan_type"),
        chatgpt_user_id: claim_str("chatgpt_user_id"),
        user_id: claim_str("user_id"),
        is_fedramp: auth_claim
            .and_then(|a| a.get("chatgpt_account_is_fedramp"))
            .and_then(Value::as_bool),
    };

    let last_refresh = opt_str(path, &obj, "last_refresh", "last_refresh")?
        .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
        .and_then(|t| t.format(&Rfc3339).ok());

    if exp <= now {
        return Err(CodexError::Expired {
            path: path.to_path_buf(),
            expired_at: rfc3339(exp),
        });
    }

    Ok(HostLogin::Chatgpt(ChatgptLogin {
        path: path.to_path_buf(),
        access_token: Secret::new(access_token),
        exp,
        iat,
        account_id,
        last_refresh,
        identity,
    }))
}

/// An `auth_mode` value safe to print: a short identifier, else a placeholder.
fn printable_mode(mode: &str) -> String {
    let ident = mode.len() <= 40
        && mode
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ident {
        mode.to_string()
    } else {
        "(unrecognised)".to_string()
    }
}

/// Unix seconds as RFC 3339 (UTC); the number itself when out of range.
pub(crate) fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{unix}"))
}
