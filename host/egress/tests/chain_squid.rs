//! The proxy chained to a real corporate proxy: Debian's squid, wanting
//! Basic credentials from a password file, as `upstream.proxy` and
//! `upstream.proxy_auth_ref` are meant for. tests/proxy.rs covers the same
//! options against a CONNECT proxy of its own that records what it is sent;
//! this one checks the proxy against squid's own reading of CONNECT, 407 and
//! Proxy-Authorization. Squid must be installed (.ci/run installs it); in CI
//! its absence is a failure, elsewhere the test says why it did not run.

mod harness;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;

/// Debian's squid on a loopback port, CONNECT only, for one user and
/// password. Stopped when dropped.
struct Squid {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Squid {
    /// Starts one that admits `user` with `password`; `None` (and why,
    /// printed) where squid cannot run here, outside CI.
    fn start(user: &str, password: &str) -> Option<Squid> {
        let bin = ["/usr/sbin/squid", "/usr/bin/squid"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let helper = "/usr/lib/squid/basic_ncsa_auth";
        let Some(bin) = bin.filter(|_| Path::new(helper).exists()) else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("squid is required in CI (apt-get install squid-openssl; .ci/run does)");
            }
            eprintln!("SKIP: squid (and {helper}) is not installed");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // An Apache MD5 hash, read from stdin so the password is on no
        // command line.
        let mut openssl = Command::new("openssl")
            .args(["passwd", "-apr1", "-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("openssl (the package ca-certificates depends on)");
        std::io::Write::write_all(
            &mut openssl.stdin.take().unwrap(),
            format!("{password}\n").as_bytes(),
        )
        .unwrap();
        let hash = openssl.wait_with_output().unwrap();
        assert!(hash.status.success());
        let hash = String::from_utf8(hash.stdout).unwrap();
        std::fs::write(d.join("passwd"), format!("{user}:{}\n", hash.trim())).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = |f: &str| d.join(f).display().to_string();
        let conf = format!(
            "http_port 127.0.0.1:{port}\n\
             auth_param basic program {helper} {passwd}\n\
             auth_param basic realm corp\n\
             acl authed proxy_auth REQUIRED\n\
             acl CONNECT method CONNECT\n\
             http_access deny !authed\n\
             http_access allow CONNECT\n\
             http_access deny all\n\
             cache deny all\n\
             cache_mem 8 MB\n\
             access_log stdio:{access} squid\n\
             cache_log {cache}\n\
             pid_filename {pid}\n\
             coredump_dir {dir}\n\
             cache_effective_user proxy\n\
             shutdown_lifetime 0 seconds\n\
             pinger_enable off\n",
            passwd = p("passwd"),
            access = p("access.log"),
            cache = p("cache.log"),
            pid = p("squid.pid"),
            dir = d.display(),
        );
        std::fs::write(d.join("squid.conf"), conf).unwrap();
        // Run by root, squid works as `proxy`, which must write its logs
        // (run by anyone else, it stays that user).
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let st = Command::new("chown")
                .args(["-R", "proxy:proxy"])
                .arg(d)
                .status()
                .unwrap();
            assert!(st.success(), "chown to squid's user proxy");
        }
        let mut child = Command::new(bin)
            .arg("-N")
            .arg("-f")
            .arg(d.join("squid.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let t = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            let log = || std::fs::read_to_string(d.join("cache.log")).unwrap_or_default();
            if let Ok(Some(st)) = child.try_wait() {
                panic!("squid ended ({st}) before it listened:\n{}", log());
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "squid did not listen within 20 s:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Squid { child, addr, dir })
    }

    /// Stops it (its log is written out as it ends) and returns its access
    /// log.
    fn stop(mut self) -> String {
        self.end();
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// SIGTERM, then SIGKILL after 10 s; its helpers end with their pipes.
    fn end(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: kill(2) on our own child's pid, which it has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        self.end();
    }
}

/// With the credential (the password is the canary), requests over
/// HTTP/1.1 and HTTP/2 reach the upstream through squid: squid logs an
/// authenticated CONNECT to the upstream's address and nothing else of
/// them (TLS goes on end to end inside), and the upstream gets the route's
/// token and no Proxy-Authorization. Without it, squid's 407 becomes a 502
/// that names the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_through_a_real_squid_that_wants_credentials() {
    let Some(squid) = Squid::start("corp-user", CANARY) else {
        return;
    };
    let pki = test_pki();
    let up = start_upstream(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let mut cfg = config(&pki, up.addr, &audit);
    cfg.upstream.proxy = Some(format!("http://{}", squid.addr));
    cfg.upstream.proxy_auth_ref = Some("CORP_PROXY_AUTH".into());
    cfg.tokens.insert(
        "CORP_PROXY_AUTH".into(),
        bot_bottle_plugin_api::Secret::new(format!("corp-user:{CANARY}")),
    );
    let bottle_ca = cfg.ca.cert_pem.clone();
    let mut unauthenticated = cfg.clone();
    let proxy = start_proxy(cfg);
    for h2 in [false, true] {
        let host = if h2 { "" } else { "chain.test" };
        let req = get("https://chain.test/c", host, h2);
        let got = send(proxy, "chain.test:443", "chain.test", &bottle_ca, h2, req).await;
        assert_eq!(got.status, 200, "h2 {h2}: {got:?}");
        let seen = up.seen().pop().unwrap();
        assert_eq!(
            seen.header_all("authorization"),
            [format!("Bearer {CANARY}")]
        );
        assert!(seen.header_all("proxy-authorization").is_empty());
        assert_eq!(seen.sni.as_deref(), Some("chain.test"));
    }
    assert!(!audit_text(&audit).contains(CANARY));

    unauthenticated.upstream.proxy_auth_ref = None;
    unauthenticated.tokens.remove("CORP_PROXY_AUTH");
    let proxy = start_proxy(unauthenticated);
    let req = get("https://chain.test/c", "chain.test", false);
    let got = send(
        proxy,
        "chain.test:443",
        "chain.test",
        &bottle_ca,
        false,
        req,
    )
    .await;
    assert_eq!(got.status, 502, "{got:?}");
    assert!(got.body.contains("407"), "{}", got.body);
    assert!(got.body.contains("upstream_proxy_auth_ref"), "{}", got.body);

    let log = squid.stop();
    let target = up.addr.to_string();
    // Less the readiness probe's connection, which sent nothing.
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("error:transaction-end-before-headers"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("CONNECT {target} corp-user")) && l.contains("/200 ")),
        "no authenticated CONNECT in squid's log:\n{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("TCP_DENIED/407") && l.contains(&format!("CONNECT {target} - "))),
        "no refused CONNECT in squid's log:\n{log}"
    );
    assert!(
        lines.iter().all(|l| l.contains(" CONNECT ")),
        "squid saw more than CONNECTs:\n{log}"
    );
    assert!(!log.contains(CANARY));
}
