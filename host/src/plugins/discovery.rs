//! Where plugins are looked for, in order:
//! 1. every `--plugin-dir DIR`, in the order given;
//! 2. every directory in `BOT_BOTTLE_PLUGIN_PATH` (`:`-separated);
//! 3. the user's data dir, `$XDG_DATA_HOME/bot-bottle/plugins`;
//! 4. the directory beside the `bottle` binary (where `cargo build` puts the
//!    in-tree plugins).
//!
//! The first plugin found with a given name wins.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Why a directory is on the search path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchDirSource {
    /// `--plugin-dir`.
    PluginDirFlag,
    /// `BOT_BOTTLE_PLUGIN_PATH`.
    EnvPath,
    /// `$XDG_DATA_HOME/bot-bottle/plugins`.
    DataDir,
    /// Beside the `bottle` binary.
    BesideBinary,
}

impl std::fmt::Display for SearchDirSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PluginDirFlag => "--plugin-dir",
            Self::EnvPath => "BOT_BOTTLE_PLUGIN_PATH",
            Self::DataDir => "the data dir",
            Self::BesideBinary => "beside the binary",
        })
    }
}

/// One directory on the search path.
#[derive(Debug, Clone, Serialize)]
pub struct SearchDir {
    /// The directory.
    pub path: PathBuf,
    /// Why it is searched.
    pub source: SearchDirSource,
}

/// The search path for this invocation.
pub fn search_dirs(
    flag_dirs: &[PathBuf],
    env_path: Option<&str>,
    data_dir: Option<PathBuf>,
    exe: Option<PathBuf>,
) -> Vec<SearchDir> {
    let mut dirs: Vec<SearchDir> = Vec::new();
    let mut push = |path: PathBuf, source| {
        if !dirs.iter().any(|d| d.path == path) {
            dirs.push(SearchDir { path, source });
        }
    };
    for d in flag_dirs {
        push(d.clone(), SearchDirSource::PluginDirFlag);
    }
    for d in env_path.unwrap_or("").split(':').filter(|s| !s.is_empty()) {
        push(PathBuf::from(d), SearchDirSource::EnvPath);
    }
    if let Some(d) = data_dir {
        push(
            d.join("bot-bottle").join("plugins"),
            SearchDirSource::DataDir,
        );
    }
    if let Some(dir) = exe.as_deref().and_then(Path::parent) {
        push(dir.to_path_buf(), SearchDirSource::BesideBinary);
    }
    dirs
}

/// The search path from the real environment.
pub fn search_dirs_from_env(flag_dirs: &[PathBuf]) -> Vec<SearchDir> {
    let env_path = std::env::var("BOT_BOTTLE_PLUGIN_PATH").ok();
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok());
    search_dirs(flag_dirs, env_path.as_deref(), dirs::data_dir(), exe)
}

/// Shared-library files in `dir`, sorted by name. A missing directory is
/// simply empty: most of the search path usually does not exist.
pub fn library_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = library_names(dir);
    files.retain(|p| p.is_file());
    files
}

/// Every entry of `dir` with a library's name, sorted, whatever it is now:
/// a link whose target does not exist yet is a library once someone
/// creates the target (the host guards these too, `plan`).
pub fn library_names(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_library_name(p))
        .collect();
    names.sort();
    names
}

fn is_library_name(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some(std::env::consts::DLL_EXTENSION)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_flag_env_data_binary_without_duplicates() {
        let dirs = search_dirs(
            &[PathBuf::from("/a"), PathBuf::from("/b")],
            Some("/c::/a"),
            Some(PathBuf::from("/home/u/.local/share")),
            Some(PathBuf::from("/opt/bb/bottle")),
        );
        let got: Vec<_> = dirs
            .iter()
            .map(|d| (d.path.to_str().unwrap(), d.source))
            .collect();
        assert_eq!(
            got,
            [
                ("/a", SearchDirSource::PluginDirFlag),
                ("/b", SearchDirSource::PluginDirFlag),
                ("/c", SearchDirSource::EnvPath),
                (
                    "/home/u/.local/share/bot-bottle/plugins",
                    SearchDirSource::DataDir
                ),
                ("/opt/bb", SearchDirSource::BesideBinary),
            ]
        );
    }
}
