//! `--serve-relay ADDR UPSTREAM`: the cheapest thing that can stand between
//! the agent and the upstream — a CONNECT relay that copies bytes and reads
//! none of them (no TLS termination, no HTTP, no injection). Its row in
//! the table is not a peer to beat but a reference: in the keep-alive
//! phase, what the hop alone costs (two more sockets, their system calls
//! and wake-ups) before a proxy does any work of its own, which an
//! intercepting proxy does on top. Not so for new connections: the relay
//! opens an upstream connection (and the upstream a TLS handshake) per
//! client connection, where a pooling proxy reuses one.
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Serves until killed. Every CONNECT goes to `upstream` whatever it names
/// (the bench's client names only the upstream).
pub fn serve_relay(listen: SocketAddr, upstream: SocketAddr) -> Res<()> {
    // The same runtime the bench's ends run (a worker per core).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let l = TcpListener::bind(listen).await?;
        loop {
            let (c, _) = l.accept().await?;
            tokio::spawn(async move {
                let _ = relay(c, upstream).await;
            });
        }
    })
}

async fn relay(mut c: TcpStream, upstream: SocketAddr) -> Res<()> {
    c.set_nodelay(true)?;
    // The CONNECT head; the client sends nothing more before the reply.
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = c.read(&mut buf).await?;
        if n == 0 || head.len() > 8192 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let mut u = TcpStream::connect(upstream).await?;
    u.set_nodelay(true)?;
    c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    tokio::io::copy_bidirectional(&mut c, &mut u).await?;
    Ok(())
}
