//! Whole bottles on a real Docker engine, through `bottle run`: the agent
//! sees dummies, the upstream gets the real token, everything else is denied,
//! and nothing of the bottle remains afterwards.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bot_bottle_e2e::*;

const HOST: &str = "api.bottle.test";

fn canary() -> String {
    format!("canary-{:08x}{:08x}-real-token", rand_u32(), rand_u32())
}

/// Writes a manifest for a bottle named `name` whose agent runs `script`.
fn manifest(
    dir: &Path,
    name: &str,
    script: &str,
    up: &Upstream,
    extra_env: &[(&str, &str)],
) -> std::path::PathBuf {
    manifest_with(dir, name, script, up, extra_env, "")
}

/// [`manifest`] with more `[egress]` keys.
fn manifest_with(
    dir: &Path,
    name: &str,
    script: &str,
    up: &Upstream,
    extra_env: &[(&str, &str)],
    egress: &str,
) -> std::path::PathBuf {
    let allow = format!("allow_internal = [\"{}\"]", up.ip);
    manifest_allowing(
        dir,
        name,
        script,
        up,
        extra_env,
        &format!("{allow}\n{egress}"),
    )
}

/// [`manifest_with`] without the `allow_internal` that lets the proxy dial
/// the upstream's private address on its Docker network (the `[egress]`
/// keys are `egress` alone).
fn manifest_allowing(
    dir: &Path,
    name: &str,
    script: &str,
    up: &Upstream,
    extra_env: &[(&str, &str)],
    egress: &str,
) -> std::path::PathBuf {
    let env: String = extra_env
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\"\n"))
        .collect();
    let text = format!(
        r#"
name = "{name}"
backend = "docker"

[agent]
provider = "generic"
image = "{AGENT_IMAGE}"
command = ["sh", "-c", '''{script}''']

[agent.options]
dummy_env = ["API_TOKEN"]

[workspace]
path = "ws"

[env]
{env}
[resources]
memory = "256m"
pids = 128

[egress]
upstream_ca = "{ca}"
{egress}

[[egress.route]]
host = "{HOST}"
path_prefix = "/v1/"
inject = [{{ header = "Authorization", value = "Bearer {{token}}", token_ref = "API_TOKEN" }}]

[backends.docker]
egress_network = "{net}"
"#,
        ca = up.ca_pem.display(),
        net = up.network,
    );
    // The workspace is a directory of its own: bottle refuses a writable
    // mount that holds the manifest.
    use std::os::unix::fs::PermissionsExt;
    let ws = dir.join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::set_permissions(&ws, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = dir.join("bottle.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn unique(tag: &str) -> String {
    format!("e2e-{tag}-{:06x}", rand_u32() & 0xff_ffff)
}

#[test]
fn allowed_route_gets_the_real_token_while_the_agent_holds_a_dummy() {
    if !docker_available("allowed_route_gets_the_real_token_while_the_agent_holds_a_dummy") {
        return;
    }
    let up = Upstream::start("allowed", HOST);
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let name = unique("allowed");
    let token = canary();
    let script = r#"echo "agent-token=$API_TOKEN"; curl -sS --fail-with-body -H "Authorization: Bearer $API_TOKEN" https://api.bottle.test/v1/hello"#;
    let m = manifest(dir.path(), &name, script, &up, &[]);
    let (code, out, err) = output(
        bottle(data.path())
            .env("API_TOKEN", &token)
            .args(["run", "-f"])
            .arg(&m),
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("agent-token=bot-bottle-dummy"), "{out}");
    assert!(out.contains("\"authorization_present\":true"), "{out}");
    assert!(
        !out.contains(&token) && !err.contains(&token),
        "the real token reached bottle's output"
    );
    let hello = up.request_to("/v1/hello");
    assert_eq!(
        hello["headers"]["authorization"],
        format!("Bearer {token}"),
        "the upstream must receive the real token, replacing the dummy"
    );
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
}

#[test]
fn an_upstream_on_a_private_network_is_reached_only_when_allowed() {
    let test = "an_upstream_on_a_private_network_is_reached_only_when_allowed";
    if !docker_available(test) {
        return;
    }
    // api.bottle.test resolves, in the sidecar, to the upstream's address
    // on a Docker network: a private one, which the proxy does not dial for
    // a name unless [egress] allow_internal lists it.
    let up = Upstream::start("private", HOST);
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let name = unique("private");
    let script = r#"curl -sS -w '\nstatus=%{http_code}\n' https://api.bottle.test/v1/hello"#;
    let m = manifest_allowing(dir.path(), &name, script, &up, &[], "");
    let (code, out, err) = output(
        bottle(data.path())
            .env("API_TOKEN", canary())
            .args(["run", "-f"])
            .arg(&m),
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("status=403"), "{out}");
    assert!(
        out.contains("api.bottle.test resolves to a private address")
            && out.contains("allow_internal"),
        "the refusal names the host, the class and the key:\n{out}"
    );
    assert!(!out.contains(&up.ip), "the agent sees the address:\n{out}");
    assert!(
        up.requests().iter().all(|r| r["path"] != "/v1/hello"),
        "the refused request reached the upstream"
    );
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
    // The same bottle with the upstream's address allowed reaches it.
    let m = manifest(dir.path(), &name, script, &up, &[]);
    let (code, out, err) = output(
        bottle(data.path())
            .env("API_TOKEN", canary())
            .args(["run", "-f"])
            .arg(&m),
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("status=200"), "{out}");
    up.request_to("/v1/hello");
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
}

#[test]
fn a_corporate_proxy_in_the_way_gets_its_credential_and_the_agent_never_does() {
    let test = "a_corporate_proxy_in_the_way_gets_its_credential_and_the_agent_never_does";
    if !docker_available(test) {
        return;
    }
    let up = Upstream::start("corp", HOST);
    // The corporate proxy, on the upstream's network: the sidecar must go
    // through it, with the password only the host knows.
    let password = canary();
    let auth_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        auth_dir.path().join("proxy-auth"),
        format!("corp:{password}"),
    )
    .unwrap();
    let corp = format!("{}-corp-proxy", up.container);
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
        }
    }
    let _corp = Gone(corp.clone());
    let mount = format!("{}:/certs:ro", auth_dir.path().display());
    docker(&[
        "run",
        "-d",
        "--name",
        &corp,
        "--label",
        "bot-bottle-test=1",
        "--network",
        &up.network,
        "--network-alias",
        "corp-proxy.test",
        "-v",
        &mount,
        UPSTREAM_IMAGE,
        "/bin/demo-upstream",
        "proxy",
        "--dir",
        "/certs",
        "--listen",
        "0.0.0.0:3128",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let name = unique("corp");
    let token = canary();
    let script = r#"env; curl -sS --fail-with-body https://api.bottle.test/v1/hello"#;
    let m = manifest_with(
        dir.path(),
        &name,
        script,
        &up,
        &[],
        "upstream_proxy = \"http://corp-proxy.test:3128\"\nupstream_proxy_auth_ref = \"CORP_PROXY_AUTH\"",
    );
    // Without the credential on the host: refused before anything starts.
    let (code, out, err) = output(
        bottle(data.path())
            .env("API_TOKEN", &token)
            .env_remove("CORP_PROXY_AUTH")
            .args(["run", "-f"])
            .arg(&m),
    );
    assert_ne!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("`CORP_PROXY_AUTH`"), "{err}");
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));

    let (code, out, err) = output(
        bottle(data.path())
            .env("API_TOKEN", &token)
            .env("CORP_PROXY_AUTH", format!("corp:{password}"))
            .args(["run", "-f"])
            .arg(&m),
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("\"authorization_present\":true"), "{out}");
    // The agent printed its whole env: neither secret is in it, nor
    // anywhere else bottle printed.
    for secret in [&password, &token] {
        assert!(
            !out.contains(secret.as_str()) && !err.contains(secret.as_str()),
            "a secret reached the agent or bottle's output"
        );
    }
    let (_, proxy_log, _) = output(Command::new("docker").args(["logs", &corp]));
    let connects: Vec<serde_json::Value> = proxy_log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        connects
            .iter()
            .any(|c| c["connect"] == format!("{HOST}:443") && c["proxy_auth"] == "ok"),
        "the corporate proxy saw: {connects:?}"
    );
    assert!(
        connects.iter().all(|c| c["proxy_auth"] == "ok"),
        "a CONNECT without the credential: {connects:?}"
    );
    let hello = up.request_to("/v1/hello");
    assert_eq!(hello["headers"]["authorization"], format!("Bearer {token}"));
    assert!(
        hello["headers"].get("proxy-authorization").is_none(),
        "{hello}"
    );
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
}

#[test]
fn denied_hosts_direct_connections_and_dns_all_fail() {
    if !docker_available("denied_hosts_direct_connections_and_dns_all_fail") {
        return;
    }
    let up = Upstream::start("denied", HOST);
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let name = unique("denied");
    let script = r#"
echo "connect=$(curl -s -o /dev/null -w '%{http_connect}' https://denied.bottle.test/)"
echo "plain-body=$(curl -s http://denied.bottle.test/)"
echo "path=$(curl -s -o /dev/null -w '%{http_code}' https://api.bottle.test/admin)"
curl --noproxy '*' -s -m 5 -k "https://$UPSTREAM_IP/v1/hello" >/dev/null && echo direct=reached || echo direct=blocked
getent hosts example.com >/dev/null && echo dns-external=resolved || echo dns-external=failed
getent hosts api.bottle.test >/dev/null && echo dns-upstream=resolved || echo dns-upstream=failed
"#;
    let m = manifest(dir.path(), &name, script, &up, &[("UPSTREAM_IP", &up.ip)]);
    let (code, out, err) = output(
        bottle(data.path())
            .env("API_TOKEN", canary())
            .args(["run", "-f"])
            .arg(&m),
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("connect=403"),
        "a denied CONNECT gets the proxy's 403:\n{out}"
    );
    assert!(
        out.contains("plain-body=") && out.contains("denied.bottle.test"),
        "the 403 body names the host:\n{out}"
    );
    assert!(
        out.contains("path=403"),
        "a path outside the route's prefix is denied:\n{out}"
    );
    assert!(out.contains("direct=blocked"), "{out}");
    assert!(out.contains("dns-external=failed"), "{out}");
    assert!(out.contains("dns-upstream=failed"), "{out}");
    assert!(
        up.requests().iter().all(|r| r["path"] != "/admin"),
        "the denied request reached the upstream"
    );
}

#[test]
fn the_canary_is_nowhere_the_agent_or_a_user_can_see_and_the_ca_key_is_absent() {
    if !docker_available(
        "the_canary_is_nowhere_the_agent_or_a_user_can_see_and_the_ca_key_is_absent",
    ) {
        return;
    }
    let up = Upstream::start("canary", HOST);
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let name = unique("canary");
    let token = canary();
    let script = r#"env; ls -la /etc/bot-bottle; cat /etc/bot-bottle/*; curl -sS -H "Authorization: Bearer $API_TOKEN" https://api.bottle.test/v1/x"#;
    let m = manifest(dir.path(), &name, script, &up, &[]);
    let (code, out, err) = output(
        bottle(data.path())
            .env("API_TOKEN", &token)
            .args(["-vv", "run", "--keep", "-f"])
            .arg(&m),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let agent = docker(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=bot-bottle.name={name}"),
        "--filter",
        "label=bot-bottle.role=agent",
    ]);
    let agent = agent.trim();
    assert!(!agent.is_empty(), "--keep must keep the agent container");

    let inspect = docker(&["inspect", agent]);
    let (_, logs, logs_err) = output(bottle(data.path()).args(["logs", &name]));
    let (_, egress_logs, _) = output(bottle(data.path()).args(["logs", &name, "--egress"]));
    let export = Command::new("docker")
        .args(["export", agent])
        .output()
        .unwrap()
        .stdout;
    let export = String::from_utf8_lossy(&export);

    for (what, text) in [
        ("bottle output", &out),
        ("bottle stderr", &err),
        ("docker inspect", &inspect),
        ("agent logs", &logs),
        ("logs stderr", &logs_err),
        ("egress audit log", &egress_logs),
        ("agent filesystem", &export.to_string()),
    ] {
        assert!(
            !text.contains(&token),
            "the real token appears in the {what}"
        );
    }
    // The proxy's config (the real token, the CA key) went to the sidecar
    // on its stdin: no file holds it, in the sidecar or in the agent.
    let sidecar = docker(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=bot-bottle.name={name}"),
        "--filter",
        "label=bot-bottle.role=egress",
    ]);
    let sidecar = sidecar.trim();
    let copied = Command::new("docker")
        .args(["cp", &format!("{sidecar}:/etc/bot-bottle/egress.json"), "-"])
        .output()
        .unwrap();
    assert!(!copied.status.success(), "a config file is in the sidecar");
    let sidecar_fs = Command::new("docker")
        .args(["export", sidecar])
        .output()
        .unwrap()
        .stdout;
    assert!(
        sidecar_fs.len() > 1000,
        "exported the sidecar's file system"
    );
    assert!(
        !String::from_utf8_lossy(&sidecar_fs).contains(&token),
        "the real token is in the sidecar's file system"
    );
    // The CA key went nowhere else: no private key in the agent's file
    // system (PEM, or PEM escaped inside JSON) belongs to the bottle CA's
    // certificate, the first one the agent printed. (Images carry keys of
    // their own, such as GnuTLS's self-test keys.)
    let ca_cert = rustls_pemfile::certs(&mut out.as_bytes())
        .next()
        .expect("the agent printed the CA certificate")
        .unwrap();
    assert!(
        !holds_key_of(&export, &ca_cert),
        "the bottle CA's private key is in the agent's filesystem"
    );
    assert!(
        out.contains("BEGIN CERTIFICATE"),
        "the agent should see the CA certificate:\n{out}"
    );
    assert!(
        egress_logs.contains(HOST),
        "the audit log records the request:\n{egress_logs}"
    );
    assert!(up
        .requests()
        .iter()
        .any(|r| r["headers"]["authorization"] == format!("Bearer {token}")));

    let (code, _, err) = output(bottle(data.path()).args(["rm", &name]));
    assert_eq!(code, 0, "{err}");
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
}

#[test]
fn exit_codes_propagate_and_nothing_remains_after_success_failure_or_a_bad_launch() {
    if !docker_available(
        "exit_codes_propagate_and_nothing_remains_after_success_failure_or_a_bad_launch",
    ) {
        return;
    }
    let up = Upstream::start("exit", HOST);
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    for (script, expected) in [("true", 0), ("exit 3", 3)] {
        let name = unique("exit");
        let m = manifest(dir.path(), &name, script, &up, &[]);
        let (code, out, err) = output(
            bottle(data.path())
                .env("API_TOKEN", "t0ken-value")
                .args(["run", "-f"])
                .arg(&m),
        );
        assert_eq!(code, expected, "{out}\n{err}");
        assert!(
            leftovers(&name).is_empty(),
            "{script}: {:?}",
            leftovers(&name)
        );
    }
    // `--keep` keeps the bottle for reading, but stops its proxy: it holds
    // the real tokens and has no agent left to serve.
    let name = unique("keep");
    let m = manifest(dir.path(), &name, "exit 3", &up, &[]);
    let (code, out, err) = output(
        bottle(data.path())
            .env("API_TOKEN", "t0ken-value")
            .args(["run", "--keep", "-f"])
            .arg(&m),
    );
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(!leftovers(&name).is_empty(), "kept: {err}");
    let running = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=bot-bottle.name={name}"),
    ]);
    assert!(
        running.trim().is_empty(),
        "a kept bottle still runs: {running}"
    );
    let (code, _, err) = output(bottle(data.path()).args(["rm", &name]));
    assert_eq!(code, 0, "{err}");
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
    // A launch that fails half-way (no such image) removes what it made.
    let name = unique("badimage");
    let m = manifest(dir.path(), &name, "true", &up, &[]);
    std::fs::write(
        &m,
        std::fs::read_to_string(&m)
            .unwrap()
            .replace(AGENT_IMAGE, "bot-bottle-test/does-not-exist"),
    )
    .unwrap();
    let (code, _, err) = output(
        bottle(data.path())
            .env("API_TOKEN", "t0ken-value")
            .args(["run", "-f"])
            .arg(&m),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("failed to launch"), "{err}");
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
}

/// `bottle run` attaches to the agent before it starts: an agent that
/// prints a lot at once, at its very start, loses nothing. (Attached after
/// the start, with Docker replaying what came before, up to two thirds of
/// this burst was lost in 9 runs of 10.)
#[test]
fn every_line_the_agent_prints_reaches_the_terminal() {
    if !docker_available("every_line_the_agent_prints_reaches_the_terminal") {
        return;
    }
    let up = Upstream::start("burst", HOST);
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    for run in 0..3 {
        let name = unique("burst");
        let m = manifest(
            dir.path(),
            &name,
            "seq 1 100000; echo stderr-line >&2; exit 3",
            &up,
            &[],
        );
        let (code, out, err) = output(
            bottle(data.path())
                .env("API_TOKEN", "t0ken-value")
                .args(["run", "-f"])
                .arg(&m),
        );
        assert_eq!(code, 3, "run {run}: {err}");
        let lines: Vec<&str> = out.lines().collect();
        let want: Vec<String> = (1..=100000).map(|i| i.to_string()).collect();
        assert!(
            lines == want,
            "run {run}: {} lines of 100000 on stdout, the first wrong or missing: line {}",
            lines.len(),
            want.iter()
                .zip(&lines)
                .position(|(w, l)| w != l)
                .unwrap_or(lines.len())
                + 1
        );
        assert!(err.contains("stderr-line"), "run {run}: {err}");
        assert!(!out.contains("stderr-line"), "stderr stays separate");
    }
}

/// With `-i`, piped stdin reaches the agent whole, and its end closes the
/// agent's stdin (`cat prompt.md | bottle run -i`, as `docker run -i`);
/// without it, a pipe is left to the caller (a `while read` loop around
/// `bottle run` keeps its input).
#[test]
fn piped_stdin_reaches_the_agent_and_its_end_closes_it() {
    if !docker_available("piped_stdin_reaches_the_agent_and_its_end_closes_it") {
        return;
    }
    let up = Upstream::start("stdin", HOST);
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let name = unique("stdin");
    let m = manifest(
        dir.path(),
        &name,
        "read first; echo got:$first; n=0; while read l; do n=$((n+1)); done; echo $n",
        &up,
        &[],
    );
    let mut child = bottle(data.path())
        .env("API_TOKEN", "t0ken-value")
        .args(["run", "-i", "-f"])
        .arg(&m)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = String::from("hello stdin\n");
    for i in 0..20000 {
        input.push_str(&format!("line {i} of the piped prompt\n"));
    }
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(input.as_bytes())
    });
    let out = child.wait_with_output().unwrap();
    let written = writer.join().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(exit_code(out.status), 0, "{stdout}\n{stderr}");
    assert!(
        written.is_ok(),
        "bottle stopped reading stdin: {written:?}\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    assert_eq!(lines, ["got:hello stdin", "20000"], "{stderr}");

    // Without `-i` the caller keeps its pipe: the line after the one a
    // loop read before `bottle run` is still there for it afterwards.
    let name = unique("nostdin");
    let m = manifest(dir.path(), &name, "cat", &up, &[]);
    let (code, out, err) = output(
        Command::new("sh")
            .arg("-c")
            .arg(r#"printf 'a\nb\n' | { read x; "$BOTTLE" run -f "$M" >/dev/null; read y; echo "after:$y"; }"#)
            .env("BOTTLE", bottle_exe())
            .env("M", &m)
            .env("XDG_DATA_HOME", data.path())
            .env("API_TOKEN", "t0ken-value"),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out.trim(), "after:b", "{err}");
}

/// `bottle run -f manifest` in the background (output captured), returned
/// once the bottle's agent container is running.
fn run_in_background(data: &Path, manifest: &Path, token: &str, name: &str) -> std::process::Child {
    let child = bottle(data)
        .env("API_TOKEN", token)
        .args(["run", "-f"])
        .arg(manifest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_agent(name);
    child
}

/// Waits until the bottle is up: its agent and its sidecar both run. The
/// agent's container starts while the proxy comes up (its program waits
/// in the launch gate), so a running agent alone does not mean a running
/// sidecar yet.
fn wait_for_agent(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let filter = format!("label=bot-bottle.name={name}");
    let running = |role: &str| {
        !docker(&[
            "ps",
            "-q",
            "--filter",
            &filter,
            "--filter",
            &format!("label=bot-bottle.role={role}"),
        ])
        .trim()
        .is_empty()
    };
    while Instant::now() < deadline {
        if running("agent") && running("egress") {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the bottle {name} never came up");
}

fn wait_exit(child: &mut std::process::Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return exit_code(status);
        }
        assert!(Instant::now() < deadline, "bottle did not exit");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigint_and_a_dead_sidecar_both_leave_nothing_behind() {
    if !docker_available("sigint_and_a_dead_sidecar_both_leave_nothing_behind") {
        return;
    }
    let up = Upstream::start("signal", HOST);
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();

    // Ctrl-C (SIGINT to bottle), Ctrl-\ (SIGQUIT) and SIGTERM, while the
    // agent runs: each removes the bottle, and the exit code is 128 + the
    // signal, as a shell reports it.
    for (sig, what) in [(2, "sigint"), (3, "sigquit"), (15, "sigterm")] {
        let name = unique(what);
        let m = manifest(dir.path(), &name, "sleep 120", &up, &[]);
        let mut child = run_in_background(data.path(), &m, "t0ken-value", &name);
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe { libc_kill(child.id() as i32, sig) };
        assert_eq!(wait_exit(&mut child), 128 + sig, "{what}");
        assert!(
            leftovers(&name).is_empty(),
            "after {what}: {:?}",
            leftovers(&name)
        );
    }

    // The sidecar dies: the agent has no network any more (fail closed);
    // bottle says so, exits non-zero and removes the bottle.
    let name = unique("sidecar");
    let m = manifest(dir.path(), &name, "sleep 120", &up, &[]);
    let child = run_in_background(data.path(), &m, "t0ken-value", &name);
    let sidecar = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=bot-bottle.name={name}"),
        "--filter",
        "label=bot-bottle.role=egress",
    ]);
    docker(&["kill", sidecar.trim()]);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(exit_code(out.status), 0, "{err}");
    assert!(
        err.contains("egress proxy"),
        "bottle must say the proxy died:\n{err}"
    );
    assert!(
        leftovers(&name).is_empty(),
        "after the sidecar died: {:?}",
        leftovers(&name)
    );
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// `bottle doctor -f`: the manifest's `runtime` is checked against the
/// daemon's, and the exit status is about this manifest only (the
/// smolmachines backend, unused here, fails its own check on this host).
#[test]
fn doctor_checks_the_manifests_runtime_against_the_daemon() {
    if !docker_available("doctor_checks_the_manifests_runtime_against_the_daemon") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let p = dir.path().join("bottle.toml");
    let base = format!(
        "name = \"doctor\"\nbackend = \"docker\"\n[agent]\nprovider = \"generic\"\nimage = \"{AGENT_IMAGE}\"\ncommand = [\"true\"]\n"
    );
    let doctor = |text: &str| {
        std::fs::write(&p, text).unwrap();
        let (code, out, err) = output(bottle(data.path()).args(["doctor", "-f"]).arg(&p));
        (code, format!("{out}\n{err}"))
    };
    let (code, text) = doctor(&format!(
        "{base}[backends.docker]\nruntime = \"no-such-runtime\"\n"
    ));
    assert_eq!(code, 1, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("ERROR backend docker: docker runtime")
                && l.contains("`no-such-runtime` asked for by the manifest is not registered")),
        "{text}"
    );
    let (code, text) = doctor(&base);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("no-such-runtime"), "{text}");
    assert!(
        text.contains("ok    backend docker: docker daemon"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok    backend docker: agent image") && l.contains(AGENT_IMAGE)),
        "{text}"
    );
}

/// `bottle doctor -f` asks the daemon what `bottle run` would find out
/// only at launch: an image that is neither present nor pullable, an
/// `egress_network` that does not exist, more CPUs than the engine has.
#[test]
fn doctor_checks_the_manifests_image_network_and_cpus_against_the_daemon() {
    if !docker_available("doctor_checks_the_manifests_image_network_and_cpus_against_the_daemon") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let p = dir.path().join("bottle.toml");
    let base = "name = \"doctor\"\nbackend = \"docker\"\n[agent]\nprovider = \"generic\"\ncommand = [\"true\"]\n";
    let doctor = |text: &str| {
        std::fs::write(&p, text).unwrap();
        let (code, out, err) = output(bottle(data.path()).args(["doctor", "-f"]).arg(&p));
        (code, format!("{out}\n{err}"))
    };
    let error_line = |text: &str, subject: &str, want: &str| {
        text.lines()
            .any(|l| l.starts_with(&format!("ERROR backend docker: {subject}")) && l.contains(want))
    };
    // Not present, and no registry has it.
    let (code, text) = doctor(&format!("{base}image = \"ux/none\"\n"));
    assert_eq!(code, 1, "{text}");
    assert!(error_line(&text, "agent image", "`ux/none`"), "{text}");
    // Not present, and the manifest says not to pull.
    let (code, text) = doctor(&format!(
        "{base}image = \"ux/none\"\n[backends.docker]\npull = false\n"
    ));
    assert_eq!(code, 1, "{text}");
    assert!(
        error_line(&text, "agent image", "`ux/none` is not present")
            && text.contains("pull = false"),
        "{text}"
    );
    // A network that is not there.
    let (code, text) = doctor(&format!(
        "{base}image = \"{AGENT_IMAGE}\"\n[backends.docker]\negress_network = \"no-such-net\"\n"
    ));
    assert_eq!(code, 1, "{text}");
    assert!(
        error_line(&text, "egress network", "`no-such-net` does not exist"),
        "{text}"
    );
    // More CPUs than the engine has.
    let (code, text) = doctor(&format!(
        "{base}image = \"{AGENT_IMAGE}\"\n[resources]\ncpus = 1000\n"
    ));
    assert_eq!(code, 1, "{text}");
    assert!(error_line(&text, "cpus", "cpus = 1000"), "{text}");
    // Without -f: docker works, so the host can run bottles, whatever
    // another installed backend (smolmachines, without its engine) says.
    let (code, out, err) = output(bottle(data.path()).arg("doctor"));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("ok    host bottle: backends: usable on this host: docker"),
        "{out}"
    );
}

#[test]
fn a_dead_docker_daemon_is_one_clear_error() {
    if !docker_available("a_dead_docker_daemon_is_one_clear_error") {
        return;
    }
    // What a stopped dockerd looks like to a client: nothing listens on the
    // socket. Stopping the real daemon would break the tests running beside
    // this one, so the socket path is pointed at nothing instead.
    let up = Upstream::start("dead", HOST);
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let name = unique("dead");
    let m = manifest(dir.path(), &name, "true", &up, &[]);
    let dead = dir.path().join("no-daemon.sock");
    let (code, out, err) = output(
        bottle(data.path())
            .env("API_TOKEN", "t0ken-value")
            .env("DOCKER_HOST", format!("unix://{}", dead.display()))
            .args(["run", "-f"])
            .arg(&m),
    );
    assert_eq!(code, 1, "{out}\n{err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(first.contains("Docker daemon"), "{err}");
    assert!(
        err.lines().count() <= 3,
        "one clear error, not a dump:\n{err}"
    );
    assert!(
        !err.contains("warning: could not remove") && !err.contains("nothing is left running"),
        "no claim the dead daemon cannot back:\n{err}"
    );
    // Listing and naming bottles say the daemon is the problem: an empty
    // list with status 0, or `no bottle named`, would be a wrong answer.
    let dead_host = format!("unix://{}", dead.display());
    let (code, _, err) = output(bottle(data.path()).env("DOCKER_HOST", &dead_host).arg("ls"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("Docker daemon"), "{err}");
    let (code, _, err) = output(
        bottle(data.path())
            .env("DOCKER_HOST", &dead_host)
            .args(["rm", &name]),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("Docker daemon"), "{err}");
}

#[test]
fn the_proxy_serves_only_the_bottle_and_not_its_egress_side_neighbours() {
    if !docker_available("the_proxy_serves_only_the_bottle_and_not_its_egress_side_neighbours") {
        return;
    }
    let up = Upstream::start("neighbour", HOST);
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let name = unique("neighbour");
    let token = canary();
    let m = manifest(dir.path(), &name, "sleep 120", &up, &[]);
    let mut child = run_in_background(data.path(), &m, &token, &name);
    let sidecar = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=bot-bottle.name={name}"),
        "--filter",
        "label=bot-bottle.role=egress",
    ]);
    let format = format!(
        "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
        up.network
    );
    // Its address on the egress network: that of the namespace it shares
    // with the other sidecars there (its holder's, decision 0003).
    let mode = docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.NetworkMode}}",
        sidecar.trim(),
    ]);
    let owner = mode
        .trim()
        .strip_prefix("container:")
        .unwrap_or(sidecar.trim())
        .to_string();
    let sidecar_ip = docker(&["inspect", "-f", &format, &owner])
        .trim()
        .to_string();
    assert!(!sidecar_ip.is_empty());
    // In that namespace nothing listens on TCP but Docker's own DNS
    // resolver (127.0.0.11): the proxy serves its socket file only, so
    // another bottle's sidecar there has nothing to connect to.
    let owner_ns = format!("container:{owner}");
    let tables = docker(&[
        "run",
        "--rm",
        "--network",
        &owner_ns,
        "--label",
        "bot-bottle-test=1",
        AGENT_IMAGE,
        "cat",
        "/proc/net/tcp",
        "/proc/net/tcp6",
    ]);
    let listening = listening_sockets(&tables);
    assert!(
        listening.iter().all(|a| a.starts_with("0B00007F:")),
        "a listener in the sidecars' namespace besides Docker's DNS: {listening:?}\n{tables}"
    );
    // A neighbour on the shared egress network asks the sidecar to proxy an
    // allowed, credential-carrying route.
    let proxy = format!("http://{sidecar_ip}:3128");
    let (code, out, err) = output(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        &up.network,
        "--label",
        "bot-bottle-test=1",
        AGENT_IMAGE,
        "curl",
        "-sS",
        "-m",
        "10",
        "-k",
        "-x",
        &proxy,
        "https://api.bottle.test/v1/hello",
    ]));
    assert_ne!(
        code, 0,
        "a neighbour used the bottle's proxy:\n{out}\n{err}"
    );
    assert!(
        !up.requests()
            .iter()
            .any(|r| r["headers"]["authorization"] == format!("Bearer {token}")),
        "the neighbour's request reached the upstream with the bottle's token"
    );
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe { libc_kill(child.id() as i32, 15) };
    assert_eq!(wait_exit(&mut child), 128 + 15);
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
}

/// The local addresses (kernel hex, `ADDR:PORT`) of the listening sockets
/// in `/proc/net/tcp`-style tables.
fn listening_sockets(tables: &str) -> Vec<String> {
    tables
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl, local_address, rem_address, st (0A: LISTEN), …
            (f.len() > 3 && f[3] == "0A").then(|| f[1].to_string())
        })
        .collect()
}

#[test]
fn listening_sockets_are_found_in_proc_net_tables() {
    let tables = "  sl  local_address rem_address   st tx_queue rx_queue\n\
   0: 0B00007F:A1B2 00000000:0000 0A 00000000:00000000\n\
   1: 00000000:0C38 00000000:0000 0A 00000000:00000000\n\
   2: 0200A8C0:D2F0 0100A8C0:01BB 01 00000000:00000000\n";
    assert_eq!(
        listening_sockets(tables),
        ["0B00007F:A1B2", "00000000:0C38"]
    );
}

/// Lines of `reader`, one by one, on a channel (so a test can wait for one
/// with a timeout instead of hanging).
fn lines_of(reader: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(reader).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits up to 30 s for a line of `rx` containing `want`; returns every
/// line read on the way.
fn expect_line(rx: &std::sync::mpsc::Receiver<String>, want: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = line.contains(want);
                seen.push(line);
                if hit {
                    return seen;
                }
            }
            Err(e) => panic!("no line with {want:?} ({e}); read: {seen:?}"),
        }
    }
}

/// A workspace the agent's user (uid 1000) can look into: the test creates
/// a file there to tell the agent to go on.
fn open_workspace() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn logs_follow_streams_new_output_until_the_agent_ends() {
    if !docker_available("logs_follow_streams_new_output_until_the_agent_ends") {
        return;
    }
    let up = Upstream::start("follow", HOST);
    let dir = open_workspace();
    let data = tempfile::tempdir().unwrap();
    let name = unique("follow");
    let script = "echo first-line; while [ ! -e go ]; do sleep 0.1; done; echo second-line";
    let m = manifest(dir.path(), &name, script, &up, &[]);
    let mut run = run_in_background(data.path(), &m, "t0ken-value", &name);

    let mut logs = bottle(data.path())
        .args(["logs", &name, "-f"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(logs.stdout.take().unwrap());
    expect_line(&lines, "first-line");
    // Following: still there while the agent waits, unlike a plain `logs`.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        logs.try_wait().unwrap().is_none(),
        "`bottle logs -f` returned while the agent was still running"
    );
    std::fs::write(dir.path().join("ws/go"), "").unwrap();
    expect_line(&lines, "second-line");
    // The stream ends with the agent, and so does `logs -f`.
    assert_eq!(wait_exit(&mut logs), 0, "bottle logs -f");
    assert_eq!(wait_exit(&mut run), 0, "bottle run");
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
}

/// A pseudo-terminal of `rows`×`cols`: (master, slave).
fn open_pty(rows: u16, cols: u16) -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors into the pointers we pass, which
    // point at live locals; name and termios may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned by nobody else.
    unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    }
}

#[test]
fn a_terminal_resize_reaches_the_agent() {
    if !docker_available("a_terminal_resize_reaches_the_agent") {
        return;
    }
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let up = Upstream::start("winch", HOST);
    let dir = open_workspace();
    let data = tempfile::tempdir().unwrap();
    let name = unique("winch");
    // Prints the terminal size whenever it changes, until told to stop.
    let script = r#"last=; while [ ! -e stop ]; do s=$(stty size); if [ "$s" != "$last" ]; then echo "size=$s"; last=$s; fi; sleep 0.1; done"#;
    let m = manifest(dir.path(), &name, script, &up, &[]);
    let text = std::fs::read_to_string(&m)
        .unwrap()
        .replace("[agent]\n", "[agent]\ntty = true\n");
    std::fs::write(&m, text).unwrap();

    let (master, slave) = open_pty(24, 80);
    let mut cmd = bottle(data.path());
    cmd.env("API_TOKEN", "t0ken-value")
        .args(["run", "-f"])
        .arg(&m)
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    // SAFETY: setsid and ioctl are async-signal-safe; the child makes the
    // pty (its stdin) its controlling terminal, as a terminal emulator's
    // shell would, so that a resize signals it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(slave);
    let lines = lines_of(master.try_clone().unwrap());

    expect_line(&lines, "size=24 80");
    let size = libc::winsize {
        ws_row: 40,
        ws_col: 132,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a live local; the kernel
    // then sends SIGWINCH to the terminal's foreground process group (bottle).
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    expect_line(&lines, "size=40 132");

    std::fs::write(dir.path().join("ws/stop"), "").unwrap();
    assert_eq!(wait_exit(&mut child), 0, "bottle run in a terminal");
    drop(master);
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
}

/// Whether `text` holds, as PEM or as PEM escaped inside JSON, the private
/// key of the certificate `cert` (DER).
fn holds_key_of(text: &str, cert: &[u8]) -> bool {
    [text.to_string(), text.replace("\\n", "\n")]
        .iter()
        .flat_map(|t| {
            pem_blocks(t, "PRIVATE KEY")
                .into_iter()
                .filter_map(|k| rcgen::KeyPair::from_pem(k).ok())
                .collect::<Vec<_>>()
        })
        .any(|key| {
            let public = key.public_key_der();
            cert.windows(public.len()).any(|w| w == public)
        })
}

#[test]
fn the_key_check_finds_a_key_in_pem_and_in_json() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["ca.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    let pem = key.serialize_pem();
    let json = serde_json::json!({ "key_pem": pem }).to_string();
    assert!(holds_key_of(&format!("junk\0{pem}junk"), cert.der()));
    assert!(holds_key_of(&json, cert.der()));
    assert!(!holds_key_of(&other.serialize_pem(), cert.der()));
    assert!(!holds_key_of(
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----",
        cert.der()
    ));
}

/// Every `-----BEGIN {label}-----` … `-----END {label}-----` block in `text`.
fn pem_blocks<'a>(text: &'a str, label: &str) -> Vec<&'a str> {
    let (begin, end) = (
        format!("-----BEGIN {label}-----"),
        format!("-----END {label}-----"),
    );
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(&begin) {
        let Some(len) = rest[at..].find(&end) else {
            break;
        };
        blocks.push(&rest[at..at + len + end.len()]);
        rest = &rest[at + len + end.len()..];
    }
    blocks
}

/// An agent that makes the workspace's git run its command on the host
/// (`core.fsmonitor` runs on the user's next `git status`; a hook on the
/// next commit) is named by `bottle run` before it returns; an agent that
/// does not touch git gets no warning.
#[test]
fn git_settings_the_agent_adds_to_the_workspace_are_named_when_it_ends() {
    if !docker_available("git_settings_the_agent_adds_to_the_workspace_are_named_when_it_ends") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let up = Upstream::start("gitws", HOST);
    let dir = open_workspace();
    let data = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let st = Command::new("git")
            .args(args)
            .current_dir(dir.path().join("ws"))
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdout(Stdio::null())
            .status()
            .expect("this test needs git on the host");
        assert!(st.success(), "git {args:?}");
    };
    let run = |script: &str| {
        let name = unique("gitws");
        let m = manifest(dir.path(), &name, script, &up, &[]);
        // The agent's user may write the repository (as a user's own
        // checkout would let it).
        let ws = dir.path().join("ws");
        if !ws.join(".git").exists() {
            git(&["init", "-q"]);
        }
        for p in [ws.join(".git/config"), ws.join(".git/hooks")] {
            let mode = if p.is_dir() { 0o777 } else { 0o666 };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let (code, out, err) = output(
            bottle(data.path())
                .env("API_TOKEN", "t0ken-value")
                .args(["run", "-f"])
                .arg(&m),
        );
        assert_eq!(code, 0, "{out}\n{err}");
        err
    };
    let err = run("ls -a /workspace/.git >/dev/null");
    assert!(!err.contains("WARNING"), "{err}");
    let err = run(
        "printf '[core]\\n\\tfsmonitor = \"sh -c touch-pwned\"\\n' >> /workspace/.git/config; \
         printf '#!/bin/sh\\nid\\n' > /workspace/.git/hooks/pre-commit",
    );
    assert!(
        err.contains("WARNING: the agent changed git settings in the workspace")
            && err.contains("core.fsmonitor = \"sh -c touch-pwned\"")
            && err.contains("hooks/pre-commit is new"),
        "{err}"
    );
}

#[test]
fn a_detached_bottle_runs_on_and_is_managed_by_its_name() {
    if !docker_available("a_detached_bottle_runs_on_and_is_managed_by_its_name") {
        return;
    }
    let up = Upstream::start("detach", HOST);
    let dir = open_workspace();
    let data = tempfile::tempdir().unwrap();
    let name = unique("detach");
    let token = canary();
    let script = r#"echo detached-start; curl -sS --fail-with-body -H "Authorization: Bearer $API_TOKEN" https://api.bottle.test/v1/hello; echo; while [ ! -e go ]; do sleep 0.1; done; echo detached-end"#;
    let m = manifest(dir.path(), &name, script, &up, &[]);
    let (code, out, err) = output(
        bottle(data.path())
            .env("API_TOKEN", &token)
            .args(["run", "-d", "-f"])
            .arg(&m),
    );
    let all = format!("stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(code, 0, "{all}");
    // One line on stdout, for scripts: the bottle's id.
    let id = out.trim().to_owned();
    assert!(!id.is_empty() && !id.contains('\n'), "{all}");
    // A detached run cannot check the workspace when the agent ends.
    assert!(err.contains("check-workspace"), "{all}");

    // The agent runs on after `bottle run` returned, and reaches the
    // upstream with the real token.
    let listed = |want: &str| {
        let (_, ls, _) = output(bottle(data.path()).arg("ls"));
        ls.lines().any(|l| l.contains(&name) && l.contains(want))
    };
    assert!(listed("running"), "not listed as running");
    let deadline = Instant::now() + Duration::from_secs(60);
    while up.requests().iter().all(|r| r["path"] != "/v1/hello") {
        assert!(
            Instant::now() < deadline,
            "the detached agent never called out"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        up.request_to("/v1/hello")["headers"]["authorization"],
        format!("Bearer {token}")
    );
    std::fs::write(dir.path().join("ws/go"), "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !listed("exited") {
        assert!(Instant::now() < deadline, "the detached agent never ended");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its output is kept for `bottle logs`, by name or by id.
    for handle in [&name, &id] {
        let (code, logs, err) = output(bottle(data.path()).args(["logs", handle]));
        assert_eq!(code, 0, "logs {handle}: {err}");
        assert!(
            logs.contains("detached-start") && logs.contains("detached-end"),
            "logs {handle}: {logs}"
        );
        assert!(!logs.contains(&token), "the real token is in the logs");
    }
    let (code, _, err) = output(bottle(data.path()).args(["rm", &id]));
    assert_eq!(code, 0, "rm: {err}");
    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
}
