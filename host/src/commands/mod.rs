//! One module per subcommand; each returns the process exit code.

mod bottles;
mod check_workspace;
mod doctor;
mod egress;
mod plan;
mod plugins;
mod run;

use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::plugins::{discovery, PluginSet};

/// Runs the parsed command.
pub fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Plan(args) => plan::run(cli, args),
        Command::Plugins(cmd) => plugins::run(cli, cmd),
        Command::Doctor(args) => doctor::run(cli, args),
        Command::Egress(cmd) => egress::run(cli, cmd),
        Command::Run(args) => run::run(cli, args),
        Command::CheckWorkspace(args) => check_workspace::run(args),
        Command::Ls(args) => bottles::ls(cli, args.json),
        Command::Stop { name } => bottles::stop(cli, name),
        Command::Rm { name } => bottles::rm(cli, name),
        Command::Logs {
            name,
            egress,
            follow,
        } => bottles::logs(cli, name, *egress, *follow),
        Command::Exec { name, command } => bottles::exec(cli, name, command),
        Command::Gc { images } => bottles::gc(cli, *images),
    }
}

/// Loads every plugin on the search path. Problems with files the command
/// does not need are warnings; the caller decides what is fatal.
pub(crate) fn load_plugins(cli: &Cli) -> PluginSet {
    let dirs = discovery::search_dirs_from_env(&cli.plugin_dirs);
    // A directory the user named (`--plugin-dir`, BOT_BOTTLE_PLUGIN_PATH)
    // that is not one is most likely a typo; the default places may well
    // not exist.
    for d in &dirs {
        let named = matches!(
            d.source,
            discovery::SearchDirSource::PluginDirFlag | discovery::SearchDirSource::EnvPath
        );
        if named && !d.path.is_dir() {
            let what = if d.path.exists() {
                "is not a directory"
            } else {
                "does not exist"
            };
            eprintln!(
                "warning: plugin directory {} ({}) {what}; no plugins are loaded from it",
                d.path.display(),
                d.source
            );
        }
    }
    let set = PluginSet::load(dirs);
    for s in &set.shadowed {
        tracing::info!("{s}");
    }
    set
}

/// Prints load errors as warnings (for commands that can go on without them).
pub(crate) fn warn_load_errors(set: &PluginSet) {
    for e in &set.errors {
        eprintln!("warning: {e}");
    }
}
