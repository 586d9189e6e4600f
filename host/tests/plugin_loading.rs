//! The plugin loader against real built libraries: in-tree, out-of-tree,
//! and deliberately broken ones. Every failure must be one line naming the
//! file, a non-zero exit, and never an abort of the host.

mod support;

use support::*;

fn plugins_list(dirs: &[&std::path::Path]) -> (i32, serde_json::Value, String) {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = bottle(data.path());
    for d in dirs {
        cmd.arg("--plugin-dir").arg(d);
    }
    let (code, out, err) = run(cmd.args(["plugins", "list", "--json"]));
    (
        code,
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad json ({e}): {out}\n{err}")),
        err,
    )
}

fn names(listing: &serde_json::Value) -> Vec<String> {
    listing["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

fn error_messages(listing: &serde_json::Value) -> Vec<String> {
    listing["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn in_tree_and_out_of_tree_example_load() {
    let hello = example_hello();
    let dir = plugin_dir(&[&hello]);
    let (code, listing, err) = plugins_list(&[dir.path()]);
    assert_eq!(code, 0, "{err}");
    let got = names(&listing);
    assert!(got.contains(&"generic".to_string()), "{got:?}");
    assert!(got.contains(&"hello".to_string()), "{got:?}");
    let hello_row = listing["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "hello")
        .unwrap();
    assert_eq!(hello_row["kind"], "provider");
    assert_eq!(hello_row["version"], "0.3.0");
    assert_eq!(hello_row["abi"], "1.0.0");
    assert_eq!(hello_row["source"], "--plugin-dir");
    assert!(error_messages(&listing).is_empty());
}

#[test]
fn incompatible_abi_major_is_one_line_naming_both_versions() {
    let lib = fixture("abi-v2");
    let dir = plugin_dir(&[&lib]);
    let (code, listing, _) = plugins_list(&[dir.path()]);
    assert_eq!(code, 1);
    let errors = error_messages(&listing);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert!(
        e.contains("libfixture_abi_v2.so: incompatible plugin ABI"),
        "{e}"
    );
    assert!(
        e.contains("built for ABI 2.0.0, this bottle speaks ABI 1.0.0"),
        "{e}"
    );
    assert!(
        e.contains("rebuild the plugin against bot-bottle-plugin-api 1.x"),
        "{e}"
    );
    assert!(!e.contains('\n'));
    assert!(
        names(&listing).contains(&"generic".to_string()),
        "other plugins must still load"
    );
}

#[test]
fn layout_mismatch_shows_only_the_last_error_line() {
    let lib = fixture("abi-layout");
    let dir = plugin_dir(&[&lib]);
    let data = tempfile::tempdir().unwrap();
    let (code, out, err) = run(bottle(data.path())
        .arg("--plugin-dir")
        .arg(dir.path())
        .args(["plugins", "list"]));
    assert_eq!(code, 1);
    assert!(out.contains("generic"), "{out}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("libfixture_abi_layout.so"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("root module layout differs: "),
        "{}",
        lines[0]
    );
    assert!(
        err.lines().count() < 5,
        "abi_stable's full report must stay at debug level:\n{err}"
    );
}

#[test]
fn garbage_and_non_plugin_libraries_are_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("garbage.so"), b"\x7fELF but not really").unwrap();
    // A real shared library that is not a plugin.
    let libm = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("libm");
    std::fs::copy(libm, dir.path().join("libm.so")).unwrap();
    let (code, listing, _) = plugins_list(&[dir.path()]);
    assert_eq!(code, 1);
    let errors = error_messages(&listing);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("garbage.so: not a loadable shared library")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("libm.so: a shared library but not a bot-bottle plugin")),
        "{errors:?}"
    );
    assert!(names(&listing).contains(&"generic".to_string()));
}

#[test]
fn a_plugin_that_panics_while_loading_is_named_and_skipped() {
    let lib = fixture("panics-on-load");
    let dir = plugin_dir(&[&lib]);
    let (code, listing, _) = plugins_list(&[dir.path()]);
    assert_eq!(code, 1);
    let errors = error_messages(&listing);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("panicked while loading"),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].contains("fixture panic while loading"),
        "{}",
        errors[0]
    );
    assert!(names(&listing).contains(&"generic".to_string()));
}

#[test]
fn same_name_plugins_first_in_search_order_wins_and_says_why() {
    let hello = example_hello();
    let first = plugin_dir(&[&hello]);
    let second = plugin_dir(&[&hello]);
    let (code, listing, _) = plugins_list(&[first.path(), second.path()]);
    assert_eq!(code, 0);
    let shadowed = listing["shadowed"].as_array().unwrap();
    assert_eq!(shadowed.len(), 1, "{listing}");
    assert_eq!(shadowed[0]["name"], "hello");
    assert!(shadowed[0]["winner"]
        .as_str()
        .unwrap()
        .starts_with(first.path().to_str().unwrap()));
    assert!(shadowed[0]["loser"]
        .as_str()
        .unwrap()
        .starts_with(second.path().to_str().unwrap()));
}

#[test]
fn plugins_info_names_a_plugin() {
    let data = tempfile::tempdir().unwrap();
    let (code, out, err) = run(bottle(data.path()).args(["plugins", "info", "generic", "--json"]));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["name"], "generic");
    assert_eq!(v["source"], "beside the binary");
    let (code, _, err) = run(bottle(data.path()).args(["plugins", "info", "nope"]));
    assert_eq!(code, 1);
    assert!(err.contains("no plugin named `nope`"), "{err}");
}

#[test]
fn plugin_env_path_and_data_dir_are_searched() {
    let hello = example_hello();
    let dir = plugin_dir(&[&hello]);
    let data = tempfile::tempdir().unwrap();
    let (_, out, _) = run(bottle(data.path())
        .env("BOT_BOTTLE_PLUGIN_PATH", dir.path())
        .args(["plugins", "info", "hello", "--json"]));
    assert!(
        out.contains("\"source\": \"BOT_BOTTLE_PLUGIN_PATH\""),
        "{out}"
    );
    let plugins = data.path().join("bot-bottle/plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(&hello, plugins.join(hello.file_name().unwrap())).unwrap();
    let (_, out, _) = run(bottle(data.path()).args(["plugins", "info", "hello", "--json"]));
    assert!(out.contains("\"source\": \"the data dir\""), "{out}");
}

/// A plugin directory the user named that is not one (a typo in
/// `--plugin-dir` or BOT_BOTTLE_PLUGIN_PATH) is said, not silently skipped.
#[test]
fn a_named_plugin_directory_that_is_not_one_is_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-dir");
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let (_, _, err) = plugins_list(&[&missing, &file]);
    assert!(
        err.contains(&format!(
            "{} (--plugin-dir) does not exist",
            missing.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{} (--plugin-dir) is not a directory",
            file.display()
        )),
        "{err}"
    );
    // The places searched by default say nothing when they are missing.
    let (_, _, err) = plugins_list(&[]);
    assert!(!err.contains("plugin directory"), "{err}");
}
