//! `bottle egress serve` (what the sidecar runs) and `bottle egress check`.

use std::process::ExitCode;

use anyhow::Context;

use bot_bottle_egress::{Action, Listener, ProxyConfig};

use crate::cli::{Cli, EgressCommand};
use crate::manifest::Manifest;
use crate::output::print_json;
use crate::plan;

/// Ends the proxy on SIGTERM or SIGINT. As a container's first process it
/// has no default action for them, so `docker stop` waited its whole
/// timeout (10 s) and then killed it. Nothing is lost by ending at once: the
/// agent is stopped first, so the workers are idle, and an idle worker has
/// written its audit lines (they are batched only while it has work).
fn exit_on_termination() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("installing signal handlers")?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!("egress: signal {sig}; exiting");
            std::process::exit(0);
        }
    });
    Ok(())
}

pub(super) fn run(cli: &Cli, cmd: &EgressCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EgressCommand::Serve {
            config,
            config_stdin,
            listen,
            listen_unix,
            allow_clients,
        } => {
            let overrides = bot_bottle_egress::Overrides {
                listen: *listen,
                allowed_clients: allow_clients.clone(),
            };
            let first = match config_stdin {
                true => ProxyConfig::from_reader(std::io::stdin().lock(), "standard input")?,
                false => ProxyConfig::from_file(config)?,
            };
            let first = overrides.apply(first);
            // Refused before "listening", which backends take as ready.
            first.validate()?;
            let listener = match listen_unix {
                Some(path) => Listener::bind_unix(path)
                    .with_context(|| format!("cannot listen on unix:{}", path.display()))?,
                None => Listener::Tcp(
                    std::net::TcpListener::bind(first.listen)
                        .with_context(|| format!("cannot listen on {}", first.listen))?,
                ),
            };
            exit_on_termination()?;
            // A rotation may follow the line below at once: a SIGHUP before
            // the reload loop is up must not end the proxy (its default).
            bot_bottle_egress::catch_early_hangup();
            // Backends wait for this line: the proxy accepts from here on.
            eprintln!("listening on {}", listener.describe());
            // Reloads the file on SIGHUP: how rotated credentials arrive.
            bot_bottle_egress::serve_reloadable(first, config, &overrides, listener)?;
            Ok(ExitCode::SUCCESS)
        }
        EgressCommand::PutConfig { path } => {
            put_config(path)?;
            Ok(ExitCode::SUCCESS)
        }
        EgressCommand::Check {
            file,
            config,
            method,
            url,
            json,
        } => {
            let cfg = match config {
                Some(path) => ProxyConfig::from_file(path)?,
                None => {
                    // The same plan `bottle plan` and `bottle run` make,
                    // provider routes included; unresolved tokens do not
                    // matter here, as no value is ever shown.
                    let manifest = Manifest::load(file)?;
                    let plugins = super::load_plugins(cli);
                    super::warn_load_errors(&plugins);
                    let plan = plan::plan(manifest, &plugins, &plan::host_env())?;
                    crate::launch::policy_config(&plan)
                }
            };
            // A URL the check cannot read is the caller's mistake, not a
            // refusal: exit 2, so a script can tell it from a deny (1).
            let readable = url
                .parse::<http::Uri>()
                .ok()
                .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some())
                .is_some();
            if !readable {
                eprintln!(
                    "error: {url:?} is not an http:// or https:// URL with a host \
                     (for example https://api.example.com/v1/models)"
                );
                return Ok(ExitCode::from(2));
            }
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

/// Reads a proxy config from standard input, checks it as the proxy will at
/// its reload, and puts it at `path` readable by this user alone: written
/// beside it, then renamed over it, so a reload never reads half a file.
fn put_config(path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)
        .context("reading the config from standard input")?;
    // Parsed and checked: names and positions in its errors; a quoted value
    // is left out (`ProxyConfig::from_json`).
    ProxyConfig::from_json(&text)?;
    let tmp = path.with_extension("json.new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}
