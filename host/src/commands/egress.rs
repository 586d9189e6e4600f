//! `bottle egress serve` (what the sidecar runs) and `bottle egress check`.

use std::process::ExitCode;

use bot_bottle_egress::{Action, ProxyConfig};

use crate::cli::EgressCommand;
use crate::output::print_json;

pub(super) fn run(cmd: &EgressCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EgressCommand::Serve { config, listen } => {
            // Reloads the file on SIGHUP: how rotated credentials arrive.
            bot_bottle_egress::serve_file_blocking(config, *listen)?;
            Ok(ExitCode::SUCCESS)
        }
        EgressCommand::Check {
            config,
            method,
            url,
            json,
        } => {
            let cfg = ProxyConfig::from_file(config)?;
            let decision = bot_bottle_egress::check(&cfg, method, url);
            if *json {
                print_json(&decision)?;
            } else {
                println!("{decision}");
            }
            Ok(if matches!(decision.action, Action::Deny) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
