//! The built plugin library, loaded the way the host loads it: through
//! abi_stable's root module, with every call crossing the FFI as JSON.
//! Needs no Docker daemon.

use std::path::PathBuf;

use abi_stable::library::{lib_header_from_path, RootModule};
use abi_stable::std_types::{RResult, RStr, RString};
use bot_bottle_plugin_api::abi::{HostContext, PluginRootRef};
use bot_bottle_plugin_api::PluginError;

extern "C" fn log(_plugin: RStr<'_>, _level: u8, _target: RStr<'_>, _message: RStr<'_>) {}

extern "C" fn call(_op: RStr<'_>, _request: RStr<'_>) -> RResult<RString, RString> {
    RResult::RErr(r#"{"kind":"unsupported","message":"no host services"}"#.into())
}

fn library() -> PathBuf {
    // target/<profile>/deps/<test> → target/<profile>/
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    dir.join(format!(
        "{}bot_bottle_plugin_docker{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ))
}

#[test]
fn the_library_loads_and_answers_across_the_boundary() {
    // The only test in this binary, so no other test sees the variable.
    let dead = "unix:///nonexistent/bot-bottle-ffi/docker.sock";
    std::env::set_var("DOCKER_HOST", dead);
    let path = library();
    assert!(path.exists(), "{} was not built", path.display());
    let root = lib_header_from_path(&path)
        .and_then(|h| h.init_root_module::<PluginRootRef>())
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    let _ = PluginRootRef::NAME;
    let object = root.instantiate()(HostContext {
        host_abi: RStr::from_str(bot_bottle_plugin_api::ABI_VERSION),
        max_level: 3,
        log,
        call,
    })
    .unwrap();
    let info: serde_json::Value = serde_json::from_str(object.info.as_str()).unwrap();
    assert_eq!(info["name"], "docker");
    assert_eq!(info["kind"], "backend");
    let backend = object.backend.unwrap();

    // A dead daemon: the error crosses as JSON with its hint.
    let spec = serde_json::json!({
        "bottle_id": "bb-ffi-1",
        "bottle_name": "ffi",
        "agent": {"image": "x", "command": ["true"], "workdir": "/"},
        "egress": {"program": "/nonexistent", "config": "{}", "listen_port": 3128, "ca_cert_pem": ""},
        "backend_options": {"user": "agent"},
    });
    // The plugin reads DOCKER_HOST; a wrong option fails before any
    // connection, whatever the environment.
    let mut bad = spec.clone();
    bad["backend_options"] = serde_json::json!({"nope": 1});
    let err = match backend.launch(RStr::from_str(&bad.to_string())) {
        RResult::RErr(e) => PluginError::from_json(e.as_str()),
        RResult::ROk(ok) => panic!("launch succeeded: {ok}"),
    };
    assert!(err.message.contains("nope"), "{err:?}");
    assert!(err.hint.is_some());
    // Which key, for the host to name its line in the manifest.
    assert_eq!(err.options_key, Some(vec!["nope".to_string()]), "{err:?}");

    let err = match backend.launch(RStr::from_str(&spec.to_string())) {
        RResult::RErr(e) => PluginError::from_json(e.as_str()),
        RResult::ROk(ok) => panic!("launch succeeded: {ok}"),
    };
    assert!(
        err.message
            .starts_with(&format!("cannot reach the Docker daemon at {dead}")),
        "{err:?}"
    );
    let report: serde_json::Value = match backend.check(RStr::from_str("{}")) {
        RResult::ROk(r) => serde_json::from_str(r.as_str()).unwrap(),
        RResult::RErr(e) => panic!("check failed: {e}"),
    };
    assert_eq!(report["findings"][0]["severity"], "error", "{report}");

    // `validate` crosses as the extension op, without the daemon: fine,
    // then each thing the launch would refuse.
    let validate = |request: serde_json::Value| match backend.extension(
        RStr::from_str(bot_bottle_plugin_api::abi::OP_VALIDATE),
        RStr::from_str(&request.to_string()),
    ) {
        RResult::ROk(ok) => Ok(ok.to_string()),
        RResult::RErr(e) => Err(PluginError::from_json(e.as_str())),
    };
    let request = serde_json::json!({
        "bottle_name": "ffi",
        "agent": {"image": "x", "command": ["true"], "workdir": "/workspace"},
        "backend_options": {"pull": false},
    });
    assert_eq!(validate(request.clone()).unwrap(), "null");
    let mut bad = request.clone();
    bad["backend_options"] = serde_json::json!({"pull": "no"});
    let err = validate(bad).unwrap_err();
    assert!(err.message.contains("[backends.docker]"), "{err:?}");
    let mut bad = request.clone();
    bad["agent"]["resources"] = serde_json::json!({"cpus": 0.001});
    let err = validate(bad).unwrap_err();
    assert!(err.message.contains("minimum of 0.01"), "{err:?}");
    let mut bad = request.clone();
    bad["agent"]["mounts"] =
        serde_json::json!([{"host": "/var/run", "sandbox": "/r", "writable": false}]);
    let err = validate(bad).unwrap_err();
    assert!(err.message.contains("Docker socket"), "{err:?}");

    // A malformed request is an error, not a crash.
    let err = match backend.wait(RStr::from_str("{not json")) {
        RResult::RErr(e) => PluginError::from_json(e.as_str()),
        RResult::ROk(ok) => panic!("wait succeeded: {ok}"),
    };
    assert!(err.message.contains("wait"), "{err:?}");
}
