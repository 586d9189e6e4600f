//! DLP on WebSocket traffic from the agent (Codex sends its whole
//! conversation over one). Client frames are parsed, unmasked for the scan
//! and forwarded byte for byte; the upstream direction is copied untouched.
//! Compression extensions are taken off the upgrade request while DLP is on,
//! so frames are scannable.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::DlpMode;
use crate::dlp::{Dlp, StreamScan};

/// What the scan saw.
#[derive(Debug, Default)]
pub(crate) struct WsOutcome {
    pub(crate) bytes_out: u64,
    pub(crate) bytes_in: u64,
    pub(crate) findings: Vec<String>,
    pub(crate) blocked: bool,
    /// A frame of the agent's that breaks RFC 6455 (why): the socket was
    /// closed with 1002 before it went.
    pub(crate) protocol_error: Option<&'static str>,
}

impl WsOutcome {
    /// Whether the proxy stopped the socket (DLP block, protocol error).
    fn stopped(&self) -> bool {
        self.blocked || self.protocol_error.is_some()
    }
}

/// Data frames larger than this (or than `dlp.max_body_bytes`, if smaller)
/// are scanned as they stream rather than held whole. Held frames count
/// against no shared budget (unlike request bodies), and one client
/// connection carries up to 128 WebSockets over HTTP/2: holding up to the
/// cap each let an agent make the proxy hold ~1 MiB per socket, as long as
/// it liked.
const HOLD_MAX: u64 = 16 * 1024;

/// A data frame larger than [`HOLD_MAX`], on its way through.
struct BigFrame<'a> {
    /// Payload bytes not read yet.
    unscanned: u64,
    /// Bytes at the start of the pending buffer scanned but not yet sent.
    ahead: usize,
    /// Payload bytes scanned so far (the mask's phase).
    fed: u64,
    mask: Option<[u8; 4]>,
    scan: StreamScan<'a>,
}

/// A frame header as the agent sent it.
#[derive(Debug)]
struct Head {
    /// Bytes of the header itself (with the mask key).
    len: usize,
    payload: u64,
    mask: Option<[u8; 4]>,
    opcode: u8,
    fin: bool,
    /// RSV1-3: meaningful only with an extension, and none is negotiated
    /// while DLP is on.
    rsv: u8,
}

impl Head {
    /// Continuation, text or binary.
    fn is_data(&self) -> bool {
        self.opcode <= 2
    }

    /// Why the frame breaks RFC 6455 (§5.2, §5.5), if it does. Checked
    /// before anything of it is held or sent: a control frame may carry
    /// at most 125 bytes, so one announcing 2^40 would otherwise be
    /// buffered whole, and its payload would pass unscanned.
    fn violation(&self) -> Option<&'static str> {
        if self.rsv != 0 {
            Some("a frame with RSV bits set, no extension negotiated")
        } else if !matches!(self.opcode, 0..=2 | 8..=10) {
            Some("a frame with a reserved opcode")
        } else if self.mask.is_none() {
            Some("an unmasked frame from the client")
        } else if !self.is_data() && (self.payload > 125 || !self.fin) {
            Some("a control frame longer than 125 bytes or fragmented")
        } else if self.payload >> 63 != 0 {
            Some("a frame length with its top bit set")
        } else {
            None
        }
    }
}

/// Parses a frame header, `None` until all of it has arrived.
fn header(b: &[u8]) -> Option<Head> {
    if b.len() < 2 {
        return None;
    }
    let masked = b[1] & 0x80 != 0;
    let (mut hl, payload) = match b[1] & 0x7f {
        126 => {
            if b.len() < 4 {
                return None;
            }
            (4, u16::from_be_bytes([b[2], b[3]]) as u64)
        }
        127 => {
            if b.len() < 10 {
                return None;
            }
            let mut l = [0u8; 8];
            l.copy_from_slice(&b[2..10]);
            (10, u64::from_be_bytes(l))
        }
        n => (2, n as u64),
    };
    let mask = if masked {
        if b.len() < hl + 4 {
            return None;
        }
        let m = [b[hl], b[hl + 1], b[hl + 2], b[hl + 3]];
        hl += 4;
        Some(m)
    } else {
        None
    };
    Some(Head {
        len: hl,
        payload,
        mask,
        opcode: b[0] & 0x0f,
        fin: b[0] & 0x80 != 0,
        rsv: (b[0] >> 4) & 0x7,
    })
}

fn unmask(payload: &mut [u8], mask: Option<[u8; 4]>, phase: u64) {
    if let Some(m) = mask {
        for (i, x) in payload.iter_mut().enumerate() {
            *x ^= m[((phase + i as u64) % 4) as usize];
        }
    }
}

/// Splices an upgraded WebSocket, scanning the client's frames.
pub(crate) async fn splice_scanned<C, U>(
    client: C,
    upstream: U,
    dlp: Arc<Dlp>,
    idle: Duration,
) -> WsOutcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (client, dog) = crate::proxy::watch(client, idle);
    let (upstream, dog2) = crate::proxy::watch(upstream, idle);
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let state = std::sync::Mutex::new(WsOutcome::default());
    let down = async {
        let n = tokio::io::copy(&mut ur, &mut cw).await.unwrap_or(0);
        let _ = cw.shutdown().await;
        n
    };
    // Records rule ids found in the agent's frames; true when `block` mode
    // must stop the socket before the frame goes.
    let stops = |found: Vec<String>| {
        if found.is_empty() {
            return false;
        }
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        crate::dlp::merge(&mut st.findings, found);
        st.blocked = dlp.mode == DlpMode::Block;
        st.blocked
    };
    // The agent's frames, parsed, unmasked and scanned before they go.
    let up = async {
        let mut pending: Vec<u8> = Vec::with_capacity(16 * 1024);
        let mut prev: Vec<u8> = Vec::new();
        let mut big: Option<BigFrame<'_>> = None;
        let mut buf = vec![0u8; 16 * 1024];
        'outer: loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            state.lock().unwrap_or_else(|p| p.into_inner()).bytes_out += n as u64;
            pending.extend_from_slice(&buf[..n]);
            loop {
                if let Some(b) = big.as_mut() {
                    // A frame too large to hold: its payload is unmasked and
                    // scanned as it arrives; in `block` mode the last
                    // overlap of scanned bytes stays back until the next
                    // piece (or the frame's end) has been scanned with it.
                    let new = (b.unscanned as usize).min(pending.len() - b.ahead);
                    let mut piece = pending[b.ahead..b.ahead + new].to_vec();
                    unmask(&mut piece, b.mask, b.fed);
                    let mut found = Vec::new();
                    b.scan.feed(&piece, &mut found);
                    b.fed += new as u64;
                    b.unscanned -= new as u64;
                    b.ahead += new;
                    if stops(found) {
                        break 'outer;
                    }
                    let send = if b.unscanned == 0 || dlp.mode != DlpMode::Block {
                        b.ahead
                    } else {
                        b.ahead.saturating_sub(dlp.overlap)
                    };
                    if send > 0 {
                        if uw.write_all(&pending[..send]).await.is_err() {
                            break 'outer;
                        }
                        pending.drain(..send);
                        b.ahead -= send;
                    }
                    if b.unscanned == 0 && b.ahead == 0 {
                        if let Some(b) = big.take() {
                            prev = b.scan.into_tail();
                        }
                        continue;
                    }
                    break;
                }
                let Some(h) = header(&pending) else {
                    break;
                };
                if let Some(why) = h.violation() {
                    state
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .protocol_error = Some(why);
                    break 'outer;
                }
                if h.payload > HOLD_MAX.min(dlp.max_body as u64) {
                    // Too large to hold whole (a data frame: a control
                    // frame is at most 125 bytes): the header goes now, the
                    // payload through the stream scan above.
                    if uw.write_all(&pending[..h.len]).await.is_err() {
                        break 'outer;
                    }
                    pending.drain(..h.len);
                    let mut scan = StreamScan::new(&dlp);
                    // Already scanned clean: context for a value split
                    // across the two frames.
                    scan.feed(&prev, &mut Vec::new());
                    big = Some(BigFrame {
                        unscanned: h.payload,
                        ahead: 0,
                        fed: 0,
                        mask: h.mask,
                        scan,
                    });
                    continue;
                }
                // At most HOLD_MAX bytes: no overflow.
                let total = h.len + h.payload as usize;
                if pending.len() < total {
                    break;
                }
                let mut payload = pending[h.len..total].to_vec();
                unmask(&mut payload, h.mask, 0);
                let mut found = Vec::new();
                if h.is_data() {
                    let mut scan = std::mem::take(&mut prev);
                    scan.extend_from_slice(&payload);
                    dlp.scan_body(&scan, None, &mut found);
                    // The tail of what was scanned, not of this payload
                    // alone: a value spread over three frames, the middle
                    // one short, kept only the short one's bytes.
                    let keep = scan.len().min(dlp.overlap);
                    scan.drain(..scan.len() - keep);
                    prev = scan;
                } else {
                    // A ping's or close's few bytes, on their own: they may
                    // come between two pieces of a message, whose context
                    // `prev` keeps.
                    dlp.scan_body(&payload, None, &mut found);
                }
                if stops(found) {
                    break 'outer;
                }
                if uw.write_all(&pending[..total]).await.is_err() {
                    break 'outer;
                }
                pending.drain(..total);
            }
        }
        if !state.lock().unwrap_or_else(|p| p.into_inner()).stopped() {
            let _ = uw.shutdown().await;
        }
    };
    let both = async {
        tokio::pin!(up);
        tokio::pin!(down);
        tokio::select! {
            // The agent closed (or was stopped): let the upstream finish
            // unless the proxy stopped the socket.
            _ = &mut up => {
                if !state.lock().unwrap_or_else(|p| p.into_inner()).stopped() {
                    let i = down.await;
                    state.lock().unwrap_or_else(|p| p.into_inner()).bytes_in = i;
                }
            }
            // The upstream closed: nothing more can be delivered.
            i = &mut down => state.lock().unwrap_or_else(|p| p.into_inner()).bytes_in = i,
        }
    };
    tokio::select! {
        _ = both => {}
        _ = dog => {}
        _ = dog2 => {}
    }
    let out = state.into_inner().unwrap_or_else(|p| p.into_inner());
    let close: Option<(u16, &[u8])> = if out.blocked {
        Some((1008, b"blocked by bot-bottle egress DLP"))
    } else if out.protocol_error.is_some() {
        Some((1002, b"protocol error (bot-bottle egress)"))
    } else {
        None
    };
    if let Some((code, reason)) = close {
        // A close frame to the agent: 1008 policy violation, 1002 protocol
        // error.
        let mut f = vec![0x88, (2 + reason.len()) as u8];
        f.extend_from_slice(&code.to_be_bytes());
        f.extend_from_slice(reason);
        let _ = cw.write_all(&f).await;
        let _ = cw.shutdown().await;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyConfig;

    fn dlp() -> Arc<Dlp> {
        let cfg: ProxyConfig = serde_json::from_value(serde_json::json!({
            "schema": 1, "bottle_id": "b", "ca": {"cert_pem": "", "key_pem": ""},
            "dlp": {"mode": "block"}
        }))
        .unwrap();
        Arc::new(Dlp::new(&cfg).unwrap())
    }

    fn masked_head(len: u64, mask: [u8; 4]) -> Vec<u8> {
        let mut h = vec![0x82, 0x80 | 127];
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&mask);
        h
    }

    /// A frame under the cap but over HOLD_MAX is not held whole: its head
    /// and the scanned start of its payload go on while the rest is still
    /// to come (a socket cannot make the proxy hold a cap's worth), and a
    /// value later in it still stops the socket before it is sent.
    #[tokio::test]
    async fn a_large_frame_under_the_cap_streams_and_is_still_blocked() {
        let (mut agent, client) = tokio::io::duplex(1 << 20);
        let (upstream, mut server) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(splice_scanned(
            client,
            upstream,
            dlp(),
            Duration::from_secs(30),
        ));
        let mask = [1, 2, 3, 4];
        let len = 512 * 1024u64; // half the 1 MiB cap
        agent.write_all(&masked_head(len, mask)).await.unwrap();
        let mut payload = vec![b' '; 64 * 1024];
        payload.extend_from_slice(b"ghp_abcdefghijklmnopqrstuvwxyz0123456789");
        let sent = payload.len();
        unmask(&mut payload, Some(mask), 0);
        agent.write_all(&payload).await.unwrap();
        let mut got = vec![0u8; 32 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), server.read(&mut got))
            .await
            .expect("the frame's start was held back, waiting for all of it")
            .unwrap();
        assert!(n > 0);
        drop(agent);
        let out = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(out.blocked, "{out:?}");
        let mut all = got[..n].to_vec();
        server.read_to_end(&mut all).await.unwrap();
        assert!(all.len() < 10 + 4 + sent, "the value went upstream");
    }
}
