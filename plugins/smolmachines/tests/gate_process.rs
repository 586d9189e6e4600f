//! The real gate binary as the plugin starts it: setup over a pipe, ready
//! line, records, secrets nowhere but its memory, and its ways to end.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bot_bottle_plugin_smolmachines::gate;
use bot_bottle_plugin_smolmachines::state::{self, GateRecord, Paths};
use common::*;

const GATE: &str = env!("CARGO_BIN_EXE_bot-bottle-smolmachines-gate");

fn exited_within(child: &mut std::process::Child, d: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < d {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn the_gate_takes_its_secrets_over_a_pipe_and_ends_when_told() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(Upstream::start(&[HOST]));
    let token = canary();
    let (config, _) = proxy_config("bb-gate-0001", &up, &token);
    let root = tempfile::tempdir().unwrap();
    let paths = Paths::new(&root.path().join("bb-gate-0001"));
    paths.create().unwrap();
    let setup = setup("bb-gate-0001", config);
    let mut child = Command::new(GATE)
        .arg("--state-dir")
        .arg(paths.dir())
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", serde_json::to_string(&setup).unwrap()).unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("ready 127.0.0.1:"), "{line:?}");

    let rec: GateRecord = state::read_json(&paths.gate()).unwrap();
    assert_eq!(rec.pid, child.id());
    assert_eq!(state::gate_alive(&paths), Some(child.id()));
    let mode = std::fs::metadata(paths.egress_log())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the audit log is private");
    let dir_mode = std::fs::metadata(paths.dir()).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700);

    // The real token is in no file, and not on the gate's command line or
    // in its environment. (The interceptor token is made inside the gate.)
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
    let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
    for secret in [&token] {
        let s = secret.as_bytes();
        assert!(!cmdline.windows(s.len()).any(|w| w == s));
        assert!(!environ.windows(s.len()).any(|w| w == s));
        for e in std::fs::read_dir(paths.dir()).unwrap().flatten() {
            let b = std::fs::read(e.path()).unwrap_or_default();
            assert!(
                !b.windows(s.len()).any(|w| w == s),
                "{}",
                e.path().display()
            );
        }
    }

    // The adapter serves, and a caller without the launch's token (made
    // inside the gate, known to no one else but the engine) gets nothing.
    let guess = gate::parse_token(&gate::new_token()).unwrap();
    let engine = EngineSide {
        adapter: line.trim().strip_prefix("ready ").unwrap().parse().unwrap(),
        token: guess,
    };
    let (_, verdict) = rt.block_on(engine.connect("198.18.0.1:3128"));
    assert_eq!(verdict, None);

    // End of input without `go`: the launch was abandoned; the gate exits.
    drop(stdin);
    assert!(exited_within(&mut child, Duration::from_secs(10)));
    assert_eq!(state::gate_alive(&paths), None);
}

fn spawn_gate(
    paths: &Paths,
    config: String,
) -> (
    std::process::Child,
    std::process::ChildStdin,
    BufReader<std::process::ChildStdout>,
) {
    let mut child = Command::new(GATE)
        .arg("--state-dir")
        .arg(paths.dir())
        .env_clear()
        // No engine here: a launch fails, and says so.
        .env("SMOLVM", "/nonexistent/smolvm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let id = paths
        .dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    writeln!(
        stdin,
        "{}",
        serde_json::to_string(&setup(&id, config)).unwrap()
    )
    .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("ready "), "{line:?}");
    (child, stdin, out)
}

#[test]
fn a_running_gate_ends_on_sigterm_and_when_its_records_vanish() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(Upstream::start(&[HOST]));
    let root = tempfile::tempdir().unwrap();
    for how in ["sigterm", "rmdir"] {
        let id = format!("bb-gate-{how}");
        let (config, _) = proxy_config(&id, &up, &canary());
        let paths = Paths::new(&root.path().join(&id));
        paths.create().unwrap();
        let (mut child, _stdin, _out) = spawn_gate(&paths, config);
        assert!(
            !exited_within(&mut child, Duration::from_millis(300)),
            "keeps serving"
        );
        match how {
            "sigterm" => assert!(state::stop_gate(&paths)),
            _ => std::fs::remove_dir_all(paths.dir()).unwrap(),
        }
        assert!(exited_within(&mut child, Duration::from_secs(10)), "{how}");
    }
}

#[test]
fn a_launch_the_engine_refuses_is_reported_and_the_gate_ends() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(Upstream::start(&[HOST]));
    let root = tempfile::tempdir().unwrap();
    let id = "bb-gate-fail";
    let token = canary();
    let (config, _) = proxy_config(id, &up, &token);
    let paths = Paths::new(&root.path().join(id));
    paths.create().unwrap();
    let (mut child, mut stdin, mut out) = spawn_gate(&paths, config);
    writeln!(stdin, "go").unwrap();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("failed "), "{line:?}");
    assert!(line.contains("/nonexistent/smolvm"), "{line:?}");
    assert!(!line.contains(&token));
    assert!(exited_within(&mut child, Duration::from_secs(10)));
    assert!(!paths.exit().exists(), "no agent ran");
}
