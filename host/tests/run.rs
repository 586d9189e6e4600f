//! `bottle run` refusals that must come before any backend is asked to do
//! anything. No Docker: `DOCKER_HOST` points the docker backend at a socket
//! this test listens on, so reaching the backend shows up as a connection.

mod support;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use support::*;

const CANARY: &str = "canary-3d8e2a6f1c9b4750-run-token";

/// A stand-in Docker daemon that counts connections and drops each at once,
/// so a backend that reaches it fails quickly instead of waiting.
fn fake_daemon(dir: &Path) -> (String, Arc<AtomicUsize>) {
    let sock = dir.join("docker.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            c.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    (format!("unix://{}", sock.display()), count)
}

const MANIFEST: &str = r#"
name = "needs-token"
backend = "docker"

[agent]
provider = "generic"
image = "bot-bottle/none"
command = ["true"]

[[egress.route]]
host = "api.example.test"
inject = [{ header = "Authorization", value = "Bearer {token}", token_ref = "RUN_TEST_API_TOKEN" }]
"#;

#[test]
fn a_missing_token_ref_stops_run_before_the_backend_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("bottle.toml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let (docker_host, connections) = fake_daemon(dir.path());
    let run_with = |token: Option<&str>| {
        let mut cmd = bottle(data.path());
        cmd.env("DOCKER_HOST", &docker_host)
            // A value that is there but is not the missing ref's.
            .env("RUN_TEST_OTHER_TOKEN", CANARY)
            .args(["run", "-f"])
            .arg(&manifest);
        match token {
            Some(t) => cmd.env("RUN_TEST_API_TOKEN", t),
            None => cmd.env_remove("RUN_TEST_API_TOKEN"),
        };
        run(&mut cmd)
    };

    let (code, out, err) = run_with(None);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("egress token ref `RUN_TEST_API_TOKEN` not set")
            && err.contains("nothing was launched"),
        "{err}"
    );
    assert!(
        !out.contains(CANARY) && !err.contains(CANARY),
        "{out}\n{err}"
    );
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the backend was reached although a token ref was missing"
    );

    // The probe works: with the ref set, the same run does reach the
    // backend (which then fails on the stand-in daemon).
    let (code, _, err) = run_with(Some(CANARY));
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("failed to launch"), "{err}");
    assert!(connections.load(Ordering::SeqCst) > 0, "{err}");
    assert!(!err.contains(CANARY), "{err}");
}

/// A token value the proxy would refuse (a newline cannot be in a header)
/// stops `bottle run` before the backend is reached, with the route and
/// the ref named and the value not shown. The agent starts while its proxy
/// comes up, so found by the proxy it let the agent run against no proxy.
#[test]
fn a_token_the_proxy_would_refuse_stops_run_before_the_backend_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("bottle.toml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let (docker_host, connections) = fake_daemon(dir.path());
    let (code, out, err) = run(bottle(data.path())
        .env("DOCKER_HOST", &docker_host)
        .env("RUN_TEST_API_TOKEN", format!("{CANARY}\n"))
        .args(["run", "-f"])
        .arg(&manifest));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("the egress proxy would refuse")
            && err.contains("token ref RUN_TEST_API_TOKEN")
            && err.contains("value not shown"),
        "{err}"
    );
    assert!(!out.contains(CANARY) && !err.contains(CANARY), "{err}");
    assert_eq!(connections.load(Ordering::SeqCst), 0, "{err}");
}

/// `tty = true` with piped stdin (`-i`) is refused before the backend is
/// reached: a terminal passes no end of input, so the agent (and `bottle
/// run`) would wait forever after the pipe ended.
#[test]
fn a_terminal_with_piped_stdin_is_refused_before_the_backend_is_reached() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("bottle.toml");
    std::fs::write(
        &manifest,
        MANIFEST.replace("command = [\"true\"]", "command = [\"cat\"]\ntty = true"),
    )
    .unwrap();
    let (docker_host, connections) = fake_daemon(dir.path());
    let (code, out, err) = run(bottle(data.path())
        .env("DOCKER_HOST", &docker_host)
        .env("RUN_TEST_API_TOKEN", CANARY)
        .args(["run", "-i", "-f"])
        .arg(&manifest)
        .stdin(std::process::Stdio::null()));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("`tty = true` with piped stdin"), "{err}");
    assert_eq!(connections.load(Ordering::SeqCst), 0, "{err}");
}
