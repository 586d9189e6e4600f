//! A whole Claude Code bottle on a real Docker engine: `bottle run` with
//! provider `claude` forwarding a host subscription login, the real Claude
//! Code CLI inside, the demo upstream standing in for api.anthropic.com.
//!
//! Gated twice: it needs a Docker engine (see `bot_bottle_e2e::docker_available`)
//! and `BOT_BOTTLE_CLAUDE_BIN`, the native `claude` binary from
//! `@anthropic-ai/claude-code-linux-x64` (docs/research/agent-clis.md).
//! Without either it says why and passes.
//!
//! What it proves: the agent's files, env and every answer it gets hold only
//! dummies; every upstream request carries the real token; the refresh call
//! is answered by the proxy with dummies; a rotated host login reaches the
//! next upstream request without restarting the bottle; a host logout does
//! not switch the running bottle to the host's API key, and is reported.
//!
//! Status (2026-11-22, main 0799ffa): as for the codex test, everything
//! passes except the last two checks, reported together: the refresh answer
//! (the bottle CA's name constraints omit local-response hosts) and live
//! rotation (not supported by the Docker backend yet).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bot_bottle_e2e::*;
use serde_json::{json, Value};

const AGENT_IMAGE: &str = "bot-bottle-test/claude-agent";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A `.credentials.json` whose access token is `canary`.
fn host_credentials(canary: &str, lifetime_ms: i64) -> String {
    json!({"claudeAiOauth": {
        "accessToken": canary,
        "refreshToken": format!("{canary}-refresh"),
        "expiresAt": now_ms() + lifetime_ms,
        "scopes": ["user:inference", "user:profile", "user:sessions:claude_code"],
        "subscriptionType": "max"
    }})
    .to_string()
}

/// Builds what `bottle_exe` does not: this plugin and the demo upstream.
fn build_plugin_and_upstream() {
    cargo_build(&[
        "-p",
        "bot-bottle-plugin-claude",
        "-p",
        "bot-bottle-e2e",
        "--bins",
        "--lib",
    ]);
}

fn agent_image(claude: &Path) {
    let script = repo_root().join("scripts/image-from-binaries.sh");
    let (code, out, err) = output(
        Command::new(script)
            .arg(AGENT_IMAGE)
            .args(["curl", "cat", "env", "grep", "sleep", "touch", "timeout"])
            .arg(claude),
    );
    assert_eq!(code, 0, "building the agent image failed: {out}{err}");
}

const SCRIPT: &str = r#"
echo "cred-canaries=$(grep -c canary $HOME/.claude/.credentials.json)"
echo "env-canaries=$(env | grep -c canary)"
curl -sS -X POST https://platform.claude.com/v1/oauth/token -H 'content-type: application/json' \
  -d '{"grant_type":"refresh_token","refresh_token":"sk-ant-ort01-bot-bottle-dummy-refresh-token"}' > /tmp/refresh.json
echo "refresh-exit=$?"
echo "refresh-body=$(cat /tmp/refresh.json)"
curl -sS -H 'Authorization: Bearer agent-held-dummy' https://api.anthropic.com/v1/usage/1 >/dev/null
timeout 45 claude -p "say hi" > /tmp/claude.log 2>&1
echo "claude-exit=$?"
echo "claude-log-canaries=$(grep -c canary /tmp/claude.log)"
touch /workspace/ready
i=0; while [ ! -e /workspace/rotated ] && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done
curl -sS https://api.anthropic.com/v1/usage/2 >/dev/null
touch /workspace/used-second
i=0; while [ ! -e /workspace/logged-out ] && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done
curl -sS https://api.anthropic.com/v1/usage/3 >/dev/null
echo done
"#;

fn manifest(dir: &Path, name: &str, up: &Upstream) -> PathBuf {
    let text = format!(
        r#"
name = "{name}"
backend = "docker"

[agent]
provider = "claude"
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

fn bearer(r: &Value) -> Option<String> {
    let a = r["headers"]["authorization"].as_str()?;
    Some(a.strip_prefix("Bearer ")?.to_string())
}

#[test]
fn claude_bottle_forwards_the_host_login_and_only_the_proxy_holds_it() {
    let test = "claude_bottle_forwards_the_host_login_and_only_the_proxy_holds_it";
    let Some(claude) = agent_cli("BOT_BOTTLE_CLAUDE_BIN", test) else {
        return;
    };
    if !docker_available(test) {
        return;
    }
    build_plugin_and_upstream();
    let _ = bottle_exe();
    agent_image(&claude);
    let up = Upstream::start("claude", "api.anthropic.com");

    let host = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let first = format!("sk-ant-oat01-canary-{:08x}-first", rand_u32());
    let second = format!("sk-ant-oat01-canary-{:08x}-second", rand_u32());
    let creds = host.path().join(".claude/.credentials.json");
    std::fs::create_dir_all(creds.parent().unwrap()).unwrap();
    std::fs::write(&creds, host_credentials(&first, 8 * 3600 * 1000)).unwrap();

    let name = format!("e2e-claude-{:06x}", rand_u32() & 0xff_ffff);
    let m = manifest(dir.path(), &name, &up);
    // An API key on the host too: the provider's fallback once the login
    // is gone, which a running bottle must not switch to by itself.
    let api_key = format!("sk-ant-api03-canary-{:08x}-key", rand_u32());
    let mut child = bottle(data.path())
        .env("HOME", host.path())
        .env("ANTHROPIC_API_KEY", &api_key)
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
    std::fs::write(&creds, host_credentials(&second, 9 * 3600 * 1000)).unwrap();
    std::thread::sleep(Duration::from_secs(5)); // the host polls every 500 ms
    std::fs::write(dir.path().join("ws/rotated"), "").unwrap();
    // Then the host logs out (`claude logout` deletes the file).
    let used = dir.path().join("ws/used-second");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !used.exists() && Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::remove_file(&creds).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(dir.path().join("ws/logged-out"), "").unwrap();

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
    assert!(stdout.contains("claude-exit=0"), "{all}");

    // The agent saw dummies only.
    assert!(stdout.contains("cred-canaries=0"), "{all}");
    assert!(stdout.contains("env-canaries=0"), "{all}");
    assert!(stdout.contains("claude-log-canaries=0"), "{all}");
    assert!(
        !stdout.contains("canary") && !stderr.contains("canary"),
        "{all}"
    );

    // Every upstream request carried the real token.
    let reqs = up.requests();
    assert!(
        reqs.iter()
            .any(|r| r["method"] == "POST" && r["path"] == "/v1/messages"),
        "the real Claude Code CLI reached the Messages API: {reqs:?}"
    );
    for r in &reqs {
        let b = bearer(r).unwrap_or_default();
        assert!(b == first || b == second, "not the real token: {r}");
    }
    let call = |n: &str| {
        reqs.iter()
            .find(|r| r["path"] == format!("/v1/usage/{n}"))
            .and_then(bearer)
    };
    assert_eq!(call("1"), Some(first.clone()), "{reqs:?}");

    // The rest is collected, so one run reports every gap at once.
    let mut gaps = Vec::new();
    if !(stdout.contains("refresh-exit=0")
        && stdout.contains(r#""refresh_token":"sk-ant-ort01-bot-bottle-dummy-refresh-token""#))
    {
        gaps.push("the refresh call was not answered by the proxy with dummies");
    }
    if call("2") != Some(second.clone()) {
        gaps.push("the rotated host login did not reach the next upstream request");
    }
    // After the logout the bottle kept the login it had, and said so.
    let third = reqs.iter().find(|r| r["path"] == "/v1/usage/3");
    if third.and_then(bearer) != Some(second.clone()) {
        gaps.push("after the host logged out, the bottle did not keep its login");
    }
    if reqs.iter().any(|r| r.to_string().contains(&api_key)) {
        gaps.push("after the host logged out, the bottle switched to the host's API key");
    }
    if !(stderr.contains("changed: it now uses token refs CLAUDE_HOST_API_KEY_REF instead of CLAUDE_HOST_OAUTH_TOKEN_REF")
        && stderr.contains("restart the bottle"))
    {
        gaps.push("the logout was not reported on the terminal");
    }
    assert!(gaps.is_empty(), "{gaps:#?}\n{all}\nupstream: {reqs:?}");

    assert!(leftovers(&name).is_empty(), "{:?}", leftovers(&name));
}
