//! DLP on WebSocket traffic from the agent (Codex sends its whole
//! conversation over one). Client frames are parsed, unmasked for the scan
//! and forwarded byte for byte. The upstream's frames are copied untouched,
//! unless the route injected a credential at the upgrade: then they are
//! searched for it (ws_down.rs). Compression extensions are taken off the
//! upgrade request while either is done, so frames are readable.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::DlpMode;
use crate::dlp::{Dlp, StreamScan, COALESCE_BYTES};
use crate::reflected::Secrets;
use crate::ws_down::Reframer;

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
    /// A reload no longer allows the socket: closed with 1012.
    pub(crate) revoked: bool,
    /// Copies of the route's credential masked in the upstream's frames.
    pub(crate) masked: usize,
    /// How the upstream's frames broke RFC 6455: the socket was closed
    /// with 1002 there.
    pub(crate) upstream_error: Option<&'static str>,
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

/// A frame header as it came (from the agent, or the upstream: ws_down.rs).
#[derive(Debug)]
pub(crate) struct Head {
    /// Bytes of the header itself (with the mask key).
    pub(crate) len: usize,
    pub(crate) payload: u64,
    pub(crate) mask: Option<[u8; 4]>,
    pub(crate) opcode: u8,
    pub(crate) fin: bool,
    /// RSV1-3: meaningful only with an extension, and none is negotiated
    /// while DLP is on.
    pub(crate) rsv: u8,
}

impl Head {
    /// Continuation, text or binary.
    pub(crate) fn is_data(&self) -> bool {
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
pub(crate) fn header(b: &[u8]) -> Option<Head> {
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

pub(crate) fn unmask(payload: &mut [u8], mask: Option<[u8; 4]>, phase: u64) {
    if let Some(m) = mask {
        for (i, x) in payload.iter_mut().enumerate() {
            *x ^= m[((phase + i as u64) % 4) as usize];
        }
    }
}

/// A whole frame small enough to hold, still in the pending bytes.
struct Held {
    /// Where the frame starts in the pending bytes.
    at: usize,
    head: Head,
}

impl Held {
    /// Where its payload lies in the pending bytes.
    fn payload(&self) -> std::ops::Range<usize> {
        // At most the hold size: no overflow.
        self.at + self.head.len..self.end()
    }

    /// Just past its last byte.
    fn end(&self) -> usize {
        self.at + self.head.len + self.head.payload as usize
    }
}

/// The frames at the start of `pending` that have arrived whole and may be
/// held (a payload of at most `hold` bytes), in order, to be scanned and
/// sent together: one scan for many tiny frames instead of one each (a
/// scan covers the overlap too, so one per one-byte frame cost ~1000
/// times the frame). Stops before a frame not all here yet, a larger one
/// (it streams, see [`BigFrame`]) and one that breaks RFC 6455 (the caller
/// meets it next, on its own, after the frames before it have gone as
/// they always did), and at [`COALESCE_BYTES`] of payload, always taking
/// the first frame if it is whole. Reads of 16 KiB do not reach that
/// bound today; it keeps a scan short should they grow.
fn whole_small_frames(pending: &[u8], hold: u64) -> Vec<Held> {
    let mut frames = Vec::new();
    let mut at = 0;
    let mut payload = 0;
    while let Some(head) = header(&pending[at..]) {
        if head.violation().is_some() || head.payload > hold {
            break;
        }
        let len = head.payload as usize;
        let frame = Held { at, head };
        if frame.end() > pending.len() || (!frames.is_empty() && payload + len > COALESCE_BYTES) {
            break;
        }
        payload += len;
        at = frame.end();
        frames.push(frame);
    }
    frames
}

/// Scans held frames, their payloads unmasked, and returns the rule ids
/// found. The data frames' payloads are joined after `prev` (the last
/// bytes scanned before) into one text, scanned once: a value split across
/// frames, across reads or across a ping between two pieces of a message
/// is found as the server will put it together. A control frame's few
/// bytes are scanned on their own, as they always were: they are not part
/// of the message around them, and kept out of the text, a ping between
/// two pieces of a value does not hide it. `prev` becomes the last
/// `dlp.overlap` bytes of the text.
fn scan_held(dlp: &Dlp, pending: &[u8], frames: &[Held], prev: &mut Vec<u8>) -> Vec<String> {
    let mut found = Vec::new();
    let mut text = std::mem::take(prev);
    let before = text.len();
    for f in frames {
        if f.head.is_data() {
            let start = text.len();
            text.extend_from_slice(&pending[f.payload()]);
            unmask(&mut text[start..], f.head.mask, 0);
        } else {
            let mut payload = pending[f.payload()].to_vec();
            unmask(&mut payload, f.head.mask, 0);
            dlp.scan_body(&payload, None, &mut found);
        }
    }
    // No data bytes in the batch (control frames, empty data frames):
    // `prev` alone was scanned already.
    if text.len() > before {
        dlp.scan_body(&text, None, &mut found);
    }
    // The tail of the whole text, not of the last payload alone: a value
    // spread over several frames, the last ones short, needs them all. A
    // copy, so the batch's buffer (up to COALESCE_BYTES) is not kept for
    // as long as the socket stays open.
    *prev = text[text.len() - text.len().min(dlp.overlap)..].to_vec();
    found
}

/// Writes `bytes` and flushes them. A TLS stream's `poll_write` takes
/// the bytes and returns while its socket is full, keeping what the
/// socket would not take until it is written to or flushed again: without
/// the flush, the end of a message waited there until the next one (or
/// the idle timeout), and a protocol of questions and answers stalled.
async fn write_flushed<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    w.write_all(bytes).await?;
    w.flush().await
}

/// Splices an upgraded WebSocket, scanning the client's frames with `dlp`
/// and masking `secrets` in the upstream's (each only if given).
pub(crate) async fn splice_scanned<C, U>(
    client: C,
    upstream: U,
    dlp: Option<Arc<Dlp>>,
    secrets: Option<Arc<Secrets>>,
    idle: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> WsOutcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (client, dog) = crate::tunnel::watch(client, idle);
    let (upstream, dog2) = crate::tunnel::watch(upstream, idle);
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let state = std::sync::Mutex::new(WsOutcome::default());
    let down = async {
        let Some(secrets) = secrets else {
            let n = tokio::io::copy(&mut ur, &mut cw).await.unwrap_or(0);
            let _ = cw.shutdown().await;
            return n;
        };
        let mut frames = Reframer::new(secrets);
        let mut buf = vec![0u8; 16 * 1024];
        let mut out = Vec::with_capacity(16 * 1024);
        let mut n = 0u64;
        let mut counted = 0;
        let broke = loop {
            let got = match ur.read(&mut buf).await {
                Ok(0) | Err(_) => break None,
                Ok(got) => got,
            };
            n += got as u64;
            out.clear();
            let pushed = frames.push(&buf[..got], &mut out);
            // Counted as they come, before the write: the splice can be
            // ended before this loop is (a reload, the idle timeout, the
            // agent stopped by DLP), and its audit line must still say what
            // the upstream sent back.
            if frames.masked() != counted {
                counted = frames.masked();
                state.lock().unwrap_or_else(|p| p.into_inner()).masked = counted;
            }
            if write_flushed(&mut cw, &out).await.is_err() {
                break None;
            }
            if let Err(why) = pushed {
                break Some(why);
            }
        };
        {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            st.upstream_error = broke;
        }
        // Not closed here when the upstream broke the protocol: the close
        // frame saying so goes first (below).
        if broke.is_none() {
            let _ = cw.shutdown().await;
        }
        n
    };
    // Records rule ids found in the agent's frames; true when `block` mode
    // must stop the socket before the frames scanned go.
    let stops = |found: Vec<String>| {
        if found.is_empty() {
            return false;
        }
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        crate::dlp::merge(&mut st.findings, found);
        st.blocked = dlp.as_ref().is_some_and(|d| d.mode == DlpMode::Block);
        st.blocked
    };
    // The agent's frames, parsed, unmasked and scanned before they go.
    let up = async {
        let Some(dlp) = dlp.as_deref() else {
            let n = tokio::io::copy(&mut cr, &mut uw).await.unwrap_or(0);
            state.lock().unwrap_or_else(|p| p.into_inner()).bytes_out = n;
            let _ = uw.shutdown().await;
            return;
        };
        let mut pending: Vec<u8> = Vec::with_capacity(16 * 1024);
        let mut prev: Vec<u8> = Vec::new();
        let mut big: Option<BigFrame<'_>> = None;
        let mut buf = vec![0u8; 16 * 1024];
        // Frames with a payload up to this are held whole and scanned
        // before any of them goes; larger ones stream.
        let hold = HOLD_MAX.min(dlp.max_body as u64);
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
                        if write_flushed(&mut uw, &pending[..send]).await.is_err() {
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
                // A frame that breaks the protocol stops the socket here,
                // before any of it is held or sent; the whole small frames
                // before it went on in the batch before, as they did when
                // frames went one at a time.
                if let Some(why) = h.violation() {
                    state
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .protocol_error = Some(why);
                    break 'outer;
                }
                if h.payload > hold {
                    // Too large to hold whole (a data frame: a control
                    // frame is at most 125 bytes): the header goes now, the
                    // payload through the stream scan above.
                    if uw.write_all(&pending[..h.len]).await.is_err() {
                        break 'outer;
                    }
                    pending.drain(..h.len);
                    let mut scan = StreamScan::new(dlp);
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
                // A small frame: it and the whole small frames after it
                // are scanned together, then sent together.
                let frames = whole_small_frames(&pending, hold);
                let Some(last) = frames.last() else {
                    // Not all of it here yet.
                    break;
                };
                let end = last.end();
                // In `block` mode nothing of the batch goes before all of
                // it has been scanned, so a value in its last frame stops
                // the socket before its first frame is sent, although that
                // one was clean. Stricter than a frame at a time, and it
                // takes nothing the upstream had: the frames all became
                // whole in this read, none of them had gone yet.
                if stops(scan_held(dlp, &pending, &frames, &mut prev)) {
                    break 'outer;
                }
                if write_flushed(&mut uw, &pending[..end]).await.is_err() {
                    break 'outer;
                }
                pending.drain(..end);
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
    let revoked = tokio::select! {
        _ = both => false,
        _ = dog => false,
        _ = dog2 => false,
        _ = stop => true,
    };
    let mut out = state.into_inner().unwrap_or_else(|p| p.into_inner());
    out.revoked = revoked;
    let close: Option<(u16, &[u8])> = if out.blocked {
        Some((1008, b"blocked by bot-bottle egress DLP"))
    } else if revoked {
        // Service Restart: a client may connect again, under the new config.
        Some((1012, b"bot-bottle egress config reloaded"))
    } else if out.protocol_error.is_some() {
        Some((1002, b"protocol error (bot-bottle egress)"))
    } else if out.upstream_error.is_some() {
        Some((1002, b"upstream protocol error (bot-bottle egress)"))
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

    /// A splice under test: the agent's end, the upstream's end, and the
    /// task that ends with what the splice saw.
    fn spliced(
        dlp: Arc<Dlp>,
    ) -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<WsOutcome>,
    ) {
        let (agent, client) = tokio::io::duplex(1 << 20);
        let (upstream, server) = tokio::io::duplex(1 << 20);
        let task = tokio::spawn(splice_scanned(
            client,
            upstream,
            Some(dlp),
            None,
            Duration::from_secs(30),
            std::future::pending(),
        ));
        (agent, server, task)
    }

    const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x81];
    /// First header bytes: FIN and opcode.
    const TEXT: u8 = 0x81;
    const PING: u8 = 0x89;

    /// A frame as the agent sends it: `first` header byte, the payload
    /// masked with [`MASK`].
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![first];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n => {
                f.push(0x80 | 126);
                f.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
            }
        }
        f.extend_from_slice(&MASK);
        let mut p = payload.to_vec();
        unmask(&mut p, Some(MASK), 0);
        f.extend(p);
        f
    }

    /// `text` as a fragmented text message's frames, a byte each: the
    /// message's start if `opens`, its end (FIN) if `closes`.
    fn one_byte_frames(text: &[u8], opens: bool, closes: bool) -> Vec<u8> {
        let last = text.len() - 1;
        let mut out = Vec::new();
        for (i, b) in text.chunks(1).enumerate() {
            let opcode = if i == 0 && opens { 0x1 } else { 0x0 };
            let fin = if i == last && closes { 0x80 } else { 0 };
            out.extend(frame(fin | opcode, b));
        }
        out
    }

    const SECRET: &[u8] = b"ghp_abcdefghijklmnopqrstuvwxyz0123456789";

    /// Sends `sent` through [`splice_scanned`] in one write and closes:
    /// what it saw and what reached the upstream.
    async fn send_through(dlp: Arc<Dlp>, sent: &[u8]) -> (WsOutcome, Vec<u8>) {
        let (mut agent, server, task) = spliced(dlp);
        agent.write_all(sent).await.unwrap();
        close_and_collect(agent, server, task).await
    }

    /// Closes the agent's end: what the splice saw, and what the upstream
    /// got from then on.
    async fn close_and_collect(
        agent: tokio::io::DuplexStream,
        mut server: tokio::io::DuplexStream,
        task: tokio::task::JoinHandle<WsOutcome>,
    ) -> (WsOutcome, Vec<u8>) {
        drop(agent);
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), server.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        drop(server);
        let out = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        (out, got)
    }

    /// 5000 one-byte frames sent at once cost a few scans, not 5000 (each
    /// scan covers the overlap kept from the one before too, so a scan per
    /// frame cost ~1000 times what the agent sent), and go on byte for
    /// byte.
    #[tokio::test]
    async fn tiny_frames_that_come_together_are_scanned_together() {
        let dlp = dlp();
        let sent = frame(TEXT, b"x").repeat(5000);
        let (out, got) = send_through(dlp.clone(), &sent).await;
        assert!(!out.stopped() && out.findings.is_empty(), "{out:?}");
        assert!(got == sent, "the upstream got other bytes than were sent");
        let (scans, bytes) = dlp.scanned.get();
        assert!(
            scans <= 10 && bytes <= 3 * 5000,
            "{scans} scans of {bytes} bytes"
        );
    }

    /// A value spread over one-byte frames of a message, a ping in the
    /// middle of it, is found in their joined payloads (the ping's bytes do
    /// not cut it in two), and none of the frames goes, not even the clean
    /// ones before it.
    #[tokio::test]
    async fn a_value_in_tiny_frames_around_a_ping_stops_them_all() {
        let (head, tail) = SECRET.split_at(20);
        let sent = [
            one_byte_frames(&[b"token: ", head].concat(), true, false),
            frame(PING, b"still there?"),
            one_byte_frames(&[tail, b" end"].concat(), false, true),
        ]
        .concat();
        let (out, got) = send_through(dlp(), &sent).await;
        assert!(out.blocked, "{out:?}");
        assert_eq!(out.findings, ["github-pat"]);
        assert!(got.is_empty(), "{} bytes went upstream", got.len());
    }

    /// A control frame's payload is scanned on its own: a value in a ping
    /// is found, and a ping's bytes do not join the message around it (a
    /// value half in a data frame, half in a ping, is none to the server).
    #[tokio::test]
    async fn a_ping_is_scanned_on_its_own() {
        let (head, tail) = SECRET.split_at(20);
        let sent = [
            frame(TEXT, &[b"x ", head].concat()),
            frame(PING, tail),
            frame(TEXT, b" y"),
        ]
        .concat();
        let (out, got) = send_through(dlp(), &sent).await;
        assert!(!out.stopped() && out.findings.is_empty(), "{out:?}");
        assert!(got == sent);

        let sent = [frame(TEXT, b"hello"), frame(PING, SECRET)].concat();
        let (out, got) = send_through(dlp(), &sent).await;
        assert!(out.blocked, "{out:?}");
        assert!(got.is_empty(), "{} bytes went upstream", got.len());
    }

    /// A value split across two reads (two batches) is found: the end of
    /// the first batch's text is the context of the second's scan. The
    /// first half went on (it was clean on its own); the second does not.
    #[tokio::test]
    async fn a_value_split_across_two_reads_is_found() {
        let (mut agent, mut server, task) = spliced(dlp());
        let (head, tail) = SECRET.split_at(20);
        let first = one_byte_frames(&[b"token: ", head].concat(), true, false);
        agent.write_all(&first).await.unwrap();
        let mut got = vec![0u8; first.len()];
        tokio::time::timeout(Duration::from_secs(5), server.read_exact(&mut got))
            .await
            .expect("the first half was held back")
            .unwrap();
        assert!(got == first);
        agent
            .write_all(&one_byte_frames(&[tail, b" end"].concat(), false, true))
            .await
            .unwrap();
        let (out, rest) = close_and_collect(agent, server, task).await;
        assert!(out.blocked, "{out:?}");
        assert!(rest.is_empty(), "{} bytes went upstream", rest.len());
    }

    /// A batch ends before a frame not all here yet, one too large to hold
    /// (it streams), one that breaks RFC 6455 (which then closes the socket
    /// with 1002 after the frames before it went), and at COALESCE_BYTES
    /// of payload.
    #[tokio::test]
    async fn a_batch_ends_where_a_frame_cannot_join_it() {
        let ends = |pending: &[u8]| -> Vec<usize> {
            let frames = whole_small_frames(pending, HOLD_MAX);
            frames.iter().map(Held::end).collect()
        };
        let small = frame(TEXT, b"ab");
        assert_eq!(small.len(), 8);
        let two = small.repeat(2);
        assert_eq!(ends(&two), [8, 16]);
        assert_eq!(ends(&two[..15]), [8]);
        assert_eq!(ends(&two[..7]), [0usize; 0]);
        let big = [small.clone(), masked_head(HOLD_MAX + 1, MASK)].concat();
        assert_eq!(ends(&big), [8]);
        let full = frame(TEXT, &vec![b'x'; HOLD_MAX as usize]);
        assert_eq!(
            ends(&full.repeat(5)).len(),
            COALESCE_BYTES / HOLD_MAX as usize
        );

        let reserved = frame(0x83, b"");
        let broken = [small.clone(), reserved, small.clone()].concat();
        assert_eq!(ends(&broken), [8]);
        let (out, got) = send_through(dlp(), &broken).await;
        assert!(out.protocol_error.is_some(), "{out:?}");
        assert!(got == small);
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
        let (mut agent, mut server, task) = spliced(dlp());
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

    /// What the splice writes reaches the other end although nothing more
    /// comes after it: each write is flushed. A TLS stream is such an end
    /// when its socket is full: its `poll_write` takes the bytes and
    /// returns, keeping what the socket would not take until it is written
    /// to or flushed again, so the end of an answer (the upstream's,
    /// masked; the agent's, scanned) waited there until the next message
    /// or the idle timeout. `BufWriter` keeps bytes the same way.
    #[tokio::test]
    async fn what_goes_either_way_is_flushed() {
        let secrets = Arc::new(Secrets::new([&b"sk-real-0123456789abcdef"[..]]));
        let (mut agent, client) = tokio::io::duplex(1 << 20);
        let (upstream, mut server) = tokio::io::duplex(1 << 20);
        let _task = tokio::spawn(splice_scanned(
            tokio::io::BufWriter::new(client),
            tokio::io::BufWriter::new(upstream),
            Some(dlp()),
            Some(secrets),
            Duration::from_secs(30),
            std::future::pending(),
        ));
        // The upstream's answer, unmasked as servers send it.
        let answer = [0x81, 5, b'h', b'e', b'l', b'l', b'o'];
        server.write_all(&answer).await.unwrap();
        let mut got = [0u8; 7];
        tokio::time::timeout(Duration::from_secs(5), agent.read_exact(&mut got))
            .await
            .expect("the upstream's message waited in the agent's writer")
            .unwrap();
        assert_eq!(got, answer);
        let question = frame(TEXT, b"hello");
        agent.write_all(&question).await.unwrap();
        let mut got = vec![0u8; question.len()];
        tokio::time::timeout(Duration::from_secs(5), server.read_exact(&mut got))
            .await
            .expect("the agent's message waited in the upstream's writer")
            .unwrap();
        assert_eq!(got, question);
    }

    /// The copies masked are counted although the splice ends before the
    /// upstream does (a reload, the idle timeout, the agent stopped by
    /// DLP): the audit line said nothing was masked.
    #[tokio::test]
    async fn copies_masked_are_counted_when_the_splice_is_stopped() {
        const TOKEN: &[u8] = b"sk-real-0123456789abcdef";
        let secrets = Arc::new(Secrets::new([TOKEN]));
        let (mut agent, client) = tokio::io::duplex(1 << 20);
        let (upstream, mut server) = tokio::io::duplex(1 << 20);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(splice_scanned(
            client,
            upstream,
            None,
            Some(secrets),
            Duration::from_secs(30),
            async {
                let _ = stopped.await;
            },
        ));
        let mut echo = vec![0x81, 2 + TOKEN.len() as u8, b'>', b' '];
        echo.extend_from_slice(TOKEN);
        server.write_all(&echo).await.unwrap();
        let mut got = vec![0u8; echo.len()];
        tokio::time::timeout(Duration::from_secs(5), agent.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert!(!got.windows(TOKEN.len()).any(|w| w == TOKEN));
        stop.send(()).unwrap();
        let out = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(out.revoked);
        assert_eq!(out.masked, 1, "{out:?}");
    }
}
