//! Command-line interface: argument parsing, logging set-up and the error
//! edge (one message, `-v` for the whole chain, non-zero exit).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::commands;

/// Run AI coding agents in sandboxes behind an egress proxy that holds the
/// real credentials.
#[derive(Debug, Parser)]
#[command(name = "bottle", version, about, propagate_version = true)]
pub struct Cli {
    /// More output: -v for progress and plugin logs, -vv for debug, -vvv for
    /// everything. RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Look for plugins in DIR first (repeatable; searched in order).
    #[arg(long = "plugin-dir", value_name = "DIR", global = true)]
    pub plugin_dirs: Vec<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what a bottle will get (env, files, routes, token sources) without
    /// launching anything. Secret values are never printed.
    Plan(PlanArgs),
    /// Run a bottle: plan, launch, attach, and remove it when the agent exits.
    Run(RunArgs),
    /// List bottles on every backend.
    Ls(JsonFlag),
    /// Stop a running bottle (kept for `logs` until `rm`).
    Stop {
        /// Bottle id or name.
        name: String,
    },
    /// Remove a bottle and everything it created.
    Rm {
        /// Bottle id or name.
        name: String,
    },
    /// Print a bottle's agent output, or its egress audit log.
    Logs {
        /// Bottle id or name.
        name: String,
        /// The egress proxy's audit log (one JSON line per request).
        #[arg(long)]
        egress: bool,
        /// Keep following.
        #[arg(short, long)]
        follow: bool,
    },
    /// Run a command in a running bottle.
    Exec {
        /// Bottle id or name.
        name: String,
        /// The command.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Remove every bottle whose agent is not running (kept ones included)
    /// and everything labelled as bot-bottle's whose bottle is gone.
    Gc {
        /// Also remove cached images bot-bottle built (the egress sidecar
        /// image, the launch gate's image and its carrier).
        #[arg(long)]
        images: bool,
    },
    /// List every setting in a workspace's git repositories that makes git
    /// run a command (core.fsmonitor, hooks, aliases, filters …), whoever
    /// wrote it: what to look at before running git where an agent worked.
    /// Exit status 1 when there is any.
    CheckWorkspace(CheckWorkspaceArgs),
    /// Inspect installed plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Check every installed backend and provider on this host (with a
    /// manifest: with its options, as `bottle run` would use them).
    Doctor(DoctorArgs),
    /// The egress proxy (what a bottle's sidecar runs).
    #[command(subcommand)]
    Egress(EgressCommand),
}

/// `bottle plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The manifest.
    #[arg(short = 'f', long = "file", default_value = "bottle.toml")]
    pub file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `bottle run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The manifest.
    #[arg(short = 'f', long = "file", default_value = "bottle.toml")]
    pub file: PathBuf,
    /// Leave the bottle in place, stopped, after the agent exits (its
    /// logs stay for `bottle logs`; `bottle rm` or `bottle gc` removes it).
    #[arg(long)]
    pub keep: bool,
    /// Print the bottle id and return once it is up.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Forward stdin to the agent when it is not a terminal (a pipe or a
    /// file: `cat prompt.md | bottle run -i`); its end closes the agent's
    /// stdin. A terminal's is forwarded with `tty` anyway.
    #[arg(long, short = 'i', conflicts_with = "detach")]
    pub interactive: bool,
    /// Arguments appended to the agent command.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// `bottle check-workspace`.
#[derive(Debug, Args)]
pub struct CheckWorkspaceArgs {
    /// The manifest whose `[workspace] path` to check.
    #[arg(short = 'f', long = "file", default_value = "bottle.toml")]
    pub file: PathBuf,
    /// A directory to check instead of the manifest's workspace.
    #[arg(conflicts_with = "file")]
    pub path: Option<PathBuf>,
}

/// `bottle doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// A manifest: its backend and provider are checked with its options
    /// (`[backends.NAME]`, `[agent.options]`), as `bottle run` would pass them.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// A lone `--json` flag.
#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `bottle plugins …`.
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// List installed plugins and any that failed to load.
    List(JsonFlag),
    /// Details of one plugin.
    Info {
        /// Plugin name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `bottle egress …`.
#[derive(Debug, Subcommand)]
pub enum EgressCommand {
    /// Serve the proxy from a config file the host wrote.
    Serve {
        /// The proxy config (JSON); re-read on SIGHUP.
        #[arg(long)]
        config: PathBuf,
        /// Read the first config from standard input (until it closes)
        /// instead of the file; SIGHUP still reloads from --config. How the
        /// Docker sidecar gets its config without a file holding the secrets.
        #[arg(long)]
        config_stdin: bool,
        /// Listen address, overriding the config's.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Listen on a Unix socket at this path instead of TCP (any local
        /// user may connect: the directory decides who can reach it; the
        /// client-network check is for TCP peers only).
        #[arg(long, value_name = "PATH", conflicts_with = "listen")]
        listen_unix: Option<PathBuf>,
        /// Serve only clients from this network (CIDR; repeatable), overriding
        /// the config's `allowed_clients`.
        #[arg(long = "allow-client", value_name = "CIDR")]
        allow_clients: Vec<ipnet::IpNet>,
    },
    /// Replace a proxy config file with one read from standard input, checked
    /// first (mode 0400, swapped whole). How a credential rotation reaches a
    /// running Docker sidecar: run there, into its tmpfs, then SIGHUP.
    #[command(hide = true)]
    PutConfig {
        /// The config file to replace.
        path: PathBuf,
    },
    /// Print what the proxy would do with a request (header names only).
    Check {
        /// The manifest whose egress plan (its routes and the provider's)
        /// decides. Needs no credential: only names are shown.
        #[arg(short = 'f', long = "file", default_value = "bottle.toml")]
        file: PathBuf,
        /// A proxy config (JSON) to check against instead of a manifest.
        #[arg(long, conflicts_with = "file")]
        config: Option<PathBuf>,
        /// HTTP method.
        method: String,
        /// Full URL.
        url: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(verbose >= 2)
        .try_init();
}

/// Parses arguments, runs the command, prints any error, returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match commands::run(&cli) {
        Ok(code) => code,
        Err(err) => {
            print_error(&err, cli.verbose);
            ExitCode::FAILURE
        }
    }
}

/// Prints an error: the top message always, its causes with `-v`.
pub fn print_error(err: &anyhow::Error, verbose: u8) {
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let label = if ansi {
        "\x1b[1;31merror\x1b[0m"
    } else {
        "error"
    };
    let top = err.to_string();
    eprintln!("{label}: {top}");
    // Our messages usually carry their cause already; show only causes that
    // add something.
    let mut chain = err
        .chain()
        .skip(1)
        .map(|c| c.to_string())
        .filter(|c| !top.contains(c.as_str()))
        .peekable();
    if verbose > 0 {
        for cause in chain {
            eprintln!("  caused by: {cause}");
        }
    } else if chain.peek().is_some() {
        eprintln!("  (run with -v for the cause)");
    }
}
