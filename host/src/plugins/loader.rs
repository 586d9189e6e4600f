//! Loads one plugin library, or explains in one line why it cannot.
//!
//! Uses `lib_header_from_path` + `init_root_module` rather than
//! `RootModule::load_from_file`: the latter caches one module per root type
//! in a static and would hand back the first plugin for every file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use abi_stable::library::{lib_header_from_path, LibraryError, RootModule, RootModuleError};
use abi_stable::std_types::{RResult, RSome};
use bot_bottle_plugin_api::abi::{BackendBox, PluginRootRef, ProviderBox, ABI_VERSION_STRING};
use bot_bottle_plugin_api::{PluginError, PluginInfo, PluginKind};
use serde::Serialize;

use super::discovery::SearchDirSource;
use super::host_context;

/// The trait object a plugin provides.
pub enum PluginObjectKind {
    /// An agent provider.
    Provider(ProviderBox),
    /// A backend.
    Backend(BackendBox),
}

impl std::fmt::Debug for PluginObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Provider(_) => "Provider",
            Self::Backend(_) => "Backend",
        })
    }
}

/// A plugin that loaded and instantiated.
#[derive(Debug)]
pub struct LoadedPlugin {
    /// What it says about itself.
    pub info: PluginInfo,
    /// The library file.
    pub path: PathBuf,
    /// Which search directory it came from.
    pub source: SearchDirSource,
    /// How long opening, checking and instantiating took.
    pub load_time: Duration,
    /// The trait object.
    pub object: PluginObjectKind,
}

/// Why a file in a plugin directory did not load. Each renders as one line
/// naming the file and what to do.
#[derive(Debug, Clone, Serialize, thiserror::Error)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum LoadError {
    /// Not a loadable shared library at all.
    #[error(
        "{path}: not a loadable shared library ({detail}); remove it from the plugin directory"
    )]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// The loader's words.
        detail: String,
    },
    /// A shared library, but not a bot-bottle plugin.
    #[error("{path}: a shared library but not a bot-bottle plugin ({detail}); remove it from the plugin directory")]
    NotAPlugin {
        /// The file.
        path: PathBuf,
        /// Why not.
        detail: String,
    },
    /// A plugin built for another ABI.
    #[error("{path}: incompatible plugin ABI: the plugin was built for ABI {plugin_abi}, this bottle speaks ABI {host_abi}{detail}; rebuild the plugin against bot-bottle-plugin-api {host_major}.x")]
    IncompatibleAbi {
        /// The file.
        path: PathBuf,
        /// The plugin's ABI version.
        plugin_abi: String,
        /// The host's ABI version.
        host_abi: String,
        /// The host's major version, for the hint.
        host_major: String,
        /// `: <last line of abi_stable's layout report>` when the layout differs.
        detail: String,
    },
    /// The plugin panicked while loading.
    #[error("{path}: plugin `{name}` panicked while loading: {detail}; report it to the plugin's author or remove the file")]
    PanickedWhileLoading {
        /// The file.
        path: PathBuf,
        /// Plugin name, when known.
        name: String,
        /// The panic message.
        detail: String,
    },
    /// The plugin refused to start.
    #[error("{path}: plugin failed to start: {detail}")]
    FailedToStart {
        /// The file.
        path: PathBuf,
        /// What it said.
        detail: String,
    },
}

impl LoadError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::NotALibrary { path, .. }
            | Self::NotAPlugin { path, .. }
            | Self::IncompatibleAbi { path, .. }
            | Self::PanickedWhileLoading { path, .. }
            | Self::FailedToStart { path, .. } => path,
        }
    }
}

fn one_line(s: impl std::fmt::Display) -> String {
    s.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `Error:` line of abi_stable's layout report (which runs to
/// hundreds of lines); the whole report goes to the debug log.
fn last_error_line(report: &str) -> String {
    report
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("Error:"))
        .map(|l| l.trim().trim_start_matches("Error:").trim().to_string())
        .unwrap_or_else(|| "the root module layout differs".to_string())
}

/// Loads, checks and instantiates the plugin in `path`.
pub fn load(path: &Path) -> Result<LoadedPlugin, LoadError> {
    let started = Instant::now();
    let path_buf = path.to_path_buf();
    let header = lib_header_from_path(path).map_err(|e| match e {
        LibraryError::OpenError { err, .. } => LoadError::NotALibrary {
            path: path_buf.clone(),
            detail: one_line(err),
        },
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin {
            path: path_buf.clone(),
            detail: "it exports no abi_stable root module".into(),
        },
        other => LoadError::NotAPlugin {
            path: path_buf.clone(),
            detail: one_line(other),
        },
    })?;

    let consts = header.root_mod_consts();
    if consts.base_name().as_str() != PluginRootRef::BASE_NAME {
        return Err(LoadError::NotAPlugin {
            path: path_buf,
            detail: format!("its abi_stable root module is `{}`", consts.base_name()),
        });
    }
    let plugin_abi = header.version_strings().version.to_string();
    let host_major = ABI_VERSION_STRING
        .split('.')
        .next()
        .unwrap_or("1")
        .to_string();
    let incompatible = |detail: String| LoadError::IncompatibleAbi {
        path: path_buf.clone(),
        plugin_abi: plugin_abi.clone(),
        host_abi: ABI_VERSION_STRING.to_string(),
        host_major: host_major.clone(),
        detail,
    };

    let root: PluginRootRef = header
        .init_root_module::<PluginRootRef>()
        .map_err(|e| match e {
            LibraryError::IncompatibleVersionNumber { .. } => incompatible(String::new()),
            LibraryError::AbiInstability(report) => {
                let report = report.to_string();
                tracing::debug!(path = %path_buf.display(), "abi_stable layout report:\n{report}");
                incompatible(format!(
                    " and its root module layout differs: {}",
                    last_error_line(&report)
                ))
            }
            LibraryError::RootModule {
                err: RootModuleError::Unwound,
                ..
            } => LoadError::PanickedWhileLoading {
                path: path_buf.clone(),
                name: "?".into(),
                detail: "its root module loader panicked".into(),
            },
            other => LoadError::FailedToStart {
                path: path_buf.clone(),
                detail: one_line(other),
            },
        })?;

    let object = match (root.instantiate())(host_context::context()) {
        RResult::ROk(object) => object,
        RResult::RErr(json) => {
            let err = PluginError::from_json(&json);
            return Err(if err.kind == bot_bottle_plugin_api::ErrorKind::Panic {
                LoadError::PanickedWhileLoading {
                    path: path_buf,
                    name: "?".into(),
                    detail: err.message,
                }
            } else {
                LoadError::FailedToStart {
                    path: path_buf,
                    detail: err.message,
                }
            });
        }
    };
    let info: PluginInfo = serde_json::from_str(&object.info).map_err(|e| LoadError::FailedToStart {
        path: path_buf.clone(),
        detail: format!("its self-description is unreadable ({e}); rebuild it against bot-bottle-plugin-api {host_major}.x"),
    })?;
    let kind = match (object.provider, object.backend, info.kind) {
        (RSome(p), _, PluginKind::Provider) => PluginObjectKind::Provider(p),
        (_, RSome(b), PluginKind::Backend) => PluginObjectKind::Backend(b),
        _ => {
            return Err(LoadError::FailedToStart {
                path: path_buf,
                detail: format!("it says it is a {} but does not provide one", info.kind),
            })
        }
    };
    let load_time = started.elapsed();
    tracing::debug!(plugin = %info.name, path = %path.display(), ?load_time, "loaded plugin");
    Ok(LoadedPlugin {
        info,
        path: path_buf,
        source: SearchDirSource::BesideBinary,
        load_time,
        object: kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_file_is_not_a_library() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("libjunk.so");
        std::fs::write(&p, b"this is not an ELF file").unwrap();
        let e = load(&p).unwrap_err();
        assert!(matches!(e, LoadError::NotALibrary { .. }), "{e}");
        let line = e.to_string();
        assert!(
            line.contains("libjunk.so: not a loadable shared library"),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn last_error_line_picks_the_final_error() {
        let report =
            "Error: first\n  lots\n  of detail\nError: mismatched field name\n   expected: a\n";
        assert_eq!(last_error_line(report), "mismatched field name");
    }
}
