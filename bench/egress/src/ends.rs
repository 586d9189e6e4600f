//! Where the upstream runs: in this program's own process, beside the load
//! generator (`--ends shared`), or in a process of its own (`--ends split`,
//! the default).
//!
//! Why it matters: with both ends in one tokio runtime, a direct request is
//! a hand-off between two tasks of one process, often on one thread, with no
//! process to wake on the other side; a proxied request crosses two process
//! boundaries each way. Split ends make direct pay for one crossing, as it
//! does in the peers' reference setup (`oha` and the upstream as separate
//! processes, `../shared/bench-peers/README.md`) and in life (the agent and
//! the API are never one process). Both are kept so that either can be
//! measured; docs/benchmarks.md records which one each result used.
//!
//! The split upstream is this same program started with `--serve-upstream
//! DIR`: it reads the leaf and key from DIR, prints `listening ADDR`, then
//! answers one line per command on stdin (`reset`, `stats`) and exits at
//! EOF, so it never outlives the bench.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering::Relaxed;

use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::{Pki, Res, INJECTED, SEEN, UP_CONNS, UP_H2, UP_RESUMED, UP_TLS};

/// What the upstream counted (see the statics in main.rs).
#[derive(Default, Clone)]
pub struct UpStats {
    pub seen: u64,
    pub injected: u64,
    pub conns: u64,
    pub h2: u64,
    pub resumed: u64,
    pub tls: String,
}

fn local_stats() -> UpStats {
    UpStats {
        seen: SEEN.load(Relaxed),
        injected: INJECTED.load(Relaxed),
        conns: UP_CONNS.load(Relaxed),
        h2: UP_H2.load(Relaxed),
        resumed: UP_RESUMED.load(Relaxed),
        tls: UP_TLS.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    }
}

/// Zero the per-peer counts (requests seen, injected) and forget the first
/// connection's TLS; the connection counts run on (they are differenced).
fn local_reset() {
    SEEN.store(0, Relaxed);
    INJECTED.store(0, Relaxed);
    UP_TLS.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// The upstream's address, and its process when it has one.
pub struct Upstream {
    addr: SocketAddr,
    process: Option<Process>,
}

/// A split upstream: the child and the pipes its commands go through.
struct Process {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Upstream {
    /// The upstream, in this process or a child, per `--ends`.
    pub async fn start(split: bool, pki: &Pki, work: &Path) -> Res<Self> {
        if !split {
            return Ok(Self {
                addr: crate::upstream(pki).await,
                process: None,
            });
        }
        let dir = work.join("upstream");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("leaf.der"), pki.cert.as_ref())?;
        std::fs::write(dir.join("key.der"), pki.key.secret_pkcs8_der())?;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("--serve-upstream")
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or("upstream: no stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("upstream: no stdout")?).lines();
        let line = stdout.next_line().await?.unwrap_or_default();
        let addr = line
            .strip_prefix("listening ")
            .ok_or_else(|| format!("upstream process said {line:?}, not `listening ADDR`"))?
            .parse()?;
        Ok(Self {
            addr,
            process: Some(Process {
                child,
                stdin,
                stdout,
            }),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The upstream's own process, when it has one (its CPU is the ends').
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(|p| p.child.id())
    }

    pub async fn reset(&mut self) -> Res<()> {
        match &mut self.process {
            None => {
                local_reset();
                Ok(())
            }
            Some(p) => p.ask("reset").await.map(drop),
        }
    }

    pub async fn stats(&mut self) -> Res<UpStats> {
        let Some(p) = &mut self.process else {
            return Ok(local_stats());
        };
        let line = p.ask("stats").await?;
        let mut it = line.splitn(6, ' ');
        let mut num = || -> Res<u64> { Ok(it.next().ok_or("short stats")?.parse()?) };
        Ok(UpStats {
            seen: num()?,
            injected: num()?,
            conns: num()?,
            h2: num()?,
            resumed: num()?,
            tls: it.next().unwrap_or_default().to_owned(),
        })
    }
}

impl Process {
    async fn ask(&mut self, cmd: &str) -> Res<String> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(self
            .stdout
            .next_line()
            .await?
            .ok_or("the upstream process ended")?)
    }
}

/// `--serve-upstream DIR`: the split upstream's whole life.
pub fn serve_upstream(dir: &Path) -> Res<()> {
    let pki = Pki {
        ca_pem: String::new(),
        cert: CertificateDer::from(std::fs::read(dir.join("leaf.der"))?),
        key: PrivatePkcs8KeyDer::from(std::fs::read(dir.join("key.der"))?),
    };
    // The same runtime the bench's own process runs (two workers here).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let addr = rt.block_on(crate::upstream(&pki));
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening {addr}")?;
    out.flush()?;
    // Commands on stdin, served on this thread while the runtime's workers
    // serve the upstream.
    for line in std::io::stdin().lock().lines() {
        match line?.as_str() {
            "reset" => {
                local_reset();
                writeln!(out, "ok")?;
            }
            "stats" => {
                let s = local_stats();
                writeln!(
                    out,
                    "{} {} {} {} {} {}",
                    s.seen, s.injected, s.conns, s.h2, s.resumed, s.tls
                )?;
            }
            other => writeln!(out, "unknown command {other:?}")?,
        }
        out.flush()?;
    }
    Ok(())
}
