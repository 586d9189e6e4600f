//! `bottle egress check` and `bottle egress serve` through the real binary:
//! what they print, how they fail, and that the token in their config never
//! shows. Loopback and a temp dir only; no plugin is involved, so these run
//! `bottle` directly rather than through the plugin-building helper.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CANARY: &str = "canary-5e1b7d3a9c2f4e68-egress-token";
/// A guard against hangs; never a performance assertion.
const HANG: Duration = Duration::from_secs(30);

/// A proxy config as the host writes it: one route that injects the canary
/// as `X-Api-Key`, a fresh bottle CA, audit lines to `audit`.
fn config_json(audit: &Path) -> serde_json::Value {
    let ca =
        bot_bottle_egress::BottleCa::generate("bb-cli-test", &["api.example.test".into()]).unwrap();
    serde_json::json!({
        "schema": bot_bottle_egress::config::SCHEMA,
        "bottle_id": "bb-cli-test",
        "routes": [{
            "host": "api.example.test",
            "path_prefix": "/v1/",
            "methods": ["GET"],
            "inject": [{ "header": "X-Api-Key", "value": "{token}", "token_ref": "API_TOKEN" }],
        }],
        "tokens": { "API_TOKEN": CANARY },
        "ca": { "cert_pem": ca.cert_pem, "key_pem": ca.key_pem.expose() },
        "audit": { "path": audit },
    })
}

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("egress.json");
    let cfg = config_json(&dir.join("audit.jsonl"));
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

fn bottle() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bottle"));
    cmd.env_remove("RUST_LOG").env("NO_COLOR", "1");
    cmd
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("running bottle");
    (
        out.status.code().expect("bottle died from a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_no_canary(what: &str, text: &str) {
    assert!(
        !text.contains(CANARY),
        "the token leaked into {what}:\n{text}"
    );
}

#[test]
fn check_says_allow_or_deny_with_route_and_header_names_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let check = |args: &[&str]| {
        let (code, out, err) = run(bottle()
            .args(["egress", "check", "--config"])
            .arg(&cfg)
            .args(args));
        assert_no_canary("stdout", &out);
        assert_no_canary("stderr", &err);
        (code, out, err)
    };

    let (code, out, err) = check(&["GET", "https://api.example.test/v1/models"]);
    assert_eq!(code, 0, "{out}\n{err}");
    for line in [
        "decision: allow",
        "action: intercept",
        "route: #0 (api.example.test)",
        "inject: X-Api-Key",
    ] {
        assert!(out.lines().any(|l| l == line), "no {line:?} in:\n{out}");
    }

    let (code, out, _) = check(&["--json", "GET", "https://api.example.test/v1/models"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["allowed"], true);
    assert_eq!(v["route_host"], "api.example.test");
    assert_eq!(v["inject_headers"], serde_json::json!(["X-Api-Key"]));

    // No route names the host: denied, non-zero, nothing injected.
    let (code, out, err) = check(&["GET", "https://elsewhere.example.test/v1/models"]);
    assert_eq!(code, 1, "{out}\n{err}");
    for line in ["decision: deny", "route: none", "inject: none"] {
        assert!(out.lines().any(|l| l == line), "no {line:?} in:\n{out}");
    }
    // The route's method list applies too, and the reason says so.
    let (code, out, _) = check(&["POST", "https://api.example.test/v1/models"]);
    assert_eq!(code, 1);
    assert!(out.contains("decision: deny"), "{out}");
    assert!(out.contains("with GET only, not POST"), "{out}");
    // A URL it cannot read is a usage error (2), not a refusal (1).
    for bad in [
        "api.example.test/v1/models",
        "ftp://api.example.test/",
        "not a url",
    ] {
        let (code, out, err) = check(&["GET", bad]);
        assert_eq!(code, 2, "{bad}: {out}\n{err}");
        assert!(err.contains("is not an http:// or https:// URL"), "{err}");
    }
}

#[test]
fn check_with_a_bad_config_says_which_file_and_never_a_value() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let (code, out, err) = run(bottle()
        .args(["egress", "check", "--config"])
        .arg(&missing)
        .args(["GET", "https://api.example.test/v1/"]));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains(&format!("cannot read egress config {}", missing.display())),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");

    // A config with a misspelt field: named with the file, the token not shown.
    let mut cfg = config_json(&dir.path().join("audit.jsonl"));
    cfg["tokenz"] = cfg["tokens"].clone();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, cfg.to_string()).unwrap();
    let (code, out, err) = run(bottle()
        .args(["egress", "check", "--config"])
        .arg(&bad)
        .args(["GET", "https://api.example.test/v1/"]));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains(&bad.display().to_string()) && err.contains("unknown field `tokenz`"),
        "{err}"
    );
    assert_no_canary("stderr", &err);
    assert_no_canary("stdout", &out);
}

/// `bottle egress serve --config-stdin` as the Docker sidecar runs it: the
/// config written to stdin, which is then closed. Returns the child and its
/// address from the `listening on` line; the rest of stderr is collected by
/// a thread.
fn serve(dir: &Path, listen: &[&str]) -> (Child, String, std::thread::JoinHandle<String>) {
    let cfg = config_json(&dir.join("audit.jsonl"));
    let mut child = bottle()
        // The file is only where a rotation would put the next config; it
        // does not exist, so the first one can only have come from stdin.
        .args(["egress", "serve", "--config"])
        .arg(dir.join("rotated.json"))
        .arg("--config-stdin")
        .args(listen)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(cfg.to_string().as_bytes()).unwrap();
    drop(stdin);

    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    let rest = std::thread::spawn(move || {
        let mut seen = String::new();
        let mut tx = Some(tx);
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr.to_string());
                }
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    let addr = match rx.recv_timeout(HANG) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            panic!("no `listening on` line; stderr:\n{}", rest.join().unwrap());
        }
    };
    (child, addr, rest)
}

/// CONNECT to a host no route names; returns the response head.
fn connect_denied(mut s: impl Read + Write) -> String {
    s.write_all(
        b"CONNECT nowhere.example.test:443 HTTP/1.1\r\nHost: nowhere.example.test:443\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            // A signal to the test process (seen once in a full run) is
            // not the proxy's answer: read again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(_) => break,
            Err(e) => panic!("reading the CONNECT answer: {e}"),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// SIGTERM (what `docker stop` sends) ends the proxy promptly, by its own
/// handler: as a container's first process it would otherwise ignore it,
/// and `docker stop` waited 10 s and killed it.
fn terminate(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < HANG, "the proxy outlived SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// The deny reached the audit log. Workers write their lines when they go
/// idle, which can be just after the response, so this waits for it.
fn audited_deny(dir: &Path) {
    let start = Instant::now();
    let audit = loop {
        let audit = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap_or_default();
        if audit
            .lines()
            .any(|l| l.contains("nowhere.example.test") && l.contains("\"deny\""))
        {
            break audit;
        }
        assert!(
            start.elapsed() < HANG,
            "no deny line in the audit log:\n{audit}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_no_canary("the audit log", &audit);
}

#[test]
fn serve_reads_its_config_from_stdin_and_denies_an_unrouted_connect() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr, rest) = serve(dir.path(), &["--listen", "127.0.0.1:0"]);
    let s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(HANG)).unwrap();
    // Stdin is closed by now: the proxy keeps serving after it.
    let head = connect_denied(s);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    audited_deny(dir.path());
    terminate(child);
    assert_no_canary("stderr", &rest.join().unwrap());
}

#[test]
fn serve_on_a_unix_socket_as_the_docker_sidecar_does() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("proxy.sock");
    let (child, addr, rest) = serve(dir.path(), &["--listen-unix", sock.to_str().unwrap()]);
    assert_eq!(addr, format!("unix:{}", sock.display()));
    let s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(HANG)).unwrap();
    let head = connect_denied(s);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    audited_deny(dir.path());
    terminate(child);
    assert_no_canary("stderr", &rest.join().unwrap());
}

#[test]
fn serve_with_nothing_on_stdin_stops_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(bottle()
        .args(["egress", "serve", "--config"])
        .arg(dir.path().join("rotated.json"))
        .args(["--config-stdin", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null()));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("egress config standard input: no config was given"),
        "{err}"
    );
    assert!(!err.contains("listening on"), "{err}");
}

/// An `upstream.extra_ca_pem` with no certificate in it is refused before
/// the `listening on` line backends take as ready, not after it (when the
/// agent would already be running against a proxy about to die).
#[test]
fn serve_refuses_an_extra_ca_without_a_certificate_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_json(&dir.path().join("audit.jsonl"));
    cfg["upstream"] = serde_json::json!({ "extra_ca_pem": "not a certificate\n" });
    let path = dir.path().join("egress.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let mut child = bottle()
        .args(["egress", "serve", "--config"])
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > HANG {
            child.kill().unwrap();
            panic!("the proxy kept serving a config it cannot use");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("upstream.extra_ca_pem holds no PEM certificate"),
        "{err}"
    );
    assert!(!err.contains("listening on"), "{err}");
    assert_no_canary("stderr", &err);
}
