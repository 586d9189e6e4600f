//! `wait`, `logs` and `exec`: the operations that stream between the
//! bottle and this process's terminal.

use std::collections::HashMap;
use std::io::Write;
use std::pin::Pin;
use std::time::Duration;

use bollard::container::AttachContainerResults;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::{
    AttachContainerOptions, KillContainerOptions, LogsOptions, ResizeContainerTTYOptions,
    ResizeExecOptions, WaitContainerOptions,
};
use bollard::Docker;
use bot_bottle_plugin_api::{ExecRequest, ExitReport, LogsRequest, PluginError, WaitRequest};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::client::{is_not_found, Client};
use crate::names::{self, BottleNames};
use crate::tty::{self, RawMode, StdinPump};

/// How long output may keep draining after the process ended.
const DRAIN: Duration = Duration::from_secs(5);
/// After the process ended, an attach stream that has delivered nothing for
/// this long while we wait on it is done. Docker sometimes keeps the stream
/// of a container that exited while we attached open until the client
/// gives up (2 runs of `true` in 10 when `wait` attached after the start;
/// none in 12 since `bottle run` attaches before it, see [`EARLY`]); by the
/// time the container is reported stopped, Docker has copied all of its
/// output, so nothing is lost.
const DRAIN_IDLE: Duration = Duration::from_millis(300);
/// How often the drain looks at the stream's progress.
const DRAIN_TICK: Duration = Duration::from_millis(50);

/// Attachments made at launch, before the agent started, for `wait` to
/// take (`AgentLaunch::attached`), by bottle id. An attach made later, with
/// `logs: true` to replay what came before it, loses what the agent prints
/// while Docker switches from the replay to the live stream: up to two
/// thirds of a 600 KB burst (`seq 1 100000`) in 9 runs of 10.
static EARLY: std::sync::Mutex<Option<HashMap<String, AttachContainerResults>>> =
    std::sync::Mutex::new(None);

/// Attaches to the agent container of bottle `bottle_id` (created, not yet
/// started): its output, and its stdin when it keeps one open. `wait`
/// takes it.
pub(crate) async fn attach_early(
    client: &Client,
    bottle_id: &str,
    stdin: bool,
) -> Result<(), PluginError> {
    // The stream lasts as long as the agent.
    let docker = client.docker_long().await?;
    let attached = attach(&docker, &BottleNames::new(bottle_id).agent, stdin, false)
        .await
        .map_err(|e| client.api("attaching to the agent container", e))?;
    EARLY
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(bottle_id.to_string(), attached);
    Ok(())
}

/// Attaches to `agent`'s output, and to its stdin if `stdin`; `logs`
/// replays what it printed before.
async fn attach(
    docker: &Docker,
    agent: &str,
    stdin: bool,
    logs: bool,
) -> Result<AttachContainerResults, DockerError> {
    docker
        .attach_container(
            agent,
            Some(AttachContainerOptions {
                stdin,
                stdout: true,
                stderr: true,
                stream: true,
                logs,
                detach_keys: None,
            }),
        )
        .await
}

/// The attachment [`attach_early`] made for `bottle_id`, if any; dropping
/// it detaches.
pub(crate) fn take_early(bottle_id: &str) -> Option<AttachContainerResults> {
    EARLY
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_mut()?
        .remove(bottle_id)
}

/// A task that ends with its handle.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the output pump is doing, for the drain after the process ended.
#[derive(Default)]
struct Progress {
    /// Milliseconds since `epoch` of the last chunk handled.
    last_ms: std::sync::atomic::AtomicU64,
    /// Waiting for the next chunk (not busy writing one).
    waiting: std::sync::atomic::AtomicBool,
}

impl Progress {
    fn touch(&self, epoch: std::time::Instant) {
        self.last_ms.store(
            epoch.elapsed().as_millis() as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    fn idle_for(&self, epoch: std::time::Instant) -> Option<Duration> {
        use std::sync::atomic::Ordering::SeqCst;
        self.waiting.load(SeqCst).then(|| {
            Duration::from_millis(
                (epoch.elapsed().as_millis() as u64).saturating_sub(self.last_ms.load(SeqCst)),
            )
        })
    }
}

type Output = Pin<Box<dyn Stream<Item = Result<LogOutput, DockerError>> + Send>>;
type Input = Pin<Box<dyn AsyncWrite + Send>>;
type Resize = Box<dyn Fn(u16, u16) -> BoxFuture<'static, ()> + Send + Sync>;

pub fn wait(client: &Client, request: &WaitRequest) -> Result<ExitReport, PluginError> {
    names::validate_bottle_id(&request.bottle_id)?;
    bot_bottle_plugin_api::runtime().block_on(wait_async(client, request))
}

async fn wait_async(client: &Client, request: &WaitRequest) -> Result<ExitReport, PluginError> {
    let since = std::time::Instant::now();
    let docker = client.docker_long().await?;
    let names = BottleNames::new(&request.bottle_id);
    let inspect = |name| {
        docker.inspect_container(
            name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
    };
    let (agent, sidecar) = tokio::join!(inspect(&names.agent), inspect(&names.egress));
    // The holder of the network namespace the sidecar joined, if it shares
    // one (`egress_ns.rs`): the proxy's way out lives as long as it runs.
    let holder = sidecar
        .ok()
        .and_then(|c| c.config?.labels?.get(names::LABEL_EGRESS_NS).cloned());
    let agent = match agent {
        Ok(a) => a,
        Err(e) if is_not_found(&e) => return Err(crate::manage::not_found(&request.bottle_id)),
        Err(e) => return Err(client.api("inspecting the agent container", e)),
    };
    let config = agent.config.clone().unwrap_or_default();
    let tty = config.tty.unwrap_or(false);
    let stdin = config.open_stdin.unwrap_or(false);
    let running = agent
        .state
        .as_ref()
        .and_then(|s| s.running)
        .unwrap_or(false);

    // The attachment made before the agent started has all it printed,
    // even if it has ended by now. Otherwise attach before anything else
    // can happen; `logs: true` replays what the agent printed before we
    // got here.
    let early = take_early(&request.bottle_id);
    let mut io = None;
    let progress = std::sync::Arc::new(Progress::default());
    if request.attach && (running || early.is_some()) {
        let attached = match early {
            Some(a) => Ok(a),
            None => attach(&docker, &names.agent, stdin, true).await,
        };
        match attached {
            Ok(a) => {
                let d = docker.clone();
                let name = names.agent.clone();
                let resize: Resize = Box::new(move |w, h| {
                    let d = d.clone();
                    let name = name.clone();
                    async move {
                        let _ = d
                            .resize_container_tty(
                                &name,
                                ResizeContainerTTYOptions {
                                    w: w.into(),
                                    h: h.into(),
                                },
                            )
                            .await;
                    }
                    .boxed()
                });
                let p = progress.clone();
                io = Some(tokio::spawn(pump(
                    a.output,
                    a.input,
                    stdin,
                    tty,
                    resize,
                    Some((p, since)),
                )));
            }
            // It ended between the inspect and the attach: print its logs below.
            Err(e) => tracing::debug!("attach failed, printing logs instead: {e}"),
        }
    }
    let printed_live = io.is_some();

    let agent_exit = wait_not_running(&docker, &names.agent);
    let egress_exit = wait_not_running(&docker, &names.egress);
    let holder_exit = async {
        match &holder {
            Some(h) => wait_not_running(&docker, h).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(agent_exit, egress_exit, holder_exit);
    // Why the agent was stopped, when it did not end by itself.
    let mut stopped_because = None;
    // Fail closed: without its proxy, or without the proxy's network, the
    // agent has no way out; stop it rather than let it run on unsupervised.
    let stop_agent = || async {
        let _ = docker
            .kill_container(
                &names.agent,
                Some(KillContainerOptions {
                    signal: "KILL".into(),
                }),
            )
            .await;
    };
    tokio::select! {
        biased;
        _ = &mut agent_exit => {}
        _ = &mut egress_exit => {
            let (code, oom) = how_it_ended(&docker, &names.egress).await;
            stopped_because = Some(match oom {
                Some(limit) => Stopped::ProxyOutOfMemory(limit),
                None => Stopped::ProxyDied(
                    code,
                    crate::sidecar::death_note(&docker, &names.egress).await,
                ),
            });
            stop_agent().await;
            agent_exit.await;
        }
        _ = &mut holder_exit => {
            stopped_because = holder.clone().map(Stopped::NetworkLost);
            stop_agent().await;
            agent_exit.await;
        }
    }
    tracing::debug!(elapsed = ?since.elapsed(), "agent stopped");
    if let Some(mut io) = io {
        let deadline = tokio::time::Instant::now() + DRAIN;
        loop {
            tokio::select! {
                _ = &mut io => break,
                _ = tokio::time::sleep(DRAIN_TICK) => {}
            }
            if progress.idle_for(since).is_some_and(|d| d >= DRAIN_IDLE) {
                tracing::debug!(
                    "the agent's output stream stayed open after it stopped; closing it"
                );
                io.abort();
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::debug!("the agent's output did not end within {DRAIN:?}");
                io.abort();
                break;
            }
        }
    }
    if request.attach && !printed_live {
        print_logs(client, &docker, &names.agent, false).await?;
    }

    let inspect = match docker
        .inspect_container(
            &names.agent,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
    {
        Ok(i) => i,
        // Removed while we waited (another `bottle` tore it down).
        Err(e) if is_not_found(&e) => {
            return Ok(ExitReport {
                exit_code: 137,
                reason: Some("the bottle was removed while the agent ran".into()),
            })
        }
        Err(e) => return Err(client.api("reading the agent's exit code", e)),
    };
    let state = inspect.state.unwrap_or_default();
    let code = state.exit_code.unwrap_or(-1) as i32;
    if let Some(why) = stopped_because {
        let reason = match why {
            Stopped::ProxyDied(egress_code @ (137 | 143), note) if note.is_empty() => format!(
                "egress proxy was killed (exit code {egress_code}: `bottle rm`, `docker kill` or stop from elsewhere); \
                 the agent was stopped because it had no network (fail closed)"
            ),
            Stopped::ProxyDied(egress_code, note) if note.is_empty() => format!(
                "egress proxy died (exit code {egress_code}) and said nothing; the agent was stopped because it had no network (fail closed)"
            ),
            Stopped::ProxyDied(egress_code, note) => format!(
                "egress proxy died (exit code {egress_code}); the agent was stopped because it had no network (fail closed). \
                 The proxy's last words:\n  {note}"
            ),
            Stopped::ProxyOutOfMemory(limit) => format!(
                "egress proxy ran out of memory (its sidecar's limit, {} MiB) and was stopped by the kernel; \
                 the agent was stopped because it had no network (fail closed). An agent can make its proxy \
                 hold memory (docs/egress.md, \"Limits and known gaps\"); the limit, 512 MiB + 64 x the \
                 proxy's dlp.max_body_bytes, is not a manifest setting (docs/backends/docker.md)",
                limit >> 20
            ),
            Stopped::NetworkLost(holder) => format!(
                "the egress proxy lost its network: {holder}, which holds the network namespace it shares, stopped; \
                 the agent was stopped because it had no way out (fail closed). The next launch starts {holder} again"
            ),
        };
        return Ok(ExitReport {
            exit_code: if code == 0 { 125 } else { code },
            reason: Some(reason),
        });
    }
    let reason = if state.oom_killed.unwrap_or(false) {
        Some("oom: the agent ran out of memory; raise the bottle's memory limit".to_string())
    } else {
        let stop_signal = inspect.config.as_ref().and_then(|c| c.stop_signal.clone());
        match (&inspect.id, &state.started_at, &state.finished_at) {
            (Some(id), Some(started), Some(finished)) if code >= 128 => {
                let span = (started.as_str(), finished.as_str());
                ended_from_outside(&docker, id, span, code - 128, stop_signal.as_deref()).await
            }
            _ => None,
        }
    };
    Ok(ExitReport {
        exit_code: code,
        reason,
    })
}

/// Why the agent ended, when the Docker API signalled it from outside
/// this run (`bottle stop` or `docker stop` in another terminal, `docker
/// kill`) and that signal (`signal`: its exit code less 128) ended it:
/// from the daemon's `kill` events for the container between its start
/// and its end, times of the daemon's own clock (`State.StartedAt`,
/// `FinishedAt`; the client's may differ on a remote daemon). `kill`
/// comes before the container dies; its `stop` event comes after, and may
/// not be out yet. Without this an attached run ended with 143 and no
/// word. None when no such event ended it (a signal that did not end the
/// agent, such as SIGWINCH, does not count), or when the events do not
/// answer within a few seconds.
async fn ended_from_outside(
    docker: &Docker,
    id: &str,
    (started, finished): (&str, &str),
    signal: i32,
    stop_signal: Option<&str>,
) -> Option<String> {
    use time::format_description::well_known::Rfc3339;
    let since = time::OffsetDateTime::parse(started, &Rfc3339).ok()?;
    let finished = time::OffsetDateTime::parse(finished, &Rfc3339).ok()?;
    // The daemon logs `kill` after it has sent the signal, and an agent
    // that dies of it at once can be recorded as finished first (seen once
    // in CI: no event up to FinishedAt). So when the tight window shows no
    // such signal, a second look reaches a second past the end: a call
    // that may wait for the daemon's clock to get there, only in that race.
    let mut sent = kill_signals(docker, id, since, finished + Duration::from_millis(1)).await?;
    if !sent.contains(&signal) {
        sent = kill_signals(docker, id, since, finished + Duration::from_secs(1)).await?;
    }
    if !sent.contains(&signal) {
        return None;
    }
    // `docker stop` sends the stop signal, then SIGKILL after its timeout.
    let stop = stop_signal.map_or(Some(libc::SIGTERM), signal_number);
    if stop.is_some_and(|s| sent.contains(&s)) {
        return Some(
            "the agent was stopped from outside this run (`bottle stop` or `docker stop`)".into(),
        );
    }
    Some(format!(
        "the agent was killed from outside this run (signal {signal}: `docker kill`)"
    ))
}

/// The signals of the daemon's `kill` events for container `id` between
/// `since` and `until` (its clock); `None` if they do not come within a
/// few seconds.
async fn kill_signals(
    docker: &Docker,
    id: &str,
    since: time::OffsetDateTime,
    until: time::OffsetDateTime,
) -> Option<Vec<i32>> {
    // The API takes Unix times (the docker CLI converts dates itself).
    let unix = |t: time::OffsetDateTime| format!("{}.{:09}", t.unix_timestamp(), t.nanosecond());
    let filters = HashMap::from([
        ("container".to_string(), vec![id.to_string()]),
        ("type".to_string(), vec!["container".to_string()]),
        ("event".to_string(), vec!["kill".to_string()]),
    ]);
    let events = docker
        .events(Some(bollard::query_parameters::EventsOptions {
            since: Some(unix(since)),
            until: Some(unix(until)),
            filters: Some(filters),
        }))
        .take_while(|e| std::future::ready(e.is_ok()))
        .filter_map(|e| std::future::ready(e.ok()))
        .collect::<Vec<_>>();
    let events = tokio::time::timeout(Duration::from_secs(3), events)
        .await
        .ok()?;
    // Numbers, as the daemon gives them (`"signal": "15"`).
    Some(
        events
            .iter()
            .filter_map(|e| {
                e.actor
                    .as_ref()?
                    .attributes
                    .as_ref()?
                    .get("signal")?
                    .parse()
                    .ok()
            })
            .collect(),
    )
}

/// A signal as an image's `STOPSIGNAL` names it (`SIGQUIT`, `QUIT`, `3`).
fn signal_number(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let name = name.strip_prefix("SIG").unwrap_or(name);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "WINCH" => libc::SIGWINCH,
        _ => return None,
    })
}

/// Why `wait` stopped an agent that was still running (fail closed).
enum Stopped {
    /// The sidecar ended, with this exit code and its last stderr lines.
    ProxyDied(i64, String),
    /// The kernel stopped the sidecar at its memory limit (bytes).
    ProxyOutOfMemory(i64),
    /// The holder of the namespace the sidecar shares (named) stopped.
    NetworkLost(String),
}

/// Resolves when `container` is not running (or does not exist).
async fn wait_not_running(docker: &Docker, container: &str) {
    let mut stream = docker.wait_container(
        container,
        Some(WaitContainerOptions {
            condition: "not-running".into(),
        }),
    );
    // Any answer, a non-zero exit included, means it stopped; a vanished
    // container has stopped too.
    let _ = stream.next().await;
}

/// A stopped container's exit code (-1 if unknown), and its memory limit
/// if the kernel stopped it for reaching that.
async fn how_it_ended(docker: &Docker, container: &str) -> (i64, Option<i64>) {
    let Ok(i) = docker
        .inspect_container(
            container,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
    else {
        return (-1, None);
    };
    let state = i.state.unwrap_or_default();
    let limit = i.host_config.and_then(|h| h.memory).unwrap_or(0);
    let oom = (state.oom_killed == Some(true)).then_some(limit);
    (state.exit_code.unwrap_or(-1), oom)
}

/// Copies container output to our stdout/stderr and, when `stdin` is set,
/// our stdin to the container; handles raw mode and window resizes for a
/// TTY. Returns when the output ends.
/// `progress`, when given, is kept up to date for the drain in `wait`.
async fn pump(
    mut output: Output,
    mut input: Input,
    stdin: bool,
    tty: bool,
    resize: Resize,
    progress: Option<(std::sync::Arc<Progress>, std::time::Instant)>,
) {
    let waiting = |on: bool| {
        if let Some((p, epoch)) = &progress {
            p.touch(*epoch);
            p.waiting.store(on, std::sync::atomic::Ordering::SeqCst);
        }
    };
    let _raw = if tty && stdin {
        RawMode::enable(tty::STDIN)
    } else {
        None
    };
    let mut winch = None;
    if tty {
        if let Some((w, h)) = tty::window_size(tty::STDOUT) {
            resize(w, h).await;
        }
        winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
    }
    let resize = std::sync::Arc::new(resize);
    // Aborted with this pump, also when `wait` aborts it.
    let _resizer = winch.map(|mut winch| {
        let resize = resize.clone();
        AbortOnDrop(tokio::spawn(async move {
            while winch.recv().await.is_some() {
                if let Some((w, h)) = tty::window_size(tty::STDOUT) {
                    resize(w, h).await;
                }
            }
        }))
    });
    let pump_in = stdin.then(|| {
        let (pump, mut rx) = StdinPump::start();
        let task = tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                if input.write_all(&chunk).await.is_err() {
                    return;
                }
                let _ = input.flush().await;
            }
            // End of our input: close the container's stdin.
            let _ = input.shutdown().await;
        });
        (pump, AbortOnDrop(task))
    });

    waiting(true);
    while let Some(item) = output.next().await {
        waiting(false);
        match item {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&message);
                let _ = out.flush();
            }
            Ok(LogOutput::StdErr { message }) => {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(&message);
                let _ = err.flush();
            }
            Ok(LogOutput::StdIn { .. }) => {}
            Err(e) => {
                tracing::debug!("output stream ended: {e}");
                break;
            }
        }
        waiting(true);
    }
    if let Some((pump, task)) = pump_in {
        drop(pump);
        drop(task);
    }
}

async fn print_logs(
    client: &Client,
    docker: &Docker,
    container: &str,
    follow: bool,
) -> Result<(), PluginError> {
    let mut stream = docker.logs(
        container,
        Some(LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            tail: "all".into(),
            ..Default::default()
        }),
    );
    while let Some(item) = stream.next().await {
        match item {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&message);
                let _ = out.flush();
            }
            Ok(LogOutput::StdErr { message }) => {
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(&message);
                let _ = err.flush();
            }
            Ok(LogOutput::StdIn { .. }) => {}
            Err(e) if is_not_found(&e) => {
                return Err(PluginError::not_found(format!(
                    "container {container} is gone"
                )))
            }
            Err(e) => return Err(client.api(&format!("reading the logs of {container}"), e)),
        }
    }
    Ok(())
}

pub fn logs(client: &Client, request: &LogsRequest) -> Result<(), PluginError> {
    names::validate_bottle_id(&request.bottle_id)?;
    bot_bottle_plugin_api::runtime().block_on(async {
        let docker = client.docker_long().await?;
        let names = BottleNames::new(&request.bottle_id);
        let container = if request.egress {
            &names.egress
        } else {
            &names.agent
        };
        match docker
            .inspect_container(
                container,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Err(crate::manage::not_found(&request.bottle_id)),
            Err(e) => return Err(client.api(&format!("inspecting {container}"), e)),
        }
        print_logs(client, &docker, container, request.follow).await
    })
}

pub fn exec(client: &Client, request: &ExecRequest) -> Result<ExitReport, PluginError> {
    names::validate_bottle_id(&request.bottle_id)?;
    if request.command.is_empty() {
        return Err(PluginError::invalid("exec needs a command")
            .with_hint("for example `bottle exec NAME -- sh`"));
    }
    bot_bottle_plugin_api::runtime().block_on(async {
        let docker = client.docker_long().await?;
        let names = BottleNames::new(&request.bottle_id);
        let created = match docker
            .create_exec(
                &names.agent,
                CreateExecOptions {
                    attach_stdin: Some(request.tty),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(request.tty),
                    cmd: Some(request.command.clone()),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(c) => c,
            Err(e) if is_not_found(&e) => return Err(crate::manage::not_found(&request.bottle_id)),
            Err(e) => {
                return Err(client
                    .api("starting a command in the agent container", e)
                    .with_hint("the bottle must be running (`bottle ls`)"))
            }
        };
        let started = docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: request.tty,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(|e| client.api("starting a command in the agent container", e))?;
        if let StartExecResults::Attached { output, input } = started {
            let d = docker.clone();
            let id = created.id.clone();
            let resize: Resize = Box::new(move |w, h| {
                let d = d.clone();
                let id = id.clone();
                async move {
                    let _ = d
                        .resize_exec(
                            &id,
                            ResizeExecOptions {
                                w: w.into(),
                                h: h.into(),
                            },
                        )
                        .await;
                }
                .boxed()
            });
            pump(output, input, request.tty, request.tty, resize, None).await;
        }
        let inspect = docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| client.api("reading the command's exit code", e))?;
        Ok(ExitReport {
            exit_code: inspect.exit_code.unwrap_or(-1) as i32,
            reason: None,
        })
    })
}
