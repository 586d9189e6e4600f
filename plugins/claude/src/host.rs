//! Reading the host's Claude Code credentials: `.credentials.json` in
//! `$CLAUDE_CONFIG_DIR` (default `~/.claude`), `CLAUDE_CODE_OAUTH_TOKEN` and
//! `ANTHROPIC_API_KEY`.
//!
//! Every path comes from the request's `host_env`, never from `std::env`. The
//! file is parsed as untyped JSON and read field by field, so no error
//! message can quote a value. Only `claudeAiOauth` is read: other logins in
//! the file (MCP servers' OAuth tokens) are never touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bot_bottle_plugin_api::Secret;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::ClaudeError;

/// The scope without which Claude Code says "Not logged in".
pub const INFERENCE_SCOPE: &str = "user:inference";

fn non_empty(host_env: &BTreeMap<String, Secret>, k: &str) -> Option<String> {
    host_env
        .get(k)
        .map(|v| v.expose().trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `$CLAUDE_CONFIG_DIR/.credentials.json`, else
/// `$HOME/.claude/.credentials.json`; `None` when neither is set.
pub(crate) fn credentials_path(host_env: &BTreeMap<String, Secret>) -> Option<PathBuf> {
    if let Some(dir) = non_empty(host_env, "CLAUDE_CONFIG_DIR") {
        return Some(PathBuf::from(dir).join(".credentials.json"));
    }
    non_empty(host_env, "HOME").map(|h| PathBuf::from(h).join(".claude").join(".credentials.json"))
}

/// Every host file where Claude Code keeps a credential or a secret, for
/// any credential mode: `.credentials.json` (the login, MCP servers' OAuth
/// tokens), `settings.json` (its `env` may hold keys, `apiKeyHelper` is a
/// command), `.claude.json` (`primaryApiKey`, MCP servers' env) and the
/// legacy `.config.json`, in `$CLAUDE_CONFIG_DIR` and in the defaults
/// beside `$HOME` (a login may sit in either); and the copies Claude Code
/// keeps of `.claude.json`, which hold what it holds: `backups/` in the
/// config directory (`.claude.json.backup.<ms>`, 2.x) and the older
/// `.claude.json.backup` beside it.
pub(crate) fn protected_paths(host_env: &BTreeMap<String, Secret>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let home = non_empty(host_env, "HOME").map(PathBuf::from);
    if let Some(dir) = non_empty(host_env, "CLAUDE_CONFIG_DIR") {
        dirs.push((PathBuf::from(&dir), PathBuf::from(dir).join(".claude.json")));
    }
    if let Some(h) = &home {
        dirs.push((h.join(".claude"), h.join(".claude.json")));
    }
    let mut out = Vec::new();
    for (dir, global) in dirs {
        for f in [
            ".credentials.json",
            "settings.json",
            ".config.json",
            "backups",
        ] {
            out.push(dir.join(f));
        }
        let mut backup = global.clone().into_os_string();
        backup.push(".backup");
        out.push(backup.into());
        out.push(global);
    }
    out
}

/// A secret from the host env, by name.
pub(crate) fn env_secret(host_env: &BTreeMap<String, Secret>, name: &str) -> Option<Secret> {
    non_empty(host_env, name).map(Secret::new)
}

/// A subscription login read from `.credentials.json`.
#[derive(Debug, Clone)]
pub(crate) struct FileLogin {
    /// The file it came from.
    pub path: PathBuf,
    /// The real access token (for the proxy only).
    pub access_token: Secret,
    /// `expiresAt` (unix milliseconds); `None` when the login never expires.
    pub expires_at_ms: Option<i64>,
    /// `scopes`, always including [`INFERENCE_SCOPE`].
    pub scopes: Vec<String>,
    /// `subscriptionType` (`pro`, `max`, …), when it is a plain identifier.
    pub subscription_type: Option<String>,
    /// `rateLimitTier`, when it is a plain identifier.
    pub rate_limit_tier: Option<String>,
}

/// Reads and checks the host's `.credentials.json`. `Ok(None)` when it does
/// not exist; an error when it exists but cannot be used, or when its token
/// expired before `now_ms` (unix milliseconds).
pub(crate) fn read_credentials(path: &Path, now_ms: i64) -> Result<Option<FileLogin>, ClaudeError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ClaudeError::Unreadable {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        }
    };
    parse_credentials(path, &text, now_ms).map(Some)
}

fn malformed(path: &Path, what: impl Into<String>) -> ClaudeError {
    ClaudeError::Malformed {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// A short identifier-like string, safe to copy into the sandbox and print.
fn identifier(v: Option<&Value>) -> Option<String> {
    let s = v?.as_str()?;
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    ok.then(|| s.to_string())
}

pub(crate) fn parse_credentials(
    path: &Path,
    text: &str,
    now_ms: i64,
) -> Result<FileLogin, ClaudeError> {
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
    let oauth: &Map<String, Value> = match obj.get("claudeAiOauth") {
        Some(Value::Object(o)) => o,
        None | Some(Value::Null) => {
            return Err(malformed(
                path,
                "it holds no Claude login (`claudeAiOauth`)",
            ))
        }
        Some(_) => return Err(malformed(path, "`claudeAiOauth` is not an object")),
    };
    let access_token = match oauth.get("accessToken") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(malformed(path, "`claudeAiOauth.accessToken` is missing"))
        }
        Some(_) => {
            return Err(malformed(
                path,
                "`claudeAiOauth.accessToken` is not a string",
            ))
        }
    };
    let expires_at_ms = match oauth.get("expiresAt") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| {
            malformed(
                path,
                "`claudeAiOauth.expiresAt` is not a number of milliseconds",
            )
        })?),
    };
    let scopes: Vec<String> = match oauth.get("scopes") {
        // Claude Code's own default when a login carries no scopes.
        None | Some(Value::Null) => vec![INFERENCE_SCOPE.to_string()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| identifier(Some(s)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                malformed(path, "`claudeAiOauth.scopes` is not a list of scope names")
            })?,
        Some(_) => return Err(malformed(path, "`claudeAiOauth.scopes` is not a list")),
    };
    if !scopes.iter().any(|s| s == INFERENCE_SCOPE) {
        return Err(ClaudeError::NoInferenceScope {
            path: path.to_path_buf(),
        });
    }
    if let Some(exp) = expires_at_ms {
        if exp <= now_ms {
            return Err(ClaudeError::Expired {
                path: path.to_path_buf(),
                expired_at: rfc3339_ms(exp),
            });
        }
    }
    Ok(FileLogin {
        path: path.to_path_buf(),
        access_token: Secret::new(access_token),
        expires_at_ms,
        scopes,
        subscription_type: identifier(oauth.get("subscriptionType")),
        rate_limit_tier: identifier(oauth.get("rateLimitTier")),
    })
}

/// Unix milliseconds as RFC 3339 (UTC, whole seconds).
pub(crate) fn rfc3339_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{ms}ms"))
}
