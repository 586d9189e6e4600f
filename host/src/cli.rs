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
    /// Inspect installed plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Check every installed backend and provider on this host.
    Doctor(JsonFlag),
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
    eprintln!("{label}: {err}");
    let mut chain = err.chain().skip(1).peekable();
    if verbose > 0 {
        for cause in chain {
            eprintln!("  caused by: {cause}");
        }
    } else if chain.peek().is_some() {
        eprintln!("  (run with -v for the cause)");
    }
}
