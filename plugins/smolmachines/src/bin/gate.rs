//! `bot-bottle-smolmachines-gate --state-dir DIR`: the per-bottle host
//! process of the smolmachines backend (egress proxy, SMOLICPT interceptor
//! adapter, agent runner). Started by the plugin, which writes its setup to
//! stdin; see `bot_bottle_plugin_smolmachines::gate`.

use std::path::PathBuf;
use std::process::ExitCode;

/// The system allocator, with the gate's out-of-memory path: an allocation
/// that fails under the gate's memory limit stops the bottle and says why
/// (`bot_bottle_plugin_smolmachines::memory`).
#[global_allocator]
static ALLOC: bot_bottle_plugin_smolmachines::memory::GateAlloc =
    bot_bottle_plugin_smolmachines::memory::GateAlloc;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut dir = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--state-dir" => dir = args.next().map(PathBuf::from),
            _ => {
                eprintln!("usage: bot-bottle-smolmachines-gate --state-dir DIR  (setup on stdin)");
                return ExitCode::from(2);
            }
        }
    }
    let Some(dir) = dir else {
        eprintln!("usage: bot-bottle-smolmachines-gate --state-dir DIR  (setup on stdin)");
        return ExitCode::from(2);
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match bot_bottle_plugin_smolmachines::gate::main(dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gate: {e}");
            ExitCode::FAILURE
        }
    }
}
