//! `bottle run`: the whole flow, from manifest to exit code, with teardown
//! on normal exit, on failure and on Ctrl-C / SIGTERM.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use bot_bottle_plugin_api::{RemoveRequest, WaitRequest};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::cli::{Cli, RunArgs};
use crate::launch::{self, LaunchOptions};
use crate::manifest::Manifest;
use crate::plan;
use crate::plugins::BackendHandle;

/// Removes the bottle, warning when that fails.
fn remove(backend: &BackendHandle<'_>, bottle_id: &str) {
    if let Err(e) = remove_quietly(backend, bottle_id) {
        eprintln!("warning: could not remove everything of bottle {bottle_id}: {e}; run `bottle gc` to finish");
    }
}

fn remove_quietly(
    backend: &BackendHandle<'_>,
    bottle_id: &str,
) -> Result<(), crate::plugins::PluginCallError> {
    let req = RemoveRequest {
        bottle_id: Some(bottle_id.to_string()),
        ..Default::default()
    };
    for r in backend.remove(&req)?.removed {
        tracing::info!("removed {r}");
    }
    Ok(())
}

pub(super) fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::load(&args.file)?;
    let plugins = super::load_plugins(cli);
    super::warn_load_errors(&plugins);
    let host_env = plan::host_env();
    let plan = plan::plan(manifest, &plugins, &host_env)?;
    if let Some(missing) = &plan.egress.missing {
        anyhow::bail!("{missing}; nothing was launched");
    }
    let backend = plugins.backend(&plan.manifest.backend)?;
    // What `bottle plan` asks the backend too, so a third-party backend's
    // refusal comes before anything exists (the Docker one checks again
    // inside its launch).
    launch::validate_with_backend(&plan, &backend)?;
    let tty = plan
        .manifest
        .tty
        .unwrap_or_else(|| std::io::stdin().is_terminal() && std::io::stdout().is_terminal());
    let bottle_id = launch::new_bottle_id(&plan.manifest.name);
    // Stdin goes to the agent with a terminal, and with `-i` (`cat
    // prompt.md | bottle run -i`). Not by default otherwise: a pipe that a
    // CI runner or a `while read` loop holds would be read ahead and lost
    // to the caller, and an agent that reads a stdin that is not a terminal
    // (`claude -p`) would wait for an end that never comes.
    if args.interactive && tty && !std::io::stdin().is_terminal() {
        // A terminal passes no end of input: the agent would wait for more
        // after the pipe ended, and `bottle run` with it.
        anyhow::bail!(
            "{}: `tty = true` with piped stdin (-i): a terminal never passes the end of the input, so the agent would wait forever; set `tty = false` in [agent] for piped input",
            plan.manifest.path.display()
        );
    }
    let stdin = !args.detach && (tty || args.interactive);
    let options = LaunchOptions {
        extra_args: args.args.clone(),
        tty,
        stdin,
        attached: !args.detach,
        egress_program: launch::egress_program(),
    };
    let (spec, ca) = launch::launch_spec(&plan, &bottle_id, &options)?;
    // The workspace's git repositories before the agent can touch them,
    // compared when it has ended: new entries that make the host's git run
    // commands are named before the exit code (docs/manifest.md).
    let workspace = (!args.detach)
        .then_some(plan.manifest.workspace.as_deref())
        .flatten()
        .map(crate::workspace_guard::Snapshot::take);
    let check_workspace = || {
        if let Some(before) = &workspace {
            crate::workspace_guard::warn_changes(before);
        }
    };

    // Signals are caught before launch so that Ctrl-C during a slow launch
    // still removes whatever was created. SIGQUIT (Ctrl-\) too: its default
    // action would end bottle and leave the sidecar, real tokens and all.
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT]).context("installing signal handlers")?;
    let signal_handle = signals.handle();
    // The signal that ended the run (0: none): the exit code is 128 + it,
    // as a shell reports a process a signal ended.
    let interrupted = std::sync::atomic::AtomicI32::new(0);
    let stop_watch = AtomicBool::new(false);

    std::thread::scope(|s| -> anyhow::Result<ExitCode> {
        s.spawn(|| {
            if let Some(sig) = signals.forever().next() {
                interrupted.store(sig, Ordering::SeqCst);
                eprintln!("bottle: received signal {sig}; removing bottle {bottle_id}");
                remove(&backend, &bottle_id);
            }
        });
        let finish = |code: anyhow::Result<ExitCode>| {
            signal_handle.close();
            code
        };

        tracing::info!(bottle = %bottle_id, backend = %backend.plugin.info.name, "launching");
        if let Err(e) = backend.launch(&spec) {
            // The backend removes what it made on a failed launch; make sure,
            // and say so only if that worked (with the daemon gone, the
            // removal fails the same way, and `nothing is left` may be
            // untrue).
            let left = match remove_quietly(&backend, &bottle_id) {
                Ok(()) => "nothing is left running".to_string(),
                Err(_) => format!(
                    "what it made may remain: run `bottle gc` once the {} backend answers",
                    backend.plugin.info.name
                ),
            };
            // An error about `[backends.NAME]` names its line.
            let e = plan::place_options_error(&plan.manifest, e);
            return finish(Err(anyhow::anyhow!(
                "bottle {bottle_id} failed to launch ({left}): {e}"
            )));
        }
        let by_signal = |sig: i32| ExitCode::from(128u8.saturating_add(sig as u8));
        let sig = interrupted.load(Ordering::SeqCst);
        if sig != 0 {
            remove(&backend, &bottle_id);
            check_workspace();
            return finish(Ok(by_signal(sig)));
        }
        if args.detach {
            println!("{bottle_id}");
            if let Some(note) = crate::rotation::detached_note(&plan.provision.credential_sources) {
                eprintln!("{note}");
            }
            if plan.manifest.workspace.is_some() {
                eprintln!(
                    "bottle: the workspace is not checked for git settings the agent adds (they \
                     can make git run commands as you); when the bottle is done, run `bottle \
                     check-workspace -f {}` before using git there",
                    args.file.display()
                );
            }
            return finish(Ok(ExitCode::SUCCESS));
        }

        s.spawn(|| {
            crate::rotation::watch(&plugins, &plan, &bottle_id, &ca, &host_env, &stop_watch)
        });
        let waited = backend.wait(&WaitRequest {
            schema: bot_bottle_plugin_api::PAYLOAD_SCHEMA,
            bottle_id: bottle_id.clone(),
            attach: true,
        });
        stop_watch.store(true, Ordering::SeqCst);

        let sig = interrupted.load(Ordering::SeqCst);
        if sig != 0 {
            // The signal thread already removed the bottle.
            check_workspace();
            return finish(Ok(by_signal(sig)));
        }
        check_workspace();
        let result = match waited {
            Ok(report) => {
                if let Some(reason) = &report.reason {
                    eprintln!("bottle: {reason}");
                }
                Ok(ExitCode::from(u8::try_from(report.exit_code).unwrap_or(1)))
            }
            Err(e) => Err(anyhow::anyhow!("lost bottle {bottle_id}: {e}")),
        };
        if args.keep {
            // Kept for reading: its proxy, which holds the real tokens, has
            // nothing left to serve, so it stops (its logs stay).
            if let Err(e) = backend.stop(&bot_bottle_plugin_api::BottleRef {
                schema: bot_bottle_plugin_api::PAYLOAD_SCHEMA,
                bottle_id: bottle_id.clone(),
            }) {
                eprintln!("warning: could not stop the proxy of kept bottle {bottle_id}: {e}; `bottle stop {bottle_id}` stops it");
            }
            eprintln!("bottle: kept {bottle_id} (stopped); `bottle logs {bottle_id}` to read it, `bottle rm {bottle_id}` to remove it (`bottle gc` removes it too)");
        } else {
            remove(&backend, &bottle_id);
        }
        finish(result)
    })
}
