//! The real Codex CLI against the provider's dummy `auth.json`.
//!
//! Gated: runs only when `BOT_BOTTLE_CODEX_BIN` names a `codex` binary (the
//! native one from `@openai/codex-linux-x64`, see docs/research/agent-clis.md);
//! otherwise each test says so and passes. No network: a fake upstream on
//! 127.0.0.1 answers the Responses API and the OAuth refresh.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bot_bottle_plugin_api::{PrepareRequest, SandboxLayout, Secret};
use serde_json::{json, Value};

fn codex_bin() -> Option<PathBuf> {
    bot_bottle_e2e::agent_cli("BOT_BOTTLE_CODEX_BIN", "codex real_cli")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn jwt(claims: Value, sig: &str) -> String {
    format!(
        "{}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

const ACCOUNT: &str = "11111111-2222-3333-4444-555555555555";

/// A host HOME with a ChatGPT login whose secrets are canaries, and the
/// sandbox HOME the provider's files are written into.
struct Setup {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    sandbox_home: PathBuf,
    real_exp: i64,
    plan: bot_bottle_plugin_api::AgentProvisionPlan,
}

fn setup() -> Setup {
    let host = tempfile::tempdir().unwrap();
    let sandbox = tempfile::tempdir().unwrap();
    let real_exp = now() + 5 * 24 * 3600;
    let auth = json!({
        "OPENAI_API_KEY": null,
        "tokens": {
            "id_token": jwt(json!({"email": "dev@example.com", "https://api.openai.com/auth": {
                "chatgpt_account_id": ACCOUNT, "chatgpt_plan_type": "pro"}}), "canaryIdSig"),
            "access_token": jwt(json!({"exp": real_exp, "iat": now() - 60}), "canaryAccessSig"),
            "refresh_token": "canary-refresh",
            "account_id": ACCOUNT
        },
        "last_refresh": "2026-01-01T00:00:00Z"
    });
    std::fs::create_dir_all(host.path().join(".codex")).unwrap();
    std::fs::write(host.path().join(".codex/auth.json"), auth.to_string()).unwrap();

    let mut host_env = BTreeMap::new();
    host_env.insert("HOME".into(), Secret::new(host.path().to_str().unwrap()));
    let request = PrepareRequest {
        schema: 1,
        bottle_name: "t".into(),
        options: json!({"forward_host_credentials": true}),
        host_env,
        sandbox: SandboxLayout {
            home: sandbox.path().to_str().unwrap().into(),
            ..Default::default()
        },
    };
    let plan = bot_bottle_plugin_codex::prepare_at(&request, now()).unwrap();
    for f in &plan.files {
        let p = Path::new(&f.path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, &f.contents).unwrap();
    }
    Setup {
        sandbox_home: sandbox.path().to_path_buf(),
        _dirs: (host, sandbox),
        real_exp,
        plan,
    }
}

/// One request as the fake upstream saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
}

/// A one-request-per-connection HTTP/1.1 server: SSE for the Responses API,
/// `refresh_body` for the OAuth refresh, 404 for the rest.
fn fake_upstream(refresh_body: String) -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
            );
            let mut headers = BTreeMap::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.trim_end().split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            log.lock().unwrap().push(Seen {
                method: method.clone(),
                path: path.clone(),
                headers,
            });
            let (status, ctype, body) = if path.starts_with("/backend-api/codex/responses") {
                let events = [
                    json!({"type": "response.created", "response": {"id": "resp_1"}}),
                    json!({"type": "response.output_item.done", "item": {"type": "message",
                        "role": "assistant", "id": "msg_1",
                        "content": [{"type": "output_text", "text": "hello from the fake upstream"}]}}),
                    json!({"type": "response.completed", "response": {"id": "resp_1", "usage": {
                        "input_tokens": 1, "input_tokens_details": null, "output_tokens": 1,
                        "output_tokens_details": null, "total_tokens": 2}}}),
                ];
                let sse: String = events
                    .iter()
                    .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
                    .collect();
                ("200 OK", "text/event-stream", sse)
            } else if path.starts_with("/oauth/token") {
                ("200 OK", "application/json", refresh_body.clone())
            } else {
                ("404 Not Found", "application/json", "{}".to_string())
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, seen)
}

fn exp_of(token: &str) -> i64 {
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["exp"].as_i64().unwrap()
}

#[test]
fn codex_accepts_the_dummy_login() {
    let Some(bin) = codex_bin() else {
        eprintln!("skipped: set BOT_BOTTLE_CODEX_BIN to run the real Codex CLI");
        return;
    };
    let s = setup();
    let out = Command::new(bin)
        .args(["login", "status"])
        .env_clear()
        .env("HOME", &s.sandbox_home)
        .env("CODEX_HOME", s.sandbox_home.join(".codex"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Logged in using ChatGPT"), "{text}");
}

#[test]
fn codex_exec_refreshes_against_the_local_answer_and_sends_only_dummies() {
    let Some(bin) = codex_bin() else {
        eprintln!("skipped: set BOT_BOTTLE_CODEX_BIN to run the real Codex CLI");
        return;
    };
    let s = setup();
    let refresh = s
        .plan
        .local_responses
        .iter()
        .find(|r| r.path == "/oauth/token")
        .unwrap()
        .body
        .clone();
    let (port, seen) = fake_upstream(refresh);

    // Age the sandbox's dummy so Codex refreshes before its first request.
    let auth_path = s.sandbox_home.join(".codex/auth.json");
    let mut auth: Value =
        serde_json::from_str(&std::fs::read_to_string(&auth_path).unwrap()).unwrap();
    auth["tokens"]["access_token"] = json!(jwt(json!({"exp": 1000}), "c2ln"));
    std::fs::write(&auth_path, auth.to_string()).unwrap();
    std::fs::write(
        s.sandbox_home.join(".codex/config.toml"),
        format!(
            "model_provider = \"fake\"\n[model_providers.fake]\nname = \"fake\"\n\
             base_url = \"http://127.0.0.1:{port}/backend-api/codex\"\n\
             wire_api = \"responses\"\nrequires_openai_auth = true\n"
        ),
    )
    .unwrap();

    let out = Command::new(bin)
        .args(["exec", "--skip-git-repo-check", "say hi"])
        .current_dir(&s.sandbox_home)
        .env_clear()
        .env("HOME", &s.sandbox_home)
        .env("CODEX_HOME", s.sandbox_home.join(".codex"))
        .env(
            "CODEX_REFRESH_TOKEN_URL_OVERRIDE",
            format!("http://127.0.0.1:{port}/oauth/token"),
        )
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("hello from the fake upstream"), "{text}");

    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|r| r.method == "POST" && r.path == "/oauth/token"),
        "Codex refreshed: {seen:?}"
    );
    let resp = seen
        .iter()
        .find(|r| r.path.starts_with("/backend-api/codex/responses"))
        .expect("a responses call");
    assert_eq!(resp.headers["chatgpt-account-id"], ACCOUNT);
    let bearer = resp.headers["authorization"]
        .strip_prefix("Bearer ")
        .unwrap();
    assert_eq!(
        exp_of(bearer),
        s.real_exp,
        "the refreshed dummy follows the real exp"
    );
    for r in &seen {
        for v in r.headers.values() {
            assert!(
                !v.contains("canary"),
                "a real value left the sandbox: {r:?}"
            );
        }
    }
    let after = std::fs::read_to_string(&auth_path).unwrap();
    assert!(!after.contains("canary"));
    let after: Value = serde_json::from_str(&after).unwrap();
    assert_eq!(
        exp_of(after["tokens"]["access_token"].as_str().unwrap()),
        s.real_exp
    );
}
