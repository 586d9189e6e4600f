//! `bottle plugins list` and `bottle plugins info NAME`.

use std::process::ExitCode;

use serde::Serialize;

use crate::cli::{Cli, PluginsCommand};
use crate::output::{print_json, table};
use crate::plugins::{LoadError, LoadedPlugin, Shadowed};

#[derive(Serialize)]
struct PluginRow<'a> {
    name: &'a str,
    kind: String,
    version: &'a str,
    abi: &'a str,
    path: &'a std::path::Path,
    source: String,
    description: &'a str,
    load_ms: f64,
}

fn row(p: &LoadedPlugin) -> PluginRow<'_> {
    PluginRow {
        name: &p.info.name,
        kind: p.info.kind.to_string(),
        version: &p.info.version,
        abi: &p.info.abi,
        path: &p.path,
        source: p.source.to_string(),
        description: &p.info.description,
        load_ms: p.load_time.as_secs_f64() * 1000.0,
    }
}

#[derive(Serialize)]
struct Listing<'a> {
    plugins: Vec<PluginRow<'a>>,
    errors: Vec<ErrorRow<'a>>,
    shadowed: &'a [Shadowed],
}

#[derive(Serialize)]
struct ErrorRow<'a> {
    path: &'a std::path::Path,
    message: String,
    #[serde(flatten)]
    detail: &'a LoadError,
}

pub(super) fn run(cli: &Cli, cmd: &PluginsCommand) -> anyhow::Result<ExitCode> {
    let set = super::load_plugins(cli);
    match cmd {
        PluginsCommand::List(args) => {
            if args.json {
                print_json(&Listing {
                    plugins: set.iter().map(row).collect(),
                    errors: set
                        .errors
                        .iter()
                        .map(|e| ErrorRow {
                            path: e.path(),
                            message: e.to_string(),
                            detail: e,
                        })
                        .collect(),
                    shadowed: &set.shadowed,
                })?;
            } else {
                let rows: Vec<Vec<String>> = set
                    .iter()
                    .map(row)
                    .map(|r| {
                        vec![
                            r.name.into(),
                            r.kind,
                            r.version.into(),
                            r.abi.into(),
                            r.path.display().to_string(),
                        ]
                    })
                    .collect();
                if rows.is_empty() {
                    let searched: Vec<String> = set
                        .searched
                        .iter()
                        .map(|d| d.path.display().to_string())
                        .collect();
                    println!("no plugins found (searched: {})", searched.join(", "));
                } else {
                    print!(
                        "{}",
                        table(&["NAME", "KIND", "VERSION", "ABI", "PATH"], &rows)
                    );
                }
                for s in &set.shadowed {
                    eprintln!("note: {s}");
                }
                for e in &set.errors {
                    eprintln!("error: {e}");
                }
            }
            Ok(if set.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        PluginsCommand::Info { name, json } => {
            super::warn_load_errors(&set);
            let Some(p) = set.get(name) else {
                anyhow::bail!("no plugin named `{name}` is installed; run `bottle plugins list` to see what is available");
            };
            if *json {
                print_json(&row(p))?;
            } else {
                let r = row(p);
                println!("name:        {}", r.name);
                println!("kind:        {}", r.kind);
                println!("version:     {}", r.version);
                println!("abi:         {}", r.abi);
                println!("path:        {}", r.path.display());
                println!("found via:   {}", r.source);
                println!("description: {}", r.description);
                println!("load time:   {:.3} ms", r.load_ms);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
