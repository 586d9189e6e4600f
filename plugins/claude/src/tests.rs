//! Unit tests: temp dirs stand in for the host's HOME; canary values stand in
//! for real credentials and must never appear outside `provisioned_env`.

use super::*;
use std::path::{Path, PathBuf};

const NOW_MS: i64 = 1_900_000_000_000;
const EXPIRES_MS: i64 = NOW_MS + 8 * 3600 * 1000;
const ACCESS: &str = "canary-real-access-XYZ";
const REFRESH: &str = "canary-real-refresh-XYZ";

fn real_credentials() -> Value {
    json!({
        "claudeAiOauth": {
            "accessToken": ACCESS,
            "refreshToken": REFRESH,
            "expiresAt": EXPIRES_MS,
            "scopes": ["user:inference", "user:profile", "user:sessions:claude_code"],
            "subscriptionType": "max",
            "rateLimitTier": "default_claude_max_20x",
            "clientId": "canary-client-XYZ"
        },
        "mcpOAuth": {"some-server": {"accessToken": "canary-mcp-XYZ"}}
    })
}

struct Host {
    dir: tempfile::TempDir,
    env: BTreeMap<String, Secret>,
}

impl Host {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut env = BTreeMap::new();
        env.insert("HOME".into(), Secret::new(dir.path().to_str().unwrap()));
        Self { dir, env }
    }
    fn creds_path(&self) -> PathBuf {
        self.dir.path().join(".claude").join(".credentials.json")
    }
    fn write_creds(&self, text: &str) {
        std::fs::create_dir_all(self.creds_path().parent().unwrap()).unwrap();
        std::fs::write(self.creds_path(), text).unwrap();
    }
    fn set(&mut self, k: &str, v: &str) -> &mut Self {
        self.env.insert(k.into(), Secret::new(v));
        self
    }
    fn request(&self, options: Value) -> PrepareRequest {
        PrepareRequest {
            schema: 1,
            bottle_name: "t".into(),
            options,
            host_env: self.env.clone(),
            sandbox: Default::default(),
        }
    }
    fn prepare(&self, options: Value) -> Result<AgentProvisionPlan, ClaudeError> {
        prepare_at(&self.request(options), NOW_MS)
    }
}

fn forward() -> Value {
    json!({"forward_host_credentials": true})
}

fn visible(plan: &AgentProvisionPlan) -> String {
    let mut p = plan.clone();
    p.provisioned_env.clear();
    serde_json::to_string(&p).unwrap()
}

fn assert_no_canary(text: &str) {
    assert!(!text.contains("canary"), "a real value leaked: {text}");
}

fn file<'a>(plan: &'a AgentProvisionPlan, path: &str) -> &'a SandboxFile {
    plan.files.iter().find(|f| f.path == path).expect(path)
}

fn json_file(plan: &AgentProvisionPlan, path: &str) -> Value {
    let f = file(plan, path);
    assert_eq!(f.mode, 0o600, "{path}");
    serde_json::from_str(&f.contents).unwrap()
}

#[test]
fn forwarded_login_provisions_the_real_token_and_only_there() {
    let host = Host::new();
    host.write_creds(&real_credentials().to_string());
    let plan = host.prepare(forward()).unwrap();

    assert_eq!(
        plan.provisioned_env[CLAUDE_HOST_OAUTH_TOKEN_REF].expose(),
        ACCESS
    );
    assert_eq!(plan.provisioned_env.len(), 1);
    assert_no_canary(&visible(&plan));
    assert_eq!(plan.credential_sources, vec![host.creds_path()]);
    assert_eq!(plan.default_command, ["claude"]);
    for var in ["NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE"] {
        assert!(plan.ca_trust_env.iter().any(|v| v == var), "{var}");
    }
    assert!(!plan.env.contains_key("ANTHROPIC_API_KEY"));
    assert!(!plan.env.contains_key("CLAUDE_CODE_OAUTH_TOKEN"));

    for r in &plan.egress_routes {
        assert_eq!(r.host, "api.anthropic.com");
        assert_eq!(r.inject[0].header, "Authorization");
        assert_eq!(r.inject[0].value, "Bearer {token}");
        assert_eq!(
            r.inject[0].token_ref.as_deref(),
            Some(CLAUDE_HOST_OAUTH_TOKEN_REF)
        );
    }
}

/// What the proxy does with `method url` under `plan`'s routes (its own
/// decision, `bottle egress check`): whether it would go out, and with
/// which headers injected.
fn proxy_decision(plan: &AgentProvisionPlan, method: &str, url: &str) -> (bool, Vec<String>) {
    let ca = bot_bottle_egress::BottleCa::generate("bb-claude-test", &["api.anthropic.com".into()])
        .unwrap();
    let config: bot_bottle_egress::ProxyConfig = serde_json::from_value(json!({
        "schema": bot_bottle_egress::config::SCHEMA,
        "bottle_id": "bb-claude-test",
        "routes": plan.egress_routes,
        "ca": { "cert_pem": ca.cert_pem, "key_pem": ca.key_pem.expose() },
    }))
    .unwrap();
    let d = bot_bottle_egress::check(&config, method, url);
    (d.allowed, d.inject_headers)
}

/// In every mode the credential goes to the API and to reads of the
/// account endpoints, and never to the endpoint that mints a permanent API
/// key from the login (its answer would hand the agent a real credential).
#[test]
fn the_credential_reaches_the_api_but_never_the_key_minting_endpoint() {
    let host = Host::new();
    host.write_creds(&real_credentials().to_string());
    let mut plans = vec![("forwarded login", host.prepare(forward()).unwrap())];
    let mut env = Host::new();
    env.set("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-setup-token");
    plans.push(("setup token", env.prepare(json!({})).unwrap()));
    let mut key = Host::new();
    key.set("ANTHROPIC_API_KEY", "sk-ant-api03-host-key");
    plans.push(("API key", key.prepare(json!({})).unwrap()));
    for (mode, plan) in &plans {
        let api = "https://api.anthropic.com";
        for (method, path) in [
            ("POST", "/v1/messages?beta=true"),
            ("POST", "/v1/messages/count_tokens"),
            ("GET", "/v1/models"),
            ("GET", "/api/oauth/profile"),
            ("GET", "/api/oauth/usage"),
        ] {
            let (allowed, injected) = proxy_decision(plan, method, &format!("{api}{path}"));
            assert!(allowed && !injected.is_empty(), "{mode}: {method} {path}");
        }
        for (method, path) in [
            ("POST", "/api/oauth/claude_cli/create_api_key"),
            ("POST", "/api/oauth/claude_cli/create_api_key/"),
            ("POST", "/api/oauth/organizations/o/api_keys"),
            ("DELETE", "/api/oauth/account"),
            ("POST", "/admin/keys"),
        ] {
            let (allowed, _) = proxy_decision(plan, method, &format!("{api}{path}"));
            assert!(!allowed, "{mode}: {method} {path} must be refused");
        }
    }
}

#[test]
fn dummy_credentials_file_tracks_the_real_expiry_and_scopes() {
    let host = Host::new();
    host.write_creds(&real_credentials().to_string());
    let plan = host.prepare(forward()).unwrap();
    let c = json_file(&plan, "/home/agent/.claude/.credentials.json");
    let o = &c["claudeAiOauth"];
    assert_eq!(o["accessToken"], DUMMY_ACCESS_TOKEN);
    assert_eq!(o["refreshToken"], DUMMY_REFRESH_TOKEN);
    assert_eq!(o["expiresAt"], EXPIRES_MS);
    assert_eq!(
        o["scopes"],
        json!([
            "user:inference",
            "user:profile",
            "user:sessions:claude_code"
        ])
    );
    assert_eq!(o["subscriptionType"], "max");
    assert_eq!(o["rateLimitTier"], "default_claude_max_20x");
    assert!(o.get("clientId").is_none());
    assert_eq!(c.as_object().unwrap().len(), 1, "only claudeAiOauth: {c}");

    let cj = json_file(&plan, "/home/agent/.claude.json");
    assert_eq!(cj["hasCompletedOnboarding"], true);
}

#[test]
fn scopes_default_to_inference_when_the_login_has_none() {
    let host = Host::new();
    let mut c = real_credentials();
    c["claudeAiOauth"].as_object_mut().unwrap().remove("scopes");
    host.write_creds(&c.to_string());
    let plan = host.prepare(forward()).unwrap();
    let c = json_file(&plan, "/home/agent/.claude/.credentials.json");
    assert_eq!(c["claudeAiOauth"]["scopes"], json!(["user:inference"]));
}

#[test]
fn refresh_is_answered_locally_with_dummies_on_both_token_hosts() {
    let host = Host::new();
    host.write_creds(&real_credentials().to_string());
    let plan = host.prepare(forward()).unwrap();
    let hosts: Vec<_> = plan
        .local_responses
        .iter()
        .map(|r| r.host.as_str())
        .collect();
    assert_eq!(hosts, ["platform.claude.com", "console.anthropic.com"]);
    for r in &plan.local_responses {
        assert_eq!(
            (r.path.as_str(), r.method.as_str(), r.status),
            ("/v1/oauth/token", "POST", 200)
        );
        assert_eq!(r.content_type, "application/json");
        assert_no_canary(&r.body);
        let b: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(b["access_token"], DUMMY_ACCESS_TOKEN);
        assert_eq!(b["refresh_token"], DUMMY_REFRESH_TOKEN);
        assert_eq!(b["token_type"], "Bearer");
        assert_eq!(b["expires_in"], (EXPIRES_MS - NOW_MS) / 1000);
        assert!(b["scope"]
            .as_str()
            .unwrap()
            .split(' ')
            .any(|s| s == INFERENCE_SCOPE));
    }
}

#[test]
fn claude_config_dir_on_the_host_is_respected() {
    let mut host = Host::new();
    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join(".credentials.json"),
        real_credentials().to_string(),
    )
    .unwrap();
    host.set("CLAUDE_CONFIG_DIR", other.path().to_str().unwrap());
    let plan = host.prepare(forward()).unwrap();
    assert_eq!(
        plan.credential_sources,
        vec![other.path().join(".credentials.json")]
    );
}

#[test]
fn oauth_token_env_is_forwarded_as_a_bearer_with_a_dummy_env() {
    let mut host = Host::new();
    host.write_creds(&real_credentials().to_string());
    host.set("CLAUDE_CODE_OAUTH_TOKEN", "canary-setup-token-XYZ");
    let plan = host.prepare(forward()).unwrap();
    assert_eq!(
        plan.provisioned_env[CLAUDE_HOST_OAUTH_TOKEN_REF].expose(),
        "canary-setup-token-XYZ"
    );
    assert_eq!(plan.env["CLAUDE_CODE_OAUTH_TOKEN"], DUMMY_ACCESS_TOKEN);
    assert!(plan.credential_sources.is_empty());
    assert!(plan.local_responses.is_empty());
    assert!(!plan
        .files
        .iter()
        .any(|f| f.path.ends_with(".credentials.json")));
    assert_no_canary(&visible(&plan));
}

#[test]
fn forwarding_off_uses_the_api_key_and_never_the_login() {
    let mut host = Host::new();
    host.write_creds(&real_credentials().to_string());
    host.set("ANTHROPIC_API_KEY", "canary-real-api-key-XYZ");
    let plan = host.prepare(Value::Null).unwrap();

    assert!(!plan
        .provisioned_env
        .contains_key(CLAUDE_HOST_OAUTH_TOKEN_REF));
    assert_eq!(
        plan.provisioned_env[CLAUDE_HOST_API_KEY_REF].expose(),
        "canary-real-api-key-XYZ"
    );
    assert_eq!(plan.env["ANTHROPIC_API_KEY"], DUMMY_API_KEY);
    assert!(plan.local_responses.is_empty());
    assert!(plan.credential_sources.is_empty());
    let r = &plan.egress_routes[0];
    assert_eq!(r.host, "api.anthropic.com");
    assert_eq!(r.inject[0].header, "x-api-key");
    assert_eq!(r.inject[0].value, "{token}");
    assert_eq!(
        r.inject[0].token_ref.as_deref(),
        Some(CLAUDE_HOST_API_KEY_REF)
    );
    assert_no_canary(&visible(&plan));

    let cj = json_file(&plan, "/home/agent/.claude.json");
    let tail = &DUMMY_API_KEY[DUMMY_API_KEY.len() - 20..];
    assert_eq!(cj["customApiKeyResponses"]["approved"], json!([tail]));
}

#[test]
fn forwarding_with_no_login_falls_back_to_the_api_key_with_a_note() {
    let mut host = Host::new();
    host.set("ANTHROPIC_API_KEY", "canary-real-api-key-XYZ");
    let plan = host.prepare(forward()).unwrap();
    assert!(plan.provisioned_env.contains_key(CLAUDE_HOST_API_KEY_REF));
    assert!(plan
        .notes
        .iter()
        .any(|n| n.contains("no Claude Code login at")));
}

#[test]
fn forwarding_off_without_a_key_uses_the_setup_token() {
    let mut host = Host::new();
    host.set("CLAUDE_CODE_OAUTH_TOKEN", "canary-setup-token-XYZ");
    let plan = host.prepare(Value::Null).unwrap();
    assert!(plan
        .provisioned_env
        .contains_key(CLAUDE_HOST_OAUTH_TOKEN_REF));
}

/// Asserts the error names the file and a login command, and quotes nothing.
fn assert_actionable(e: ClaudeError, path: &Path) {
    let pe = PluginError::from(e);
    let all = format!("{} {}", pe.message, pe.hint.clone().unwrap_or_default());
    assert!(
        pe.message.contains(&path.display().to_string()),
        "names the file: {all}"
    );
    assert!(
        pe.message.contains("claude login") && pe.message.contains("claude setup-token"),
        "says what to run: {all}"
    );
    assert_no_canary(&all);
}

#[test]
fn missing_login_with_forwarding_names_the_file_and_the_commands() {
    let host = Host::new();
    let e = host.prepare(forward()).unwrap_err();
    assert!(matches!(e, ClaudeError::Missing { .. }), "{e}");
    assert_actionable(e, &host.creds_path());
}

#[test]
fn no_credential_at_all_names_the_file_and_the_commands() {
    let host = Host::new();
    let e = host.prepare(Value::Null).unwrap_err();
    assert!(matches!(e, ClaudeError::NoCredential { .. }), "{e}");
    assert_actionable(e, &host.creds_path());
}

#[test]
fn malformed_logins_name_the_file_and_never_quote_it() {
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = real_credentials();
        f(&mut c);
        c.to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        (
            r#"{"claudeAiOauth": {"accessToken": "canary-broken"#.into(),
            "not valid JSON",
        ),
        ("[\"canary\"]".into(), "not a JSON object"),
        (
            r#"{"mcpOAuth": {"x": "canary"}}"#.into(),
            "holds no Claude login",
        ),
        (
            r#"{"claudeAiOauth": "canary"}"#.into(),
            "`claudeAiOauth` is not an object",
        ),
        (
            with(&|c| c["claudeAiOauth"]["accessToken"] = json!("")),
            "`claudeAiOauth.accessToken` is missing",
        ),
        (
            with(&|c| c["claudeAiOauth"]["accessToken"] = json!(7)),
            "`claudeAiOauth.accessToken` is not a string",
        ),
        (
            with(&|c| c["claudeAiOauth"]["expiresAt"] = json!("canary-soon")),
            "`claudeAiOauth.expiresAt` is not a number",
        ),
        (
            with(&|c| c["claudeAiOauth"]["scopes"] = json!("canary user:inference")),
            "`claudeAiOauth.scopes` is not a list",
        ),
        (
            with(&|c| {
                c["claudeAiOauth"]["scopes"] = json!(["user:inference", "canary secret value"])
            }),
            "not a list of scope names",
        ),
    ];
    for (text, what) in cases {
        let host = Host::new();
        host.write_creds(&text);
        let e = host.prepare(forward()).unwrap_err();
        assert!(matches!(e, ClaudeError::Malformed { .. }), "{text}: {e}");
        assert!(e.to_string().contains(what), "{text}: {e}");
        assert_actionable(e, &host.creds_path());
    }
}

#[test]
fn login_without_inference_scope_is_refused() {
    let host = Host::new();
    let mut c = real_credentials();
    c["claudeAiOauth"]["scopes"] = json!(["user:profile"]);
    host.write_creds(&c.to_string());
    let e = host.prepare(forward()).unwrap_err();
    assert!(matches!(e, ClaudeError::NoInferenceScope { .. }), "{e}");
    assert!(e.to_string().contains("user:inference"));
    assert_actionable(e, &host.creds_path());
}

#[test]
fn unreadable_login_names_the_file() {
    let host = Host::new();
    std::fs::create_dir_all(host.creds_path()).unwrap();
    let e = host.prepare(forward()).unwrap_err();
    assert!(matches!(e, ClaudeError::Unreadable { .. }), "{e}");
    assert_actionable(e, &host.creds_path());
}

#[test]
fn expired_login_says_to_run_claude_on_the_host() {
    let host = Host::new();
    let mut c = real_credentials();
    c["claudeAiOauth"]["expiresAt"] = json!(NOW_MS - 1000);
    host.write_creds(&c.to_string());
    let e = host.prepare(forward()).unwrap_err();
    assert!(matches!(e, ClaudeError::Expired { .. }), "{e}");
    assert!(
        e.to_string().contains(&host::rfc3339_ms(NOW_MS - 1000)),
        "{e}"
    );
    assert!(
        e.to_string().contains("run `claude` once on the host"),
        "{e}"
    );
    assert_actionable(e, &host.creds_path());
}

#[test]
fn login_without_expiry_is_forwarded() {
    let host = Host::new();
    let mut c = real_credentials();
    c["claudeAiOauth"]["expiresAt"] = Value::Null;
    host.write_creds(&c.to_string());
    let plan = host.prepare(forward()).unwrap();
    let c = json_file(&plan, "/home/agent/.claude/.credentials.json");
    assert!(c["claudeAiOauth"]["expiresAt"].is_null());
}

#[test]
fn options_errors_name_the_table_and_the_key() {
    let host = Host::new();
    let e = host.prepare(json!({"forward": true})).unwrap_err();
    assert!(e.to_string().starts_with("[agent.options]"), "{e}");
    assert!(e.to_string().contains("`forward`"), "{e}");
    let e = host
        .prepare(json!({"forward_host_credentials": 1}))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("`forward_host_credentials` must be true or false"),
        "{e}"
    );
    assert_eq!(
        PluginError::from(e).kind,
        bot_bottle_plugin_api::ErrorKind::InvalidInput
    );
    // The host places each at its key, or at the table.
    let key = |options| PluginError::from(host.prepare(options).unwrap_err()).options_key;
    assert_eq!(key(json!({"x": true})), Some(vec!["x".to_string()]));
    assert_eq!(
        key(json!({"forward_host_credentials": 1})),
        Some(vec!["forward_host_credentials".to_string()])
    );
    assert_eq!(key(json!(["x"])), Some(vec![]));
}

#[test]
fn check_reports_which_credentials_were_found() {
    let mut host = Host::new();
    let req = |h: &Host| CheckRequest {
        host_env: h.env.clone(),
        ..Default::default()
    };
    let r = check_at(&req(&host), NOW_MS);
    assert_eq!(r.findings.len(), 1);
    assert_eq!(
        r.findings[0].severity,
        bot_bottle_plugin_api::Severity::Warn
    );
    assert!(r.findings[0]
        .hint
        .as_deref()
        .unwrap()
        .contains("claude login"));

    host.write_creds(&real_credentials().to_string());
    host.set("ANTHROPIC_API_KEY", "canary-real-api-key-XYZ");
    let r = check_at(&req(&host), NOW_MS);
    assert_eq!(r.findings.len(), 2);
    assert!(r.findings[0].message.contains("Claude Code login in"));
    assert!(r.findings[1].message.contains("ANTHROPIC_API_KEY"));
    assert_no_canary(&serde_json::to_string(&r).unwrap());

    host.write_creds("{canary");
    let r = check_at(&req(&host), NOW_MS);
    assert_eq!(
        r.findings[0].severity,
        bot_bottle_plugin_api::Severity::Error
    );
    assert_no_canary(&serde_json::to_string(&r).unwrap());
}

#[test]
fn provider_trait_maps_errors_with_hints() {
    let host = Host::new();
    let e = Claude.prepare(host.request(forward())).unwrap_err();
    assert_eq!(e.kind, bot_bottle_plugin_api::ErrorKind::Unavailable);
    assert!(e.message.contains("claude login"));
    assert!(e.hint.is_some());
    assert_eq!(Claude.info().name, "claude");
}

/// Every credential mode protects every Claude Code credential file, not
/// only the one this run reads: a setup token or an API key must not make
/// `~/.claude` or `~/.claude.json` mountable while they hold a login.
#[test]
fn every_mode_protects_every_claude_credential_file() {
    let mut host = Host::new();
    host.write_creds(&real_credentials().to_string());
    let home = host.dir.path().to_path_buf();
    let login = host.prepare(forward()).unwrap();
    host.set("CLAUDE_CODE_OAUTH_TOKEN", "canary-setup-token-XYZ");
    let token = host.prepare(forward()).unwrap();
    host.set("ANTHROPIC_API_KEY", "canary-api-key-XYZ");
    let key = host.prepare(json!({})).unwrap();
    for plan in [&login, &token, &key] {
        for p in [
            home.join(".claude/.credentials.json"),
            home.join(".claude/settings.json"),
            home.join(".claude.json"),
            // Copies of .claude.json (primaryApiKey, MCP servers' env).
            home.join(".claude/backups"),
            home.join(".claude.json.backup"),
        ] {
            assert!(
                plan.protected_paths.contains(&p),
                "{}: {:?}",
                p.display(),
                plan.protected_paths
            );
        }
    }
    host.set("CLAUDE_CONFIG_DIR", "/elsewhere/claude");
    let p = host.prepare(json!({})).unwrap();
    for want in [
        PathBuf::from("/elsewhere/claude/.credentials.json"),
        PathBuf::from("/elsewhere/claude/.claude.json"),
        home.join(".claude/.credentials.json"),
    ] {
        assert!(p.protected_paths.contains(&want), "{}", want.display());
    }
}
