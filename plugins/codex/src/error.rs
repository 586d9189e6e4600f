//! What can go wrong in the Codex provider. Every message names the file or
//! key involved and what to run; none ever quotes a credential.

use std::path::PathBuf;

use bot_bottle_plugin_api::PluginError;

/// A Codex provider failure.
#[derive(Debug, thiserror::Error)]
pub enum CodexError {
    /// `[agent.options]` is not a table.
    #[error("[agent.options]: expected a table of options for provider `codex`")]
    OptionsNotTable,
    /// `[agent.options]` has a key this provider does not know.
    #[error("[agent.options]: unknown key `{key}` for provider `codex` (known: forward_host_credentials)")]
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
    /// Neither `CODEX_HOME` nor `HOME` is set on the host.
    #[error("cannot locate Codex's auth.json: neither CODEX_HOME nor HOME is set on the host; run `codex login` on the host with HOME set")]
    NoHome,
    /// Forwarding is on and there is no `auth.json` (and no API key).
    #[error("no Codex login at {path}: run `codex login` on the host (or export OPENAI_API_KEY)")]
    Missing {
        /// Where the login was looked for.
        path: PathBuf,
    },
    /// The file exists but cannot be read.
    #[error("cannot read Codex login {path}: {reason}; fix its permissions or run `codex login` on the host")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error (never the contents).
        reason: String,
    },
    /// The file is not the `auth.json` Codex writes.
    #[error("Codex login {path} is malformed: {what}; run `codex login` on the host")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, by field name only.
        what: String,
    },
    /// The host's access token has expired and the host has not refreshed it.
    #[error("the ChatGPT access token in {path} expired at {expired_at}; run `codex` once on the host so it refreshes the login (or `codex login`), then retry")]
    Expired {
        /// The file.
        path: PathBuf,
        /// When, RFC 3339.
        expired_at: String,
    },
    /// A login kind bot-bottle cannot forward.
    #[error("Codex login {path} uses auth mode `{mode}`, which bot-bottle cannot forward; run `codex login` on the host (ChatGPT sign-in or `--with-api-key`)")]
    UnsupportedMode {
        /// The file.
        path: PathBuf,
        /// The `auth_mode` value.
        mode: String,
    },
    /// Forwarding is off and no API key is exported.
    #[error("no Codex credentials: export OPENAI_API_KEY (or CODEX_API_KEY) on the host, or set `forward_host_credentials = true` in [agent.options] to forward the login in {path} (`codex login` on the host creates it)")]
    NoCredential {
        /// Where a forwarded login would come from.
        path: String,
    },
}

impl CodexError {
    fn hint(&self) -> &'static str {
        match self {
            Self::OptionsNotTable | Self::UnknownOption { .. } | Self::OptionType { .. } => {
                "see docs/providers/codex.md for the options of provider `codex`"
            }
            Self::Expired { .. } => {
                "bot-bottle never refreshes the host's login itself; once the host's Codex has refreshed auth.json, running bottles pick the new token up automatically"
            }
            Self::Missing { .. } | Self::NoCredential { .. } => {
                "if Codex keeps its login in the OS keyring, set `cli_auth_credentials_store = \"file\"` in ~/.codex/config.toml and run `codex login` again; see docs/providers/codex.md"
            }
            _ => "see docs/providers/codex.md (\"When it fails\")",
        }
    }
}

impl From<CodexError> for PluginError {
    fn from(e: CodexError) -> Self {
        let hint = e.hint();
        let err = match &e {
            CodexError::OptionsNotTable => {
                PluginError::invalid(e.to_string()).in_options::<_, String>([])
            }
            CodexError::UnknownOption { key } | CodexError::OptionType { key, .. } => {
                PluginError::invalid(e.to_string()).in_options([key.clone()])
            }
            _ => PluginError::unavailable(e.to_string()),
        };
        err.with_hint(hint)
    }
}
