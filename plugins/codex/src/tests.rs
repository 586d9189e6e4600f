//! Unit tests: temp dirs stand in for the host's HOME; canary values stand in
//! for real credentials and must never appear outside `provisioned_env`.

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::path::PathBuf;

const NOW: i64 = 1_900_000_000;
const EXP: i64 = NOW + 5 * 24 * 3600;
const IAT: i64 = NOW - 3600;
const ACCOUNT: &str = "acct-1234-non-secret";
const REFRESH: &str = "canary-real-refresh-XYZ";

/// A JWT shaped like OpenAI's, whose signature and one claim are canaries.
fn real_jwt(claims: Value, sig: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        sig
    )
}

fn real_access() -> String {
    real_jwt(
        json!({
            "exp": EXP, "iat": IAT,
            "session_id": "canary-real-session-XYZ",
            "https://api.openai.com/auth": {"chatgpt_account_id": ACCOUNT}
        }),
        "canary-real-access-sig-XYZ",
    )
}

fn real_id() -> String {
    real_jwt(
        json!({
            "email": "dev@example.com",
            "exp": NOW + 3600,
            "https://api.openai.com/auth": {
                "chatgpt_account_id": ACCOUNT,
                "chatgpt_plan_type": "plus",
                "chatgpt_user_id": "user-abc",
                "user_id": "user-abc",
                "organizations": [{"id": "canary-real-org-XYZ"}]
            }
        }),
        "canary-real-id-sig-XYZ",
    )
}

fn real_auth_json() -> Value {
    json!({
        "OPENAI_API_KEY": null,
        "tokens": {
            "id_token": real_id(),
            "access_token": real_access(),
            "refresh_token": REFRESH,
            "account_id": ACCOUNT
        },
        "last_refresh": "2030-03-17T10:00:00.123456Z"
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
    fn auth_path(&self) -> PathBuf {
        self.dir.path().join(".codex").join("auth.json")
    }
    fn write_auth(&self, text: &str) -> &Self {
        std::fs::create_dir_all(self.auth_path().parent().unwrap()).unwrap();
        std::fs::write(self.auth_path(), text).unwrap();
        self
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
    fn prepare(&self, options: Value) -> Result<AgentProvisionPlan, CodexError> {
        prepare_at(&self.request(options), NOW)
    }
}

fn forward() -> Value {
    json!({"forward_host_credentials": true})
}

/// The plan as the host would see it, minus the one place real values live.
fn visible(plan: &AgentProvisionPlan) -> String {
    let mut p = plan.clone();
    p.provisioned_env.clear();
    serde_json::to_string(&p).unwrap()
}

fn assert_no_canary(text: &str) {
    assert!(!text.contains("canary"), "a real value leaked: {text}");
}

fn claims(token: &str) -> serde_json::Map<String, Value> {
    assert_eq!(token.split('.').count(), 3, "three base64url parts");
    crate::jwt::claims(token).expect("decodable JWT")
}

fn file<'a>(plan: &'a AgentProvisionPlan, path: &str) -> &'a SandboxFile {
    plan.files.iter().find(|f| f.path == path).expect(path)
}

#[test]
fn forwarded_chatgpt_login_provisions_the_real_token_and_only_there() {
    let host = Host::new();
    host.write_auth(&real_auth_json().to_string());
    let plan = host.prepare(forward()).unwrap();

    assert_eq!(
        plan.provisioned_env[CODEX_HOST_CREDENTIAL_TOKEN_REF].expose(),
        real_access()
    );
    assert_eq!(plan.provisioned_env.len(), 1);
    assert_no_canary(&visible(&plan));
    assert_eq!(plan.credential_sources, vec![host.auth_path()]);
    assert_eq!(plan.default_command, ["codex"]);
    assert_eq!(plan.env["CODEX_HOME"], "/home/agent/.codex");
    for var in ["CODEX_CA_CERTIFICATE", "SSL_CERT_FILE"] {
        assert!(plan.ca_trust_env.iter().any(|v| v == var), "{var}");
    }
    assert!(!plan.env.contains_key("OPENAI_API_KEY"));
}

#[test]
fn dummy_auth_json_is_one_codex_accepts() {
    let host = Host::new();
    host.write_auth(&real_auth_json().to_string());
    let plan = host.prepare(forward()).unwrap();
    let f = file(&plan, "/home/agent/.codex/auth.json");
    assert_eq!(f.mode, 0o600);
    let auth: Value = serde_json::from_str(&f.contents).unwrap();

    assert!(auth["OPENAI_API_KEY"].is_null());
    assert_eq!(auth["last_refresh"], "2030-03-17T10:00:00.123456Z");
    let t = &auth["tokens"];
    assert_eq!(t["account_id"], ACCOUNT);
    assert_eq!(t["refresh_token"], DUMMY_REFRESH_TOKEN);

    let id = claims(t["id_token"].as_str().unwrap());
    let a = &id["https://api.openai.com/auth"];
    assert_eq!(a["chatgpt_account_id"], ACCOUNT);
    assert_eq!(a["chatgpt_plan_type"], "plus");
    assert_eq!(a["chatgpt_user_id"], "user-abc");
    assert!(a.get("organizations").is_none(), "only allow-listed claims");
    assert_eq!(id["email"], "dev@example.com");

    let access = claims(t["access_token"].as_str().unwrap());
    assert_eq!(access["exp"], EXP, "dummy exp is the real token's exp");
    assert_eq!(access["iat"], IAT);
    assert_eq!(
        access["https://api.openai.com/auth"]["chatgpt_account_id"],
        ACCOUNT
    );
    assert_ne!(t["access_token"].as_str().unwrap(), real_access());
}

#[test]
fn last_refresh_falls_back_to_the_tokens_iat() {
    let host = Host::new();
    let mut auth = real_auth_json();
    auth.as_object_mut().unwrap().remove("last_refresh");
    host.write_auth(&auth.to_string());
    let plan = host.prepare(forward()).unwrap();
    let auth: Value =
        serde_json::from_str(&file(&plan, "/home/agent/.codex/auth.json").contents).unwrap();
    assert_eq!(auth["last_refresh"], host::rfc3339(IAT));
}

#[test]
fn routes_carry_the_token_by_ref_and_the_account_id_literally() {
    let host = Host::new();
    host.write_auth(&real_auth_json().to_string());
    let plan = host.prepare(forward()).unwrap();
    assert_eq!(plan.egress_routes.len(), 1);
    let r = &plan.egress_routes[0];
    assert_eq!(r.host, "chatgpt.com");
    assert_eq!(r.path_prefix.as_deref(), Some("/backend-api/"));
    assert_eq!(r.inject[0].header, "Authorization");
    assert_eq!(r.inject[0].value, "Bearer {token}");
    assert_eq!(
        r.inject[0].token_ref.as_deref(),
        Some(CODEX_HOST_CREDENTIAL_TOKEN_REF)
    );
    assert_eq!(r.inject[1].header, "chatgpt-account-id");
    assert_eq!(r.inject[1].value, ACCOUNT);
    assert_eq!(r.inject[1].token_ref, None);
    assert!(plan.tls_passthrough.is_empty());
}

#[test]
fn fedramp_workspaces_route_to_gov_chatgpt() {
    let host = Host::new();
    let mut auth = real_auth_json();
    auth["tokens"]["id_token"] = json!(real_jwt(
        json!({"https://api.openai.com/auth": {
            "chatgpt_account_id": ACCOUNT, "chatgpt_account_is_fedramp": true
        }}),
        "canary-id-sig-XYZ"
    ));
    host.write_auth(&auth.to_string());
    let plan = host.prepare(forward()).unwrap();
    assert_eq!(plan.egress_routes[0].host, "gov.chatgpt.com");
    let a: Value =
        serde_json::from_str(&file(&plan, "/home/agent/.codex/auth.json").contents).unwrap();
    let id = claims(a["tokens"]["id_token"].as_str().unwrap());
    assert_eq!(
        id["https://api.openai.com/auth"]["chatgpt_account_is_fedramp"],
        true
    );
    assert_no_canary(&visible(&plan));
}

#[test]
fn refresh_is_answered_locally_with_dummies_that_follow_the_real_exp() {
    let host = Host::new();
    host.write_auth(&real_auth_json().to_string());
    let plan = host.prepare(forward()).unwrap();
    let r = plan
        .local_responses
        .iter()
        .find(|r| r.path == "/oauth/token")
        .unwrap();
    assert_eq!(
        (r.host.as_str(), r.method.as_str(), r.status),
        ("auth.openai.com", "POST", 200)
    );
    assert_eq!(r.content_type, "application/json");
    assert_no_canary(&r.body);
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["refresh_token"], DUMMY_REFRESH_TOKEN);
    assert_eq!(claims(body["access_token"].as_str().unwrap())["exp"], EXP);
    let id = claims(body["id_token"].as_str().unwrap());
    assert_eq!(
        id["https://api.openai.com/auth"]["chatgpt_account_id"],
        ACCOUNT
    );

    // A rotated host token: the next prepare's answer follows the new exp.
    let mut auth = real_auth_json();
    let new_exp = EXP + 7 * 24 * 3600;
    auth["tokens"]["access_token"] = json!(real_jwt(json!({"exp": new_exp}), "canary-sig2-XYZ"));
    host.write_auth(&auth.to_string());
    let plan = host.prepare(forward()).unwrap();
    let r = plan
        .local_responses
        .iter()
        .find(|r| r.path == "/oauth/token")
        .unwrap();
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["exp"],
        new_exp
    );
    assert_no_canary(&visible(&plan));
}

#[test]
fn prepare_is_deterministic_for_the_same_credential() {
    let host = Host::new();
    host.write_auth(&real_auth_json().to_string());
    let a = host.prepare(forward()).unwrap();
    let b = host.prepare(forward()).unwrap();
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
}

#[test]
fn codex_home_on_the_host_is_respected() {
    let mut host = Host::new();
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("auth.json"), real_auth_json().to_string()).unwrap();
    host.set("CODEX_HOME", other.path().to_str().unwrap());
    let plan = host.prepare(forward()).unwrap();
    assert_eq!(
        plan.credential_sources,
        vec![other.path().join("auth.json")]
    );
}

#[test]
fn forwarding_off_uses_the_api_key_and_never_the_login() {
    let mut host = Host::new();
    host.write_auth(&real_auth_json().to_string());
    host.set("OPENAI_API_KEY", "canary-real-api-key-XYZ");
    let plan = host.prepare(Value::Null).unwrap();

    assert!(!plan
        .provisioned_env
        .contains_key(CODEX_HOST_CREDENTIAL_TOKEN_REF));
    assert_eq!(
        plan.provisioned_env[CODEX_HOST_API_KEY_REF].expose(),
        "canary-real-api-key-XYZ"
    );
    assert_eq!(plan.env["CODEX_API_KEY"], DUMMY_API_KEY);
    assert_eq!(plan.env["OPENAI_API_KEY"], DUMMY_API_KEY);
    assert!(plan.local_responses.is_empty());
    assert!(plan.credential_sources.is_empty());
    assert_no_canary(&visible(&plan));

    let hosts: Vec<_> = plan
        .egress_routes
        .iter()
        .map(|r| (r.host.as_str(), r.path_prefix.as_deref()))
        .collect();
    assert_eq!(
        hosts,
        [
            ("api.openai.com", None),
            ("chatgpt.com", Some("/backend-api/codex/"))
        ]
    );
    for r in &plan.egress_routes {
        assert_eq!(r.inject.len(), 1);
        assert_eq!(r.inject[0].value, "Bearer {token}");
        assert_eq!(
            r.inject[0].token_ref.as_deref(),
            Some(CODEX_HOST_API_KEY_REF)
        );
    }
    let auth: Value =
        serde_json::from_str(&file(&plan, "/home/agent/.codex/auth.json").contents).unwrap();
    assert_eq!(auth, json!({"OPENAI_API_KEY": DUMMY_API_KEY}));
}

#[test]
fn codex_api_key_wins_over_openai_api_key() {
    let mut host = Host::new();
    host.set("OPENAI_API_KEY", "canary-openai-XYZ")
        .set("CODEX_API_KEY", "canary-codex-XYZ");
    let plan = host.prepare(Value::Null).unwrap();
    assert_eq!(
        plan.provisioned_env[CODEX_HOST_API_KEY_REF].expose(),
        "canary-codex-XYZ"
    );
}

#[test]
fn forwarding_with_no_login_falls_back_to_an_api_key_with_a_note() {
    let mut host = Host::new();
    host.set("OPENAI_API_KEY", "canary-real-api-key-XYZ");
    let plan = host.prepare(forward()).unwrap();
    assert!(plan.provisioned_env.contains_key(CODEX_HOST_API_KEY_REF));
    assert!(plan.notes.iter().any(|n| n.contains("no Codex login at")));
}

#[test]
fn api_key_login_in_auth_json_is_forwarded_and_watched() {
    let host = Host::new();
    host.write_auth(r#"{"OPENAI_API_KEY": "canary-file-key-XYZ", "tokens": null}"#);
    let plan = host.prepare(forward()).unwrap();
    assert_eq!(
        plan.provisioned_env[CODEX_HOST_API_KEY_REF].expose(),
        "canary-file-key-XYZ"
    );
    assert_eq!(plan.credential_sources, vec![host.auth_path()]);
    assert_no_canary(&visible(&plan));
}

/// Asserts the error names the file and `codex login`, and quotes nothing.
fn assert_actionable(e: CodexError, path: &Path) {
    let pe = PluginError::from(e);
    let all = format!("{} {}", pe.message, pe.hint.clone().unwrap_or_default());
    assert!(
        pe.message.contains(&path.display().to_string()),
        "names the file: {all}"
    );
    assert!(
        pe.message.contains("codex login"),
        "says what to run: {all}"
    );
    assert_no_canary(&all);
}

#[test]
fn missing_login_with_forwarding_names_the_file_and_codex_login() {
    let host = Host::new();
    let e = host.prepare(forward()).unwrap_err();
    assert!(matches!(e, CodexError::Missing { .. }), "{e}");
    assert_actionable(e, &host.auth_path());
}

#[test]
fn no_credential_at_all_names_the_file_and_codex_login() {
    let host = Host::new();
    let e = host.prepare(Value::Null).unwrap_err();
    assert!(matches!(e, CodexError::NoCredential { .. }), "{e}");
    assert_actionable(e, &host.auth_path());
}

#[test]
fn malformed_logins_name_the_file_and_never_quote_it() {
    let access = real_access();
    let cases: Vec<(String, &str)> = vec![
        (r#"{"tokens": {"access_token": "canary-broken"#.into(), "not valid JSON"),
        ("[\"canary-in-array\"]".into(), "not a JSON object"),
        (r#"{"tokens": "canary-str"}"#.into(), "`tokens` is not an object"),
        (r#"{"OPENAI_API_KEY": null}"#.into(), "holds no credential"),
        (
            json!({"tokens": {"access_token": "canary-real-access-XYZ", "account_id": ACCOUNT}}).to_string(),
            "`tokens.access_token` is not a JWT",
        ),
        (
            json!({"tokens": {"access_token": real_jwt(json!({"sub": "canary-sub"}), "canary-sig"), "account_id": ACCOUNT}}).to_string(),
            "no numeric `exp`",
        ),
        (
            json!({"tokens": {"access_token": access, "id_token": "canary-not-a-jwt", "account_id": ACCOUNT}}).to_string(),
            "`tokens.id_token` is not a JWT",
        ),
        (
            json!({"tokens": {"access_token": real_access()}}).to_string(),
            "no ChatGPT account id",
        ),
        (
            json!({"tokens": {"access_token": 42, "refresh_token": "canary-r"}}).to_string(),
            "`tokens.access_token` is not a string",
        ),
        (
            json!({"auth_mode": "apikey", "OPENAI_API_KEY": ""}).to_string(),
            "`OPENAI_API_KEY` is empty",
        ),
    ];
    for (text, what) in cases {
        let host = Host::new();
        host.write_auth(&text);
        let e = host.prepare(forward()).unwrap_err();
        assert!(matches!(e, CodexError::Malformed { .. }), "{text}: {e}");
        assert!(e.to_string().contains(what), "{text}: {e}");
        assert_actionable(e, &host.auth_path());
    }
}

#[test]
fn unsupported_auth_mode_is_named_but_only_when_printable() {
    let host = Host::new();
    host.write_auth(
        &json!({"auth_mode": "agentIdentity", "agent_identity": "canary-x"}).to_string(),
    );
    let e = host.prepare(forward()).unwrap_err();
    assert!(e.to_string().contains("`agentIdentity`"), "{e}");
    assert_actionable(e, &host.auth_path());

    host.write_auth(&json!({"auth_mode": "canary secret value XYZ"}).to_string());
    let e = host.prepare(forward()).unwrap_err();
    assert!(e.to_string().contains("(unrecognised)"), "{e}");
    assert_actionable(e, &host.auth_path());
}

#[test]
fn unreadable_login_names_the_file() {
    let host = Host::new();
    // A directory where the file should be: unreadable even for root.
    std::fs::create_dir_all(host.auth_path()).unwrap();
    let e = host.prepare(forward()).unwrap_err();
    assert!(matches!(e, CodexError::Unreadable { .. }), "{e}");
    assert_actionable(e, &host.auth_path());
}

#[test]
fn expired_host_token_says_to_run_codex_on_the_host() {
    let host = Host::new();
    let mut auth = real_auth_json();
    auth["tokens"]["access_token"] = json!(real_jwt(json!({"exp": NOW - 1}), "canary-sig-XYZ"));
    host.write_auth(&auth.to_string());
    let e = host.prepare(forward()).unwrap_err();
    assert!(matches!(e, CodexError::Expired { .. }), "{e}");
    assert!(e.to_string().contains(&host::rfc3339(NOW - 1)), "{e}");
    assert!(
        e.to_string().contains("run `codex` once on the host"),
        "{e}"
    );
    assert_actionable(e, &host.auth_path());
}

#[test]
fn no_home_is_an_error_not_a_panic() {
    let req = PrepareRequest {
        schema: 1,
        bottle_name: "t".into(),
        options: forward(),
        host_env: BTreeMap::new(),
        sandbox: Default::default(),
    };
    let e = prepare_at(&req, NOW).unwrap_err();
    assert!(matches!(e, CodexError::NoHome), "{e}");
    assert!(e.to_string().contains("codex login"));
}

#[test]
fn options_errors_name_the_table_and_the_key() {
    let host = Host::new();
    let e = host
        .prepare(json!({"forward_host_credential": true}))
        .unwrap_err();
    assert!(e.to_string().starts_with("[agent.options]"), "{e}");
    assert!(e.to_string().contains("`forward_host_credential`"), "{e}");
    let e = host
        .prepare(json!({"forward_host_credentials": "yes"}))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("`forward_host_credentials` must be true or false"),
        "{e}"
    );
    let e = host.prepare(json!(["x"])).unwrap_err();
    assert!(e.to_string().starts_with("[agent.options]"), "{e}");
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
fn sandbox_home_comes_from_the_layout() {
    let host = Host::new();
    host.write_auth(&real_auth_json().to_string());
    let mut req = host.request(forward());
    req.sandbox.home = "/root/".into();
    let plan = prepare_at(&req, NOW).unwrap();
    assert_eq!(plan.env["CODEX_HOME"], "/root/.codex");
    assert_eq!(plan.files[0].path, "/root/.codex/auth.json");
}

#[test]
fn check_reports_which_credentials_were_found() {
    let mut host = Host::new();
    let req = |h: &Host| CheckRequest {
        host_env: h.env.clone(),
        ..Default::default()
    };
    let r = check_at(&req(&host), NOW);
    assert_eq!(r.findings.len(), 1);
    assert_eq!(
        r.findings[0].severity,
        bot_bottle_plugin_api::Severity::Warn
    );
    assert!(r.findings[0]
        .hint
        .as_deref()
        .unwrap()
        .contains("codex login"));

    host.write_auth(&real_auth_json().to_string());
    host.set("OPENAI_API_KEY", "canary-real-api-key-XYZ");
    let r = check_at(&req(&host), NOW);
    assert_eq!(r.findings.len(), 2);
    assert!(r.findings[0].message.contains("ChatGPT login in"));
    assert!(r.findings[1].message.contains("OPENAI_API_KEY"));
    assert_no_canary(&serde_json::to_string(&r).unwrap());

    host.write_auth("{not json canary");
    let r = check_at(&req(&host), NOW);
    assert_eq!(
        r.findings[0].severity,
        bot_bottle_plugin_api::Severity::Error
    );
    assert!(r.findings[0].message.contains("malformed"));
    assert_no_canary(&serde_json::to_string(&r).unwrap());
}

#[test]
fn provider_trait_maps_errors_with_hints() {
    let host = Host::new();
    let e = Codex.prepare(host.request(forward())).unwrap_err();
    assert_eq!(e.kind, bot_bottle_plugin_api::ErrorKind::Unavailable);
    assert!(e.message.contains("codex login"));
    assert!(e.hint.is_some());
    assert_eq!(Codex.info().name, "codex");
}

/// Every credential mode protects every Codex credential file, not only the
/// one this run reads: an API key from the env must not make `~/.codex`
/// mountable while it holds a ChatGPT login.
#[test]
fn every_mode_protects_every_codex_credential_file() {
    let mut host = Host::new();
    host.write_auth(&real_auth_json().to_string());
    let codex = host.dir.path().join(".codex");
    let chatgpt = host.prepare(forward()).unwrap();
    host.set("OPENAI_API_KEY", "canary-env-key-XYZ");
    let env_key = host.prepare(json!({})).unwrap();
    for plan in [&chatgpt, &env_key] {
        for f in ["auth.json", ".credentials.json", "config.toml"] {
            assert!(
                plan.protected_paths.contains(&codex.join(f)),
                "{f}: {:?}",
                plan.protected_paths
            );
        }
    }
    // CODEX_HOME and the default both.
    host.set("CODEX_HOME", "/elsewhere/codex");
    let p = host.prepare(json!({})).unwrap();
    assert!(p
        .protected_paths
        .contains(&PathBuf::from("/elsewhere/codex/auth.json")));
    assert!(p.protected_paths.contains(&codex.join("auth.json")));
}
