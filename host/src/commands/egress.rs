//! `bottle egress serve` (what the sidecar runs) and `bottle egress check`.

use std::process::ExitCode;

use anyhow::Context;

use bot_bottle_egress::{Action, ProxyConfig};

use crate::cli::EgressCommand;
use crate::output::print_json;

pub(super) fn run(cmd: &EgressCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EgressCommand::Serve {
            config,
            listen,
            allow_clients,
        } => {
            let overrides = bot_bottle_egress::Overrides {
                listen: *listen,
                allowed_clients: allow_clients.clone(),
            };
            let addr = match listen {
                Some(a) => *a,
                None => ProxyConfig::from_file(config)?.listen,
            };
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr}"))?;
            // Backends that cannot probe the port wait for this line.
            eprintln!("listening on {}", listener.local_addr()?);
            // Reloads the file on SIGHUP: how rotated credentials arrive.
            bot_bottle_egress::serve_file_with_listener(config, &overrides, listener)?;
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
