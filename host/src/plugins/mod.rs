//! Stage 2 of the one flow: find and load the provider and backend plugins.
//!
//! * [`discovery`] lists the directories to search, in order;
//! * [`loader`] turns one library file into a [`LoadedPlugin`] or a one-line
//!   [`LoadError`];
//! * [`PluginSet`] holds what loaded, what was shadowed and what failed, and
//!   calls plugins with panics and errors turned into [`PluginCallError`]s.

pub mod discovery;
mod host_context;
pub mod loader;

use std::collections::BTreeMap;
use std::path::PathBuf;

use bot_bottle_plugin_api::abi::{BackendBox, ProviderBox};
use bot_bottle_plugin_api::{PluginError, PluginKind};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use discovery::{SearchDir, SearchDirSource};
pub use loader::{LoadError, LoadedPlugin, PluginObjectKind};

/// A plugin that lost to an earlier one with the same name.
#[derive(Debug, Clone, Serialize)]
pub struct Shadowed {
    /// The plugin name.
    pub name: String,
    /// The file that is used.
    pub winner: PathBuf,
    /// The file that is ignored.
    pub loser: PathBuf,
    /// Why the winner wins.
    pub why: String,
}

impl std::fmt::Display for Shadowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: plugin `{}` is also provided by {}; using {} because {}",
            self.loser.display(),
            self.name,
            self.winner.display(),
            self.winner.display(),
            self.why
        )
    }
}

/// Every plugin found in the search path.
#[derive(Debug, Default)]
pub struct PluginSet {
    plugins: BTreeMap<String, LoadedPlugin>,
    /// Files that failed to load.
    pub errors: Vec<LoadError>,
    /// Same-name plugins that lost.
    pub shadowed: Vec<Shadowed>,
    /// Where we looked.
    pub searched: Vec<SearchDir>,
    /// Every entry with a library's name in the search path: what this
    /// process opened (a library's constructors run when it is opened),
    /// and links whose targets do not exist yet, which a later run would
    /// open.
    pub opened: Vec<PathBuf>,
}

/// A failed call into a plugin (an error it returned, or a panic it raised).
#[derive(Debug, thiserror::Error)]
pub enum PluginCallError {
    /// The manifest names a plugin that is not installed.
    #[error("no {kind} plugin named `{name}` is installed (searched: {searched}); install it, pass --plugin-dir DIR, or run `bottle plugins list` to see what is available")]
    NotInstalled {
        /// Provider or backend.
        kind: PluginKind,
        /// The name asked for.
        name: String,
        /// The directories searched.
        searched: String,
    },
    /// The plugin answered with an error.
    #[error("{plugin} plugin `{name}`: {error}{hint}", hint = error.hint.as_ref().map(|h| format!(" — {h}")).unwrap_or_default())]
    Plugin {
        /// Provider or backend.
        plugin: PluginKind,
        /// Plugin name.
        name: String,
        /// What it said.
        error: PluginError,
    },
    /// The plugin's reply could not be decoded.
    #[error("{plugin} plugin `{name}` sent a reply to `{op}` that this bottle cannot read ({detail}); rebuild the plugin against plugin-api {abi}")]
    BadReply {
        /// Provider or backend.
        plugin: PluginKind,
        /// Plugin name.
        name: String,
        /// The operation.
        op: String,
        /// The decode error.
        detail: String,
        /// The host's ABI.
        abi: &'static str,
    },
}

impl PluginCallError {
    /// Whether the plugin says trying again may help.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Plugin { error, .. } if error.retryable)
    }
}

impl PluginSet {
    /// Loads every plugin found in `dirs`, in order. Never fails as a whole:
    /// broken files are recorded in [`PluginSet::errors`].
    pub fn load(dirs: Vec<SearchDir>) -> Self {
        let mut set = PluginSet {
            searched: dirs.clone(),
            ..Default::default()
        };
        for dir in &dirs {
            set.opened.extend(discovery::library_names(&dir.path));
            for file in discovery::library_files(&dir.path) {
                match loader::load(&file) {
                    Ok(plugin) => set.add(plugin, dir),
                    Err(e) => set.errors.push(e),
                }
            }
        }
        set
    }

    fn add(&mut self, plugin: LoadedPlugin, dir: &SearchDir) {
        let name = plugin.info.name.clone();
        if let Some(existing) = self.plugins.get(&name) {
            self.shadowed.push(Shadowed {
                name,
                winner: existing.path.clone(),
                loser: plugin.path.clone(),
                why: if existing.source == dir.source && existing.path.parent() == plugin.path.parent() {
                    "it sorts first in the same directory".to_string()
                } else {
                    format!(
                        "{} comes before {} in the search order (--plugin-dir, BOT_BOTTLE_PLUGIN_PATH, data dir, beside the binary)",
                        existing.source, dir.source
                    )
                },
            });
            return;
        }
        let mut plugin = plugin;
        plugin.source = dir.source;
        self.plugins.insert(name, plugin);
    }

    /// All loaded plugins, by name.
    pub fn iter(&self) -> impl Iterator<Item = &LoadedPlugin> {
        self.plugins.values()
    }

    /// One plugin by name.
    pub fn get(&self, name: &str) -> Option<&LoadedPlugin> {
        self.plugins.get(name)
    }

    fn searched_text(&self) -> String {
        if self.searched.is_empty() {
            return "no directories".into();
        }
        self.searched
            .iter()
            .map(|d| d.path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The provider named `name`.
    pub fn provider(&self, name: &str) -> Result<ProviderHandle<'_>, PluginCallError> {
        match self.plugins.get(name) {
            Some(p) => match &p.object {
                PluginObjectKind::Provider(obj) => Ok(ProviderHandle { plugin: p, obj }),
                PluginObjectKind::Backend(_) => Err(self.not_installed(PluginKind::Provider, name)),
            },
            None => Err(self.not_installed(PluginKind::Provider, name)),
        }
    }

    /// The backend named `name`.
    pub fn backend(&self, name: &str) -> Result<BackendHandle<'_>, PluginCallError> {
        match self.plugins.get(name) {
            Some(p) => match &p.object {
                PluginObjectKind::Backend(obj) => Ok(BackendHandle { plugin: p, obj }),
                PluginObjectKind::Provider(_) => Err(self.not_installed(PluginKind::Backend, name)),
            },
            None => Err(self.not_installed(PluginKind::Backend, name)),
        }
    }

    /// Every backend.
    pub fn backends(&self) -> impl Iterator<Item = BackendHandle<'_>> {
        self.plugins.values().filter_map(|p| match &p.object {
            PluginObjectKind::Backend(obj) => Some(BackendHandle { plugin: p, obj }),
            _ => None,
        })
    }

    /// Every provider.
    pub fn providers(&self) -> impl Iterator<Item = ProviderHandle<'_>> {
        self.plugins.values().filter_map(|p| match &p.object {
            PluginObjectKind::Provider(obj) => Some(ProviderHandle { plugin: p, obj }),
            _ => None,
        })
    }

    fn not_installed(&self, kind: PluginKind, name: &str) -> PluginCallError {
        PluginCallError::NotInstalled {
            kind,
            name: name.to_string(),
            searched: self.searched_text(),
        }
    }
}

fn decode<T: DeserializeOwned>(
    plugin: &LoadedPlugin,
    op: &str,
    result: abi_stable::std_types::RResult<
        abi_stable::std_types::RString,
        abi_stable::std_types::RString,
    >,
) -> Result<T, PluginCallError> {
    match result {
        abi_stable::std_types::RResult::ROk(json) => {
            serde_json::from_str(&json).map_err(|e| PluginCallError::BadReply {
                plugin: plugin.info.kind,
                name: plugin.info.name.clone(),
                op: op.to_string(),
                detail: e.to_string(),
                abi: bot_bottle_plugin_api::ABI_VERSION,
            })
        }
        abi_stable::std_types::RResult::RErr(json) => Err(PluginCallError::Plugin {
            plugin: plugin.info.kind,
            name: plugin.info.name.clone(),
            error: PluginError::from_json(&json),
        }),
    }
}

fn encode<T: Serialize>(request: &T) -> String {
    // Our own request types are plain data; encoding cannot fail.
    serde_json::to_string(request).expect("encoding a plugin request")
}

/// A provider ready to call.
#[derive(Clone, Copy)]
pub struct ProviderHandle<'a> {
    /// The plugin.
    pub plugin: &'a LoadedPlugin,
    obj: &'a ProviderBox,
}

impl std::fmt::Debug for ProviderHandle<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderHandle")
            .field("plugin", &self.plugin.info.name)
            .finish()
    }
}

impl std::fmt::Debug for BackendHandle<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendHandle")
            .field("plugin", &self.plugin.info.name)
            .finish()
    }
}

impl ProviderHandle<'_> {
    /// `check`.
    pub fn check(
        &self,
        req: &bot_bottle_plugin_api::CheckRequest,
    ) -> Result<bot_bottle_plugin_api::CheckReport, PluginCallError> {
        decode(
            self.plugin,
            "check",
            self.obj.check(encode(req).as_str().into()),
        )
    }
    /// `prepare`.
    pub fn prepare(
        &self,
        req: &bot_bottle_plugin_api::PrepareRequest,
    ) -> Result<bot_bottle_plugin_api::AgentProvisionPlan, PluginCallError> {
        decode(
            self.plugin,
            "prepare",
            self.obj.prepare(encode(req).as_str().into()),
        )
    }
    /// An operation added after ABI 1.0.
    pub fn extension(
        &self,
        op: &str,
        req: &serde_json::Value,
    ) -> Result<serde_json::Value, PluginCallError> {
        decode(
            self.plugin,
            op,
            self.obj.extension(op.into(), encode(req).as_str().into()),
        )
    }
}

/// A backend ready to call. Blocking calls (`wait`, `logs`, `exec`) must be
/// made from a plain thread, never from an async worker.
#[derive(Clone, Copy)]
pub struct BackendHandle<'a> {
    /// The plugin.
    pub plugin: &'a LoadedPlugin,
    obj: &'a BackendBox,
}

macro_rules! backend_calls {
    ($($(#[$doc:meta])* $op:ident($req:ty) -> $resp:ty;)*) => {
        impl BackendHandle<'_> {
            $(
                $(#[$doc])*
                pub fn $op(&self, req: &$req) -> Result<$resp, PluginCallError> {
                    decode(self.plugin, stringify!($op), self.obj.$op(encode(req).as_str().into()))
                }
            )*
        }
    };
}

use bot_bottle_plugin_api as api;
backend_calls! {
    /// `check`.
    check(api::CheckRequest) -> api::CheckReport;
    /// `launch`.
    launch(api::LaunchSpec) -> api::BottleHandle;
    /// `list`.
    list(api::ListRequest) -> Vec<api::BottleStatus>;
    /// `stop`.
    stop(api::BottleRef) -> ();
    /// `logs`.
    logs(api::LogsRequest) -> ();
    /// `wait`.
    wait(api::WaitRequest) -> api::ExitReport;
    /// `exec`.
    exec(api::ExecRequest) -> api::ExitReport;
    /// `remove`.
    remove(api::RemoveRequest) -> api::RemoveReport;
    /// `update_egress`.
    update_egress(api::EgressUpdate) -> ();
}

impl BackendHandle<'_> {
    /// `validate` (the `extension` op [`api::abi::OP_VALIDATE`]): what the
    /// backend would refuse at launch, asked before anything exists. A
    /// backend built before the op existed answers `unsupported`, which
    /// means it has nothing to check here.
    pub fn validate(&self, req: &api::ValidateRequest) -> Result<(), PluginCallError> {
        let op = api::abi::OP_VALIDATE;
        let reply: Result<serde_json::Value, _> = decode(
            self.plugin,
            op,
            self.obj.extension(op.into(), encode(req).as_str().into()),
        );
        match reply {
            Ok(_) => Ok(()),
            Err(PluginCallError::Plugin { error, .. })
                if error.kind == api::ErrorKind::Unsupported =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
