//! A whole Codex bottle on a real Docker engine: `bottle run` with provider
//! `codex` forwarding a host ChatGPT login, the real Codex CLI inside, the
//! demo upstream standing in for chatgpt.com.
//!
//! Gated twice: it needs a Docker engine (see `bot_bottle_e2e::docker_available`)
//! and `BOT_BOTTLE_CODEX_BIN`, the native `codex` binary from
//! `@openai/codex-linux-x64` (docs/research/agent-clis.md). Without either it
//! says why and passes.
//!
//! What it proves: the agent's files, env and every answer it gets hold only
//! dummies; every upstream request carries the real token and account id;
//! the refresh call is answered by the proxy with dummies; a rotated host
//! login reaches the next upstream request without restarting the bottle.
//!
//! Status (2026-11-22, main 0799ffa): everything passes except the last two
//! checks, reported together: the refresh answer is unreachable because the
//! bottle CA's name constraints omit the local-response hosts
//! (`EgressPlan::hosts()` lists routes and passthrough only; curl says
//! "permitted subtree violation"), and the Docker backend does not support
//! live egress updates yet, so a rotated login is not pushed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bot_bottle_e2e::*;
use serde_json::{json, Value};

const ACCOUNT: &str = "11111111-2222-3333-4444-555555555555";
const AGENT_IMAGE: &str = "bot-bottle-test/codex-agent";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A ChatGPT `auth.json` whose access token ends in `canary`.
fn host_auth(canary: &str, lifetime: i64) -> String {
    let b = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let head = b(json!({"alg": "RS256"}));
    let access = format!(
        "{head}.{}.{canary}",
        b(json!({"exp": now() + lifetime, "iat": now() - 60}))
    );
    let id = format!(
        "{head}.{}.{canary}-id",
        b(
            json!({"email": "dev@example.com", "https://api.openai.com/auth": {
            "chatgpt_account_id": ACCOUNT, "chatgpt_plan_type": "pro"}})
        )
    );
    json!({
        "OPENAI_API_KEY": null,
        "tokens": {"id_token": id, "access_token": access,
                   "refresh_token": format!("{canary}-refresh"), "account_id": ACCOUNT},
        "last_refresh": "2026-11-20T10:00:00Z"
    })
    .to_string()
}

/// Builds what `bottle_exe` does not: this plugin and the demo upstream.
fn build_plugin_and_upstream() {
    cargo_build(&[
        "-p",
        "bot-bottle-plugin-codex",
        "-p",
        "bot-bottle-e2e",
        "--bins",
        "--lib",
    ]);
}

fn agent_image(codex: &Path) {
    let script = repo_root().join("scripts/image-from-binaries.sh");
    let (code, out, err) = output(
        Command::new(script)
            .arg(AGENT_IMAGE)
            .args(["curl", "cat", "env", "grep", "sleep", "touch", "timeout"])
            .arg(codex),
    );
    assert_eq!(code, 0, "building the agent image failed: {out}{err}");
}

const SCRIPT: &str = r#"
echo "auth-canaries=$(grep -c canary $CODEX_HOME/auth.json)"
echo "env-canaries=$(env | grep -c canary)"
curl -sS -X POST https://auth.openai.com/oauth/token -H 'content-type: application/json' \
  -d '{"grant_type":"refresh_token","refresh_token":"bot-bottle-dummy-refresh-token"}' > /tmp/refresh.json
echo "refresh-exit=$?"
echo "refresh-body=$(cat /tmp/refresh.json)"
curl -sS -H 'Authorization: Bearer agent-held-dummy' https://chatgpt.com/backend-api/wham/usage/1 >/dev/null
timeout 120 codex exec --skip-git-repo-check -c model_provider=fake \
  -c 'model_providers.fake={name="fake",base_url="https://chatgpt.com/backend-api/codex",wire_api="responses",requires_openai_auth=true}' \
  "say hi" > /tmp/codex.log 2>&1
echo "codex-exit=$?"
echo "codex-log-canaries=$(grep -c canary /tmp/codex.log)"
touch /workspace/ready
i=0; while [ ! -e /workspace/rotated ] && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done
curl -sS https://chatgpt.com/backend-api/wham/usage/2 >/dev/null
echo done
"#;

fn manifest(dir: &Path, name: &str, up: &Upstream) -> PathBuf {
    let text = format!(
        r#"
name = "{name}"
backend = "docker"

[agent]
provider = "codex"
image = "{AGENT_IMAGE}"
command = ["sh", "-c", '''{SCRIPT}''']

[agent.options]
forward_host_credentials = true

[workspace]
path = "ws"

[resources]
memory = "1g"
pids = 256

[egress]
upstream_ca = "{ca}"
# The fake upstream is a container on a private Docker network.
allow_internal = ["{ip}"]

[backends.docker]
egress_network = "{net}"
"#,
        ca = up.ca_pem.display(),
        ip = up.ip,
        net = up.network,
    );
    // The agent (uid 1000) writes its progress markers into the workspace.
    std::fs::create_dir_all(dir.join("ws")).unwrap();
    std::fs::set_permissions(
        dir.join("ws"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let p = dir.join("bottle.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn bearer_sig(r: &Value) -> Option<String> {
    let a = r["headers"]["authorization"].as_str()?;
    Some(a.rsplit('.').next()?.to_string())
}

#[test]
fn codex_bottle_forwards_the_host_login_and_only_the_proxy_holds_it() {
    let test = "codex_bottle_forwards_the_host_login_and_only_the_proxy_holds_it";
    let Some(codex) = agent_cli("BOT_BOTTLE_CODEX_BIN", test) else {
        return;
    };
    if !docker_available(test) {
        return;
    }
    build_plugin_and_upstream();
    let _ = bottle_exe();
    agent_image(&codex);
    let up = Upstream::start("codex", "chatgpt.com");

    let host = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let first = format!("canary-{:08x}-first", rand_u32());
    let second = format!("canary-{:08x}-second", rand_u32());
    let auth_path = host.path().join(".codex/auth.json");
    std::fs::create_dir_all(auth_path.parent().unwrap()).unwrap();
    std::fs::write(&auth_path, host_auth(&first, 5 * 24 * 3600)).unwrap();

    let name = format!("e2e-codex-{:06x}", rand_u32() & 0xff_ffff);
    let m = manifest(dir.path(), &name, &up);
    let mut child = bottle(data.path())
        .env("HOME", host.path())
        .args(["run", "-f"])
        .arg(&m)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Rotate the host login once the agent has made its first calls.
    let ready = dir.path().join("ws/ready");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !ready.exists() && Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::write(&auth_path, host_auth(&second, 10 * 24 * 3600)).unwrap();
    std::thread::sleep(Duration::from_secs(5)); // the host polls every 500 ms
                                                // The rotated config is in the sidecar's tmpfs, not in its writable
                                                // layer on this host's disk.
    let on_disk = sidecar_layer_holds(&name, &second);
    std::fs::write(dir.path().join("ws/rotated"), "").unwrap();

    let out = child.wait_with_output().unwrap();
    let (code, stdout, stderr) = (
        exit_code(out.status),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    let all = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(code, 0, "{all}");
    assert!(stdout.contains("done"), "{all}");
    // The real CLI completed a turn against the demo upstream (SSE).
    assert!(stdout.contains("codex-exit=0"), "{all}");

    // The agent saw dummies only.
    assert!(stdout.contains("auth-canaries=0"), "{all}");
    assert!(stdout.contains("env-canaries=0"), "{all}");
    assert!(stdout.contains("codex-log-canaries=0"), "{all}");
    assert!(
        !stdout.contains("canary") && !stderr.contains("canary"),
        "{all}"
    );

    // Every upstream request carried the real token and the account id.
    let reqs = up.requests();
    let backend: Vec<&Value> = reqs
        .iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/backend-api/"))
        })
        .collect();
    assert!(
        backend
            .iter()
            .any(|r| r["method"] == "POST" && r["path"] == "/backend-api/codex/responses"),
        "the real Codex CLI reached the responses API: {reqs:?}"
    );
    for r in &backend {
        assert_eq!(r["headers"]["chatgpt-account-id"], ACCOUNT, "{r}");
        let sig = bearer_sig(r).unwrap_or_default();
        assert!(sig == first || sig == second, "not the real token: {r}");
    }
    let call = |n: &str| {
        backend
            .iter()
            .find(|r| r["path"] == format!("/backend-api/wham/usage/{n}"))
            .and_then(|r| bearer_sig(r))
    };
    assert_eq!(call("1"), Some(first.clone()), "{reqs:?}");

    // The rest is collected, so one run reports every gap at once.
    let mut gaps = Vec::new();
    match on_disk {
        Ok(false) => {}
        Ok(true) => gaps.push("the rotated token is in the sidecar's writable layer on disk"),
        Err(e) => panic!("could not look into the sidecar's layer: {e}"),
    }
    // The proxy answered the refresh itself, with dummies.
    if !(stdout.contains("refresh-exit=0")
        && stdout.contains(r#""refresh_token":"bot-bottle-dummy-refresh-token""#))
    {
        gaps.push("the refresh call was not answered by the proxy with dummies");
    }
    if reqs.iter().any(|r| r["path"] == "/oauth/token") {
        gaps.push("the refresh call reached the upstream");
    }
    // The rotated login reached the next request, bottle still running.
    if call("2") != Some(second.clone()) {
        gaps.push("the rotated host login did not reach the next upstream request");
    }
    assert!(gaps.is_empty(), "{gaps:#?}\n{all}\nupstream: {reqs:?}");

    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
}

/// Whether any file in the writable layer of bottle `name`'s egress sidecar
/// (on this host's disk, under Docker's data root) contains `needle`.
fn sidecar_layer_holds(name: &str, needle: &str) -> Result<bool, String> {
    let ps = Command::new("docker")
        .args(["ps", "-q", "--filter"])
        .arg(format!("label=bot-bottle.name={name}"))
        .args(["--filter", "label=bot-bottle.role=egress"])
        .output()
        .map_err(|e| e.to_string())?;
    let id = String::from_utf8_lossy(&ps.stdout).trim().to_string();
    if id.is_empty() {
        return Err(format!("no egress sidecar for {name}"));
    }
    let upper = Command::new("docker")
        .args(["inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", &id])
        .output()
        .map_err(|e| e.to_string())?;
    let upper = String::from_utf8_lossy(&upper.stdout).trim().to_string();
    if upper.is_empty() || upper == "<no value>" {
        return Err(format!("sidecar {id} has no upper dir (storage driver?)"));
    }
    let grep = Command::new("grep")
        .args(["-rlF", needle, &upper])
        .output()
        .map_err(|e| e.to_string())?;
    match grep.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(String::from_utf8_lossy(&grep.stderr).into_owned()),
    }
}
