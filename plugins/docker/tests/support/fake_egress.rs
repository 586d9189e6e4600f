//! A stand-in for `bottle egress serve`, used only by the Docker backend's
//! tests while the real proxy is built elsewhere. It is compiled by the
//! tests with plain `rustc` (std only, dynamically linked against glibc, so
//! the sidecar image's `ldd` packing is exercised for real).
//!
//! `PROGRAM egress serve --config FILE [--config-stdin] (--listen ADDR |
//! --listen-unix PATH)`:
//! * reads the config from stdin until it closes (`--config-stdin`), else
//!   from FILE (it must be readable), and prints one JSON line with its size
//!   and where it came from (stdin, or the file's mode) — never its contents;
//! * if the config contains `"fail": true` it prints the config's `token`
//!   to stderr and exits 3 (to check that the backend redacts it);
//! * if the config contains `"delay_ms": N` it waits N ms before it binds
//!   (a slow proxy, to check that the agent never runs before it listens);
//! * listens on ADDR (TCP) or PATH (a Unix socket, mode 0666) and prints
//!   `listening on …` to stderr;
//! * if the config contains `"die_ms": N`, N ms after listening it prints
//!   `error: upstream went away` to stderr and exits 4 (a proxy that dies
//!   while the agent runs);
//! * if the config contains `"hog_ms": N`, N ms after listening it takes
//!   memory without end, touching every page (a proxy an agent made hold
//!   too much, to check the sidecar's memory limit stops it);
//! * serves each connection as a minimal forward proxy: `CONNECT host:port`
//!   is tunnelled, `GET http://host:port/path` is fetched with HTTP/1.0;
//!   anything else gets `fake-egress` back. One JSON audit line per request
//!   goes to stdout.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

/// A client or upstream connection: TCP, or the Unix socket's.
trait Conn: Read + Write + Send + Sized + 'static {
    fn try_clone(&self) -> std::io::Result<Self>;
    fn shutdown(&self, how: Shutdown) -> std::io::Result<()>;
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()>;
}

macro_rules! conn {
    ($t:ty) => {
        impl Conn for $t {
            fn try_clone(&self) -> std::io::Result<Self> {
                <$t>::try_clone(self)
            }
            fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
                <$t>::shutdown(self, how)
            }
            fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
                <$t>::set_read_timeout(self, t)
            }
        }
    };
}
conn!(TcpStream);
conn!(UnixStream);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| panic!("missing {name}"))
    };
    assert_eq!(args.get(1).map(String::as_str), Some("egress"));
    assert_eq!(args.get(2).map(String::as_str), Some("serve"));
    let config_path = arg("--config");
    let unix = args.iter().any(|a| a == "--listen-unix");
    let listen = arg(if unix { "--listen-unix" } else { "--listen" });

    let config = if args.iter().any(|a| a == "--config-stdin") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).expect("reading stdin");
        println!(r#"{{"event":"config","bytes":{},"from":"stdin"}}"#, text.len());
        text
    } else {
        let text = std::fs::read_to_string(&config_path).expect("reading the config");
        let mode = std::fs::metadata(&config_path).unwrap().permissions().mode() & 0o7777;
        println!(r#"{{"event":"config","bytes":{},"mode":"{:o}"}}"#, text.len(), mode);
        text
    };
    if config.contains(r#""fail": true"#) || config.contains(r#""fail":true"#) {
        let token = config
            .split(r#""token":""#)
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        eprintln!("fatal: refusing config with token {token}");
        std::process::exit(3);
    }

    if let Some(ms) = config
        .split(r#""delay_ms":"#)
        .nth(1)
        .and_then(|r| r.trim_start().split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
    if let Some(ms) = config
        .split(r#""die_ms":"#)
        .nth(1)
        .and_then(|r| r.trim_start().split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok())
    {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            eprintln!("error: upstream went away");
            std::process::exit(4);
        });
    }
    if let Some(ms) = config
        .split(r#""hog_ms":"#)
        .nth(1)
        .and_then(|r| r.trim_start().split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok())
    {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            let mut kept: Vec<Vec<u8>> = Vec::new();
            loop {
                // 16 MiB at a time, every page written so it is resident.
                kept.push(vec![1u8; 16 << 20]);
            }
        });
    }
    if unix {
        let listener = UnixListener::bind(&listen).expect("binding");
        std::fs::set_permissions(&listen, std::fs::Permissions::from_mode(0o666)).unwrap();
        eprintln!("listening on unix:{listen}");
        accept_all(listener.incoming());
    } else {
        let listener = TcpListener::bind(&listen).expect("binding");
        eprintln!("listening on {listen}");
        accept_all(listener.incoming());
    }
}

fn accept_all<C: Conn>(incoming: impl Iterator<Item = std::io::Result<C>>) {
    for conn in incoming {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            let _ = serve(conn);
        });
    }
}

fn serve<C: Conn>(client: C) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(());
    }
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    println!(r#"{{"event":"request","method":"{method}","target":"{target}"}}"#);
    let mut client = client;
    client.set_read_timeout(None)?;
    if method == "CONNECT" {
        let upstream = TcpStream::connect(&target)?;
        client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
        splice(client, upstream);
    } else if let Some(rest) = target.strip_prefix("http://") {
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        match TcpStream::connect(&addr) {
            Ok(mut upstream) => {
                // One write: `write!` on a bare stream sends each piece on
                // its own.
                let head = format!(
                    "{method} {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
                );
                upstream.write_all(head.as_bytes())?;
                let mut body = Vec::new();
                upstream.read_to_end(&mut body)?;
                client.write_all(&body)?;
            }
            Err(e) => {
                let msg = format!("upstream {addr}: {e}\n");
                write!(
                    client,
                    "HTTP/1.0 502 Bad Gateway\r\nContent-Length: {}\r\n\r\n{msg}",
                    msg.len()
                )?;
            }
        }
    } else {
        client.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 12\r\n\r\nfake-egress\n")?;
    }
    Ok(())
}

fn splice<A: Conn, B: Conn>(a: A, b: B) {
    let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let t = std::thread::spawn(move || {
        let mut a = a;
        let mut b = b;
        let _ = std::io::copy(&mut a, &mut b);
        let _ = b.shutdown(Shutdown::Write);
    });
    let _ = std::io::copy(&mut b2, &mut a2);
    let _ = a2.shutdown(Shutdown::Write);
    let _ = t.join();
}
