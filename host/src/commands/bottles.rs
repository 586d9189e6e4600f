//! Managing bottles after launch: `ls`, `stop`, `rm`, `logs`, `exec`, `gc`.
//! Every backend is asked; a bottle is named by its id or by its manifest
//! name when that is unambiguous.

use std::io::IsTerminal;
use std::process::ExitCode;

use bot_bottle_plugin_api::{
    BottleRef, BottleStatus, ExecRequest, ListRequest, LogsRequest, RemoveRequest, PAYLOAD_SCHEMA,
};

use crate::cli::Cli;
use crate::output::{print_json, table};
use crate::plugins::{BackendHandle, PluginSet};

/// Every backend's bottles, and what the backends that could not list
/// theirs said (a dead Docker daemon): the caller decides how much that
/// matters, as "no bottles" and "could not look" are not the same answer.
struct Listing<'a> {
    bottles: Vec<(BackendHandle<'a>, BottleStatus)>,
    failed: Vec<String>,
}

fn all_bottles(plugins: &PluginSet) -> Listing<'_> {
    let mut listing = Listing {
        bottles: Vec::new(),
        failed: Vec::new(),
    };
    for b in plugins.backends() {
        match b.list(&ListRequest::default()) {
            Ok(list) => listing.bottles.extend(list.into_iter().map(|s| (b, s))),
            Err(e) => listing.failed.push(e.to_string()),
        }
    }
    listing
}

fn find<'a>(
    plugins: &'a PluginSet,
    name: &str,
) -> anyhow::Result<(BackendHandle<'a>, BottleStatus)> {
    let Listing {
        bottles: all,
        failed,
    } = all_bottles(plugins);
    if let Some(found) = all.iter().find(|(_, s)| s.bottle_id == name) {
        return Ok(found.clone());
    }
    let by_name: Vec<_> = all
        .iter()
        .filter(|(_, s)| s.name == name || s.bottle_id.starts_with(name))
        .collect();
    match by_name.as_slice() {
        [one] => Ok((*one).clone()),
        [] if !failed.is_empty() => anyhow::bail!(
            "no bottle named `{name}` among the backends that answered; it may be on one that did not: {}",
            failed.join("; ")
        ),
        [] => anyhow::bail!("no bottle named `{name}`; `bottle ls` lists them"),
        many => anyhow::bail!(
            "`{name}` matches {} bottles ({}); use the id",
            many.len(),
            many.iter()
                .map(|(_, s)| s.bottle_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `bottle ls`.
pub(super) fn ls(cli: &Cli, json: bool) -> anyhow::Result<ExitCode> {
    let plugins = super::load_plugins(cli);
    let listing = all_bottles(&plugins);
    let all: Vec<BottleStatus> = listing.bottles.into_iter().map(|(_, s)| s).collect();
    if json {
        print_json(&all)?;
    } else {
        let rows: Vec<Vec<String>> = all
            .iter()
            .map(|s| {
                vec![
                    s.bottle_id.clone(),
                    s.name.clone(),
                    s.backend.clone(),
                    s.state.clone(),
                    s.image.clone(),
                    s.created.clone(),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &["ID", "NAME", "BACKEND", "STATE", "IMAGE", "CREATED"],
                &rows
            )
        );
    }
    // What could be listed is printed; a backend that could not list makes
    // the answer incomplete, and the exit status says so.
    for f in &listing.failed {
        eprintln!("error: {f}");
    }
    Ok(if listing.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `bottle stop`.
pub(super) fn stop(cli: &Cli, name: &str) -> anyhow::Result<ExitCode> {
    let plugins = super::load_plugins(cli);
    let (backend, status) = find(&plugins, name)?;
    backend.stop(&BottleRef {
        schema: PAYLOAD_SCHEMA,
        bottle_id: status.bottle_id.clone(),
    })?;
    eprintln!("stopped {}", status.bottle_id);
    Ok(ExitCode::SUCCESS)
}

/// `bottle rm`.
pub(super) fn rm(cli: &Cli, name: &str) -> anyhow::Result<ExitCode> {
    let plugins = super::load_plugins(cli);
    let (backend, status) = find(&plugins, name)?;
    let report = backend.remove(&RemoveRequest {
        bottle_id: Some(status.bottle_id.clone()),
        ..Default::default()
    })?;
    for r in report.removed {
        eprintln!("removed {r}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `bottle logs`.
pub(super) fn logs(cli: &Cli, name: &str, egress: bool, follow: bool) -> anyhow::Result<ExitCode> {
    let plugins = super::load_plugins(cli);
    let (backend, status) = find(&plugins, name)?;
    backend.logs(&LogsRequest {
        schema: PAYLOAD_SCHEMA,
        bottle_id: status.bottle_id,
        egress,
        follow,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `bottle exec`.
pub(super) fn exec(cli: &Cli, name: &str, command: &[String]) -> anyhow::Result<ExitCode> {
    let plugins = super::load_plugins(cli);
    let (backend, status) = find(&plugins, name)?;
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let report = backend.exec(&ExecRequest {
        schema: PAYLOAD_SCHEMA,
        bottle_id: status.bottle_id,
        command: command.to_vec(),
        tty,
    })?;
    Ok(ExitCode::from(u8::try_from(report.exit_code).unwrap_or(1)))
}

/// `bottle gc`.
pub(super) fn gc(cli: &Cli, images: bool) -> anyhow::Result<ExitCode> {
    let plugins = super::load_plugins(cli);
    let mut failed = false;
    for b in plugins.backends() {
        match b.remove(&RemoveRequest {
            bottle_id: None,
            garbage: true,
            images,
            ..Default::default()
        }) {
            Ok(report) => {
                for r in report.removed {
                    println!("removed {r}");
                }
            }
            Err(e) => {
                failed = true;
                eprintln!("error: {e}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
