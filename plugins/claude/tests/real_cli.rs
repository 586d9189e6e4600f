//! The real Claude Code CLI against the provider's dummy files and env.
//!
//! Gated: runs only when `BOT_BOTTLE_CLAUDE_BIN` names a `claude` binary (the
//! native one from `@anthropic-ai/claude-code-linux-x64`, see
//! docs/research/agent-clis.md); otherwise each test says so and passes.
//! No network is used: `claude auth status` reads local state only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use bot_bottle_plugin_api::{AgentProvisionPlan, PrepareRequest, SandboxLayout, Secret};
use serde_json::{json, Value};

fn claude_bin() -> Option<PathBuf> {
    bot_bottle_e2e::agent_cli("BOT_BOTTLE_CLAUDE_BIN", "claude real_cli")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Prepares with `host_env` (plus a temp HOME holding `credentials`, if any),
/// writes the plan's files into a temp sandbox HOME and runs
/// `claude auth status` there with the plan's env.
fn auth_status(
    bin: &Path,
    credentials: Option<Value>,
    extra_env: &[(&str, &str)],
) -> (Value, AgentProvisionPlan) {
    let host = tempfile::tempdir().unwrap();
    let sandbox = tempfile::tempdir().unwrap();
    if let Some(c) = credentials {
        std::fs::create_dir_all(host.path().join(".claude")).unwrap();
        std::fs::write(host.path().join(".claude/.credentials.json"), c.to_string()).unwrap();
    }
    let mut host_env = BTreeMap::new();
    host_env.insert("HOME".into(), Secret::new(host.path().to_str().unwrap()));
    for (k, v) in extra_env {
        host_env.insert(k.to_string(), Secret::new(*v));
    }
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
    let plan = bot_bottle_plugin_claude::prepare_at(&request, now_ms()).unwrap();
    for f in &plan.files {
        let p = Path::new(&f.path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, &f.contents).unwrap();
    }
    let out = Command::new(bin)
        .args(["auth", "status"])
        .current_dir(sandbox.path())
        .env_clear()
        .env("HOME", sandbox.path())
        .env("PATH", "/usr/bin:/bin")
        .envs(&plan.env)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let status: Value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("not JSON: {text}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(!text.contains("canary"), "{text}");
    (status, plan)
}

#[test]
fn claude_accepts_the_dummy_subscription_login() {
    let Some(bin) = claude_bin() else {
        eprintln!("skipped: set BOT_BOTTLE_CLAUDE_BIN to run the real Claude Code CLI");
        return;
    };
    let creds = json!({"claudeAiOauth": {
        "accessToken": "sk-ant-oat01-canary-real",
        "refreshToken": "sk-ant-ort01-canary-real",
        "expiresAt": now_ms() + 8 * 3600 * 1000,
        "scopes": ["user:inference", "user:profile", "user:sessions:claude_code"],
        "subscriptionType": "max"
    }});
    let (status, _) = auth_status(&bin, Some(creds), &[]);
    assert_eq!(status["loggedIn"], true, "{status}");
    assert_eq!(status["authMethod"], "claude.ai", "{status}");
    assert_eq!(status["subscriptionType"], "max", "{status}");
}

#[test]
fn claude_accepts_the_dummy_setup_token() {
    let Some(bin) = claude_bin() else {
        eprintln!("skipped: set BOT_BOTTLE_CLAUDE_BIN to run the real Claude Code CLI");
        return;
    };
    let (status, plan) = auth_status(
        &bin,
        None,
        &[("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-canary-setup")],
    );
    assert!(plan.env.contains_key("CLAUDE_CODE_OAUTH_TOKEN"));
    assert_eq!(status["loggedIn"], true, "{status}");
}

#[test]
fn claude_accepts_the_dummy_api_key() {
    let Some(bin) = claude_bin() else {
        eprintln!("skipped: set BOT_BOTTLE_CLAUDE_BIN to run the real Claude Code CLI");
        return;
    };
    let (status, plan) = auth_status(&bin, None, &[("ANTHROPIC_API_KEY", "canary-real-key")]);
    assert!(plan.env.contains_key("ANTHROPIC_API_KEY"));
    assert_eq!(status["loggedIn"], true, "{status}");
    assert_eq!(status["authMethod"], "api_key", "{status}");
    assert_eq!(status["apiKeySource"], "ANTHROPIC_API_KEY", "{status}");
}
