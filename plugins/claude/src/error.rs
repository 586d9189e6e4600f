//! What can go wrong in the Claude Code provider. Every message names the
//! file or key involved and what to run; none ever quotes a credential.

use std::path::PathBuf;

use bot_bottle_plugin_api::PluginError;

/// What to run on the host to get a login bot-bottle can forward.
const LOGIN_COMMANDS: &str =
    "run `claude login` on the host (or `claude setup-token` and export CLAUDE_CODE_OAUTH_TOKEN)";

/// A Claude Code provider failure.
#[derive(Debug, thiserror::Error)]
pub enum ClaudeError {
    /// `[agent.options]` is not a table.
    #[error("[agent.options]: expected a table of options for provider `claude`")]
    OptionsNotTable,
    /// `[agent.options]` has a key this provider does not know.
    #[error("[agent.options]: unknown key `{key}` for provider `claude` (known: forward_host_credentials)")]
    UnknownOption {
        /// The key.
        key: String,
    },
    /// A known `[agent.options]` key has the wrong type.
    #[error("[agent.options]: `{key}` must be {expected}")]
    OptionType {
        /// The key.
        key: String,
        /// What it must be.
        expected: &'static str,
    },
    /// Neither `CLAUDE_CONFIG_DIR` nor `HOME` is set on the host.
    #[error("cannot locate Claude Code's .credentials.json: neither CLAUDE_CONFIG_DIR nor HOME is set on the host; {LOGIN_COMMANDS}")]
    NoHome,
    /// Forwarding is on and there is no login (and no API key).
    #[error("no Claude Code login at {path} and no CLAUDE_CODE_OAUTH_TOKEN: {LOGIN_COMMANDS}, or export ANTHROPIC_API_KEY")]
    Missing {
        /// Where the login was looked for.
        path: PathBuf,
    },
    /// The file exists but cannot be read.
    #[error(
        "cannot read Claude Code login {path}: {reason}; fix its permissions or {LOGIN_COMMANDS}"
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error (never the contents).
        reason: String,
    },
    /// The file is not the `.credentials.json` Claude Code writes.
    #[error("Claude Code login {path} is malformed: {what}; {LOGIN_COMMANDS}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, by field name only.
        what: String,
    },
    /// The login cannot call the model.
    #[error("the Claude Code login in {path} lacks the `user:inference` scope, so it cannot run Claude; {LOGIN_COMMANDS}")]
    NoInferenceScope {
        /// The file.
        path: PathBuf,
    },
    /// The host's access token has expired and the host has not refreshed it.
    #[error("the Claude Code login in {path} expired at {expired_at}; run `claude` once on the host so it refreshes the login (or `claude login`), or use `claude setup-token` and export CLAUDE_CODE_OAUTH_TOKEN")]
    Expired {
        /// The file.
        path: PathBuf,
        /// When, RFC 3339.
        expired_at: String,
    },
    /// Forwarding is off and no key or token is exported.
    #[error("no Claude Code credentials: export ANTHROPIC_API_KEY (or CLAUDE_CODE_OAUTH_TOKEN from `claude setup-token`) on the host, or set `forward_host_credentials = true` in [agent.options] to forward the login in {path} (`claude login` on the host creates it)")]
    NoCredential {
        /// Where a forwarded login would come from.
        path: String,
    },
}

impl ClaudeError {
    fn hint(&self) -> &'static str {
        match self {
            Self::OptionsNotTable | Self::UnknownOption { .. } | Self::OptionType { .. } => {
                "see docs/providers/claude.md for the options of provider `claude`"
            }
            Self::Expired { .. } => {
                "bot-bottle never refreshes the host's login itself; once the host's Claude Code has refreshed .credentials.json, running bottles pick the new token up automatically"
            }
            _ => "see docs/providers/claude.md (\"When it fails\"); on macOS the login lives in the Keychain, so use `claude setup-token` and CLAUDE_CODE_OAUTH_TOKEN",
        }
    }
}

impl From<ClaudeError> for PluginError {
    fn from(e: ClaudeError) -> Self {
        let hint = e.hint();
        let err = match &e {
            ClaudeError::OptionsNotTable => {
                PluginError::invalid(e.to_string()).in_options::<_, String>([])
            }
            ClaudeError::UnknownOption { key } | ClaudeError::OptionType { key, .. } => {
                PluginError::invalid(e.to_string()).in_options([key.clone()])
            }
            _ => PluginError::unavailable(e.to_string()),
        };
        err.with_hint(hint)
    }
}
