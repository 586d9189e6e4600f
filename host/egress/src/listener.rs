//! Where the proxy listens: a TCP address, or a Unix socket.
//!
//! The Docker backend gives the agent no network at all: its only way out
//! is the proxy's Unix socket, in a volume the agent mounts read-only (a
//! forwarder in the agent's launch gate turns it back into the TCP proxy
//! address that agents' HTTP clients expect). Who can connect is then
//! decided by who can reach the socket file, so a Unix client is served
//! without the `allowed_clients` check a TCP peer gets.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A bound listening socket, before it is handed to the workers.
#[derive(Debug)]
pub enum Listener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, PathBuf),
}

impl From<std::net::TcpListener> for Listener {
    fn from(l: std::net::TcpListener) -> Self {
        Listener::Tcp(l)
    }
}

impl Listener {
    /// Binds a Unix socket at `path`, which any local user may connect to
    /// (the directory it is in decides who can reach it). A socket file
    /// left at `path` by an earlier run is replaced; any other file is an
    /// error, never removed.
    pub fn bind_unix(path: &Path) -> io::Result<Self> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let l = std::os::unix::net::UnixListener::bind(path)?;
        // connect(2) needs write permission on the socket file; the agent
        // runs as whatever user its image says.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
        Ok(Listener::Unix(l, path.to_owned()))
    }

    /// `127.0.0.1:3128` or `unix:/run/…/proxy.sock`: for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => describe_tcp(l.local_addr()),
            Listener::Unix(_, path) => describe_unix(path),
        }
    }

    pub(crate) fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l, _) => l.set_nonblocking(true),
        }
    }

    /// The tokio listener, inside a runtime.
    pub(crate) fn into_async(self) -> io::Result<AsyncListener> {
        Ok(match self {
            Listener::Tcp(l) => AsyncListener::Tcp(tokio::net::TcpListener::from_std(l)?),
            Listener::Unix(l, path) => {
                AsyncListener::Unix(tokio::net::UnixListener::from_std(l)?, path)
            }
        })
    }
}

/// A listener inside a worker's runtime.
pub(crate) enum AsyncListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

impl From<tokio::net::TcpListener> for AsyncListener {
    fn from(l: tokio::net::TcpListener) -> Self {
        AsyncListener::Tcp(l)
    }
}

/// An accepted client connection.
pub(crate) enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    Unix(tokio::net::UnixStream),
}

/// An accepted connection on its way to another worker: a tokio socket
/// belongs to the runtime that registered it, so it travels as a std one.
pub(crate) enum StdAccepted {
    Tcp(std::net::TcpStream, SocketAddr),
    Unix(std::os::unix::net::UnixStream),
}

impl Accepted {
    /// Leaves this runtime (the socket stays non-blocking).
    pub(crate) fn into_std(self) -> io::Result<StdAccepted> {
        Ok(match self {
            Accepted::Tcp(s, peer) => StdAccepted::Tcp(s.into_std()?, peer),
            Accepted::Unix(s) => StdAccepted::Unix(s.into_std()?),
        })
    }
}

impl StdAccepted {
    /// Joins the runtime of the calling thread.
    pub(crate) fn into_async(self) -> io::Result<Accepted> {
        Ok(match self {
            StdAccepted::Tcp(s, peer) => Accepted::Tcp(tokio::net::TcpStream::from_std(s)?, peer),
            StdAccepted::Unix(s) => Accepted::Unix(tokio::net::UnixStream::from_std(s)?),
        })
    }
}

impl AsyncListener {
    pub(crate) async fn accept(&self) -> io::Result<Accepted> {
        Ok(match self {
            AsyncListener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                Accepted::Tcp(s, peer)
            }
            AsyncListener::Unix(l, _) => Accepted::Unix(l.accept().await?.0),
        })
    }

    /// As [`Listener::describe`].
    pub(crate) fn describe(&self) -> String {
        match self {
            AsyncListener::Tcp(l) => describe_tcp(l.local_addr()),
            AsyncListener::Unix(_, path) => describe_unix(path),
        }
    }
}

fn describe_tcp(addr: io::Result<SocketAddr>) -> String {
    addr.map(|a| a.to_string())
        .unwrap_or_else(|_| "a TCP socket".into())
}

fn describe_unix(path: &Path) -> String {
    format!("unix:{}", path.display())
}
