//! Request bodies on their way through the DLP stage.
//!
//! The start of a body (up to `dlp.max_body_bytes`) is held and scanned
//! before anything is sent ([`buffer_prefix`]). What follows depends on the
//! mode: `log` lets the rest stream unscanned; `block` scans the rest as it
//! streams and holds back the last few hundred bytes of each piece until
//! the next one has been scanned with them ([`ScannedBody`]), so a value
//! split across two pieces is found before any of it is sent. A compressed
//! body cannot be checked piece by piece against what was sent, so `block`
//! holds it whole, up to [`COMPRESSED_HOLD_FACTOR`] times the cap.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::DlpMode;
use crate::dlp::{Decoded, Dlp, COALESCE_BYTES, DECODED_PER_BODY_BYTE};
use crate::upstream::{Body, BoxError};

/// Requests whose prefix may be held at once, at the cap each: the byte
/// budget for held prefixes is this many caps.
pub(crate) const HELD_CAPS: usize = 32;

/// In `block` mode a compressed body is held whole, up to this many times
/// `dlp.max_body_bytes` (a larger one is refused with 413).
pub(crate) const COMPRESSED_HOLD_FACTOR: usize = 8;

/// The byte budget of held prefixes, shared by every request.
pub(crate) fn budget(max_body: usize) -> Arc<Semaphore> {
    let bytes = max_body
        .saturating_mul(HELD_CAPS)
        .clamp(1, Semaphore::MAX_PERMITS);
    Arc::new(Semaphore::new(bytes))
}

/// Why a request with a body is not sent.
#[derive(Debug)]
pub(crate) enum Refused {
    /// No body bytes for the stall time (`408`).
    Stalled,
    /// The client's body failed (`400`).
    Unreadable(BoxError),
    /// `block` mode cannot scan this body whole (`413`/`415`): `why` says
    /// what it is, for the agent.
    Unscannable { status: StatusCode, why: String },
}

/// The DLP stage of a request body: holds and scans its start (rule ids go
/// to `findings`), then returns the body to send — the held frames and the
/// rest, which `block` mode scans as it streams (a match there lands in
/// `blocked`) — and, for the audit line, a note of what was scanned.
pub(crate) async fn hold_and_scan(
    mut body: Body,
    encoding: Option<&str>,
    dlp: &Arc<Dlp>,
    budget: &Arc<Semaphore>,
    stall: Duration,
    findings: &mut Vec<String>,
    blocked: &Blocked,
) -> Result<(Body, Option<String>), Refused> {
    let compressed = encoding.is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"));
    let block = dlp.mode == DlpMode::Block;
    let cap = dlp.max_body;
    // `block` cannot stream-scan a compressed body against what it sends,
    // so it holds one whole (up to a larger limit).
    let limit = if block && compressed {
        cap.saturating_mul(COMPRESSED_HOLD_FACTOR)
    } else {
        cap
    };
    let mut prefix = match buffer_prefix(&mut body, limit, budget, stall).await {
        Ok(p) => p,
        Err(HoldError::Stalled) => return Err(Refused::Stalled),
        Err(HoldError::Body(e)) => return Err(Refused::Unreadable(e)),
    };
    let scanned = prefix.seen.len();
    let seen = std::mem::take(&mut prefix.seen);
    let decoded = scan_prefix(dlp, seen, encoding, compressed, findings).await;
    let whole = prefix.ended && matches!(decoded, Decoded::NotEncoded | Decoded::Whole);
    if block && compressed && !whole && findings.is_empty() {
        let why = match (prefix.ended, decoded) {
            (false, _) => format!("a compressed body over {limit} bytes"),
            (_, Decoded::OverCeiling) => format!(
                "a body that decompresses past {} bytes",
                cap.saturating_mul(DECODED_PER_BODY_BYTE)
            ),
            (_, Decoded::Unknown) => format!("content-encoding {:?}", encoding.unwrap_or("")),
            _ => "a body that does not decode as its content-encoding says".into(),
        };
        let status = match decoded {
            Decoded::Unknown | Decoded::Failed if prefix.ended => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            _ => StatusCode::PAYLOAD_TOO_LARGE,
        };
        return Err(Refused::Unscannable { status, why });
    }
    let note = match (prefix.ended, block) {
        (false, true) => Some(format!(
            "dlp scanned the first {scanned} body bytes, then the rest as it streamed"
        )),
        (false, false) => Some(format!("dlp scanned the first {scanned} body bytes")),
        (true, _) if !whole => Some(format!(
            "dlp could not decode the body ({decoded:?}); its bytes were scanned as sent"
        )),
        (true, _) => None,
    };
    let ended = prefix.ended;
    let mut body = PrefixBody::new(prefix, body).boxed_unsync();
    if block && !ended {
        body = ScannedBody::new(body, dlp.clone(), blocked.clone()).boxed_unsync();
    }
    Ok((body, note))
}

/// Held bytes whose scan may cost more than this many bytes of scanning
/// (a compressed body counts as what it may decode to) are scanned on
/// tokio's blocking pool, not on the worker thread: a body made to be slow
/// to scan (~0.25 s for the worst measured, `bot-bottle-bench-dlp`) would
/// otherwise stall every other connection of that worker. Below it the
/// scan costs less than the hand-off (tens of µs).
const INLINE_SCAN_BYTES: usize = 64 * 1024;

/// [`Dlp::scan_body`] of the held bytes, off the worker thread when it may
/// be long ([`INLINE_SCAN_BYTES`]).
async fn scan_prefix(
    dlp: &Arc<Dlp>,
    seen: Vec<u8>,
    encoding: Option<&str>,
    compressed: bool,
    findings: &mut Vec<String>,
) -> Decoded {
    let work = if compressed {
        seen.len().saturating_mul(DECODED_PER_BODY_BYTE + 1)
    } else {
        seen.len()
    };
    if work <= INLINE_SCAN_BYTES {
        return dlp.scan_body(&seen, encoding, findings);
    }
    // At most one such scan per core at a time, whatever the agent sends:
    // the permit goes with the scan and is returned when it ends, even if
    // the request was dropped meanwhile (a blocking task cannot be stopped),
    // so abandoned requests cannot pile up threads or decoded buffers.
    let slot = scan_slots()
        .clone()
        .acquire_owned()
        .await
        .expect("the scan semaphore is never closed");
    let (dlp, enc) = (dlp.clone(), encoding.map(str::to_owned));
    let scan = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut found = Vec::new();
        let decoded = dlp.scan_body(&seen, enc.as_deref(), &mut found);
        (decoded, found)
    });
    match scan.await {
        Ok((decoded, found)) => {
            crate::dlp::merge(findings, found);
            decoded
        }
        // A panic in the scan ends this request's task as it would have
        // on the worker.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Scans running on the blocking pool, process-wide: one per core.
fn scan_slots() -> &'static Arc<Semaphore> {
    static SLOTS: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| Arc::new(Semaphore::new(crate::workers::per_core())))
}

/// The held start of a body.
struct Prefix {
    pub(crate) frames: VecDeque<Frame<Bytes>>,
    /// The data of `frames`, for the scan.
    pub(crate) seen: Vec<u8>,
    /// Whether the body ended within the prefix.
    pub(crate) ended: bool,
    /// Its share of the budget, returned once the frames are sent.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

/// Why a prefix could not be held.
#[derive(Debug)]
enum HoldError {
    /// No body bytes for `stall` (or no budget for them in that time).
    Stalled,
    /// The client's body failed (reset, bad chunking).
    Body(BoxError),
}

/// Reads frames until `limit` data bytes or the end of the body. The bytes
/// are taken from `budget` first, as much as the body announces it will
/// send (its length, else the limit), in one piece: a request never waits
/// for budget while holding some. A client that has not sent the prefix
/// `stall` after it got the budget gets [`HoldError::Stalled`] and gives
/// the budget back, so stuck uploads cannot hold up everyone else's
/// requests for long — trickling ones neither (a byte a second used to
/// restart the wait each time, and 32 of them held the budget for as long
/// as they liked). The agent's link to the proxy is local: a prefix of
/// `dlp.max_body_bytes` takes it far less.
async fn buffer_prefix(
    body: &mut Body,
    limit: usize,
    budget: &Arc<Semaphore>,
    stall: Duration,
) -> Result<Prefix, HoldError> {
    let announced = body.size_hint().upper().unwrap_or(u64::MAX);
    let want = usize::try_from(announced)
        .unwrap_or(usize::MAX)
        .min(limit)
        .clamp(1, u32::MAX as usize) as u32;
    // Timers only when something has to wait: on the usual path the budget
    // is free and a small body has already arrived with its head.
    let permit = match budget.clone().try_acquire_many_owned(want) {
        Ok(p) => Some(p),
        Err(_) => tokio::time::timeout(stall, budget.clone().acquire_many_owned(want))
            .await
            .map_err(|_| HoldError::Stalled)?
            .ok(),
    };
    // Set at the first wait (no clock read when the body has come whole).
    let mut deadline = None;
    let mut frames = VecDeque::new();
    let mut seen = Vec::new();
    // Data frames are held as one piece, copied out of the frames they came
    // in: a body sent in one-byte chunks (HTTP/1.1) or DATA frames (HTTP/2)
    // held as it came cost ~100 bytes a byte (each frame's own record, and
    // the connection's read buffer each one kept alive), so 1 MiB held took
    // ~100 MB.
    let mut data = BytesMut::new();
    // Whether a frame had more data than the limit left room for.
    let mut cut = false;
    while seen.len() < limit {
        let ready = std::future::poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(f) => Poll::Ready(Some(f)),
            Poll::Pending => Poll::Ready(None),
        })
        .await;
        let next = match ready {
            Some(f) => f,
            None => {
                let d = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + stall);
                tokio::time::timeout_at(d, body.frame())
                    .await
                    .map_err(|_| HoldError::Stalled)?
            }
        };
        match next {
            None => {
                flush(&mut frames, &mut data);
                return Ok(Prefix {
                    frames,
                    seen,
                    ended: true,
                    permit,
                });
            }
            Some(Err(e)) => return Err(HoldError::Body(e)),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => {
                    let room = limit - seen.len();
                    cut |= d.len() > room;
                    seen.extend_from_slice(&d[..d.len().min(room)]);
                    data.extend_from_slice(&d);
                }
                Err(f) => {
                    flush(&mut frames, &mut data);
                    frames.push_back(f);
                }
            },
        }
    }
    flush(&mut frames, &mut data);
    // A body whose last frame passed the limit ended, but not within it.
    let ended = !cut && body.is_end_stream();
    Ok(Prefix {
        frames,
        seen,
        ended,
        permit,
    })
}

/// Queues the data gathered so far as one frame.
fn flush(frames: &mut VecDeque<Frame<Bytes>>, data: &mut BytesMut) {
    if !data.is_empty() {
        frames.push_back(Frame::data(data.split().freeze()));
    }
}

/// Held frames, then the rest of the body.
struct PrefixBody {
    frames: VecDeque<Frame<Bytes>>,
    rest: Option<Body>,
    permit: Option<OwnedSemaphorePermit>,
}

impl PrefixBody {
    fn new(prefix: Prefix, rest: Body) -> Self {
        Self {
            frames: prefix.frames,
            rest: (!prefix.ended).then_some(rest),
            permit: prefix.permit,
        }
    }
}

impl hyper::body::Body for PrefixBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        // Every held frame is on its way: the budget is free again.
        self.permit = None;
        match self.rest.as_mut() {
            Some(r) => Pin::new(r).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }
    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }
    // What is held and what the rest announces: a second hold of this body
    // takes only as much budget as it needs.
    fn size_hint(&self) -> SizeHint {
        let held: u64 = self
            .frames
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        let Some(rest) = self.rest.as_ref().map(|r| r.size_hint()) else {
            return SizeHint::with_exact(held);
        };
        let mut hint = SizeHint::new();
        hint.set_lower(held.saturating_add(rest.lower()));
        if let Some(upper) = rest.upper() {
            hint.set_upper(held.saturating_add(upper));
        }
        hint
    }
}

/// Holds a body whole, up to `limit` bytes, for a check that must read all
/// of it before any of it is sent (a form's `_method` field,
/// [`crate::body_override`]), from the same budget and with the same stall
/// time as the DLP's prefix. Returns the body to send and its bytes, or
/// `None` for them when it is longer than `limit`.
pub(crate) async fn hold_whole(
    mut body: Body,
    limit: usize,
    budget: &Arc<Semaphore>,
    stall: Duration,
) -> Result<(Body, Option<Bytes>), Refused> {
    // A byte more than the limit: a body of exactly `limit` bytes may not
    // say it has ended until it is asked again.
    let over = limit.saturating_add(1);
    let mut prefix = match buffer_prefix(&mut body, over, budget, stall).await {
        Ok(p) => p,
        Err(HoldError::Stalled) => return Err(Refused::Stalled),
        Err(HoldError::Body(e)) => return Err(Refused::Unreadable(e)),
    };
    let whole = (prefix.ended && prefix.seen.len() <= limit)
        .then(|| Bytes::from(std::mem::take(&mut prefix.seen)));
    Ok((PrefixBody::new(prefix, body).boxed_unsync(), whole))
}

/// The rule ids that stopped a body mid-stream, shared with the request
/// handler (which turns the failed upstream request into a 403).
pub(crate) type Blocked = Arc<Mutex<Vec<String>>>;

/// The error a [`ScannedBody`] ends with when a rule matched: the upstream
/// request is abandoned before the matching bytes are sent.
#[derive(Debug, thiserror::Error)]
#[error("blocked by DLP in the request body")]
pub(crate) struct DlpBlocked;

/// A body scanned as it streams (`block` mode past the cap): each piece is
/// scanned together with the bytes held back from the one before, and the
/// last [`Dlp::overlap`] bytes are held back in turn until the next piece
/// (or the end) comes. Pieces shorter than the overlap wait, unscanned,
/// until an overlap's worth has come (or the end): each scan covers the
/// overlap too, and a scan per one-byte HTTP/1.1 chunk (which come one
/// wake-up each, never together) cost ~1000 times the byte (1 MB sent so
/// took 2.7 s of a core).
struct ScannedBody {
    inner: Body,
    dlp: Arc<Dlp>,
    held: BytesMut,
    /// Bytes that came since the last scan.
    unscanned: usize,
    /// Trailers that arrived while bytes were still held.
    trailers: Option<Frame<Bytes>>,
    blocked: Blocked,
    ended: bool,
}

impl ScannedBody {
    fn new(inner: Body, dlp: Arc<Dlp>, blocked: Blocked) -> Self {
        Self {
            inner,
            dlp,
            held: BytesMut::new(),
            unscanned: 0,
            trailers: None,
            blocked,
            ended: false,
        }
    }
}

impl ScannedBody {
    /// Scans what is held and takes out what may go: all but the last
    /// [`Dlp::overlap`] bytes (all at the end). `Err` when a rule matched.
    fn scan_and_take(&mut self) -> Result<Bytes, BoxError> {
        if self.unscanned > 0 {
            self.unscanned = 0;
            let mut found = Vec::new();
            self.dlp.scan_into(&self.held, &mut found);
            if !found.is_empty() {
                tracing::warn!(rules = ?found, "DLP findings in a streamed request body; not sent");
                *self.blocked.lock().unwrap_or_else(|p| p.into_inner()) = found;
                return Err(Box::new(DlpBlocked));
            }
        }
        let keep = if self.ended {
            0
        } else {
            self.held.len().min(self.dlp.overlap)
        };
        Ok(self.held.split_to(self.held.len() - keep).freeze())
    }
}

impl hyper::body::Body for ScannedBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.ended {
                match this.scan_and_take() {
                    Err(e) => return Poll::Ready(Some(Err(e))),
                    Ok(rest) if !rest.is_empty() => {
                        return Poll::Ready(Some(Ok(Frame::data(rest))))
                    }
                    Ok(_) => return Poll::Ready(this.trailers.take().map(Ok)),
                }
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                // Fewer new bytes than a scan's overlap: they wait for more.
                Poll::Pending if this.unscanned < this.dlp.overlap => return Poll::Pending,
                // Nothing more has come: what has is scanned and goes on.
                Poll::Pending => match this.scan_and_take() {
                    Err(e) => return Poll::Ready(Some(Err(e))),
                    Ok(send) if !send.is_empty() => {
                        return Poll::Ready(Some(Ok(Frame::data(send))))
                    }
                    Ok(_) => return Poll::Pending,
                },
                Poll::Ready(None) => this.ended = true,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.held.extend_from_slice(&data);
                        this.unscanned += data.len();
                        // Pieces that have come together are scanned
                        // together, up to a bound: a scan covers the
                        // overlap too, so one per tiny frame cost ~1000
                        // times the frame.
                        if this.held.len() >= COALESCE_BYTES {
                            match this.scan_and_take() {
                                Err(e) => return Poll::Ready(Some(Err(e))),
                                Ok(send) if !send.is_empty() => {
                                    return Poll::Ready(Some(Ok(Frame::data(send))))
                                }
                                Ok(_) => {}
                            }
                        }
                    }
                    Err(trailers) => {
                        this.trailers = Some(trailers);
                        this.ended = true;
                    }
                },
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        self.ended && self.held.is_empty() && self.trailers.is_none()
    }
    fn size_hint(&self) -> SizeHint {
        // The same bytes go out, only regrouped.
        let inner = self.inner.size_hint();
        let held = self.held.len() as u64;
        let mut h = SizeHint::new();
        h.set_lower(inner.lower() + held);
        if let Some(u) = inner.upper() {
            h.set_upper(u + held);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(frames: &[&[u8]]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = frames
            .iter()
            .map(|f| Ok(Frame::data(Bytes::copy_from_slice(f))))
            .collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    fn block_dlp() -> Arc<Dlp> {
        let cfg: crate::config::ProxyConfig = serde_json::from_value(serde_json::json!({
            "schema": 1, "bottle_id": "b", "ca": {"cert_pem": "", "key_pem": ""},
            "dlp": {"mode": "block"}
        }))
        .unwrap();
        Arc::new(Dlp::new(&cfg).unwrap())
    }

    /// Tiny pieces that are ready together are scanned together (each scan
    /// covers the overlap as well, so a scan per byte cost ~1000 times the
    /// byte), and a value split across them is still stopped.
    #[tokio::test]
    async fn a_stream_scan_takes_ready_pieces_together() {
        let text = vec![b'x'; 5000];
        let pieces: Vec<&[u8]> = text.chunks(1).collect();
        let dlp = block_dlp();
        let body = ScannedBody::new(body_of(&pieces), dlp.clone(), Blocked::default());
        let mut body = body.boxed_unsync();
        let mut frames = Vec::new();
        while let Some(f) = body.frame().await {
            frames.push(f.unwrap().into_data().unwrap());
        }
        assert!(frames.len() <= 2, "{} frames", frames.len());
        assert_eq!(frames.concat(), text);
        let (scans, bytes) = dlp.scanned.get();
        assert!(
            scans <= 2 && bytes <= 2 * text.len(),
            "{scans} scans of {bytes} bytes"
        );

        let secret = b"ghp_abcdefghijklmnopqrstuvwxyz0123456789";
        let text = [&[b' '; 3000][..], secret, &[b' '; 3000]].concat();
        let pieces: Vec<&[u8]> = text.chunks(1).collect();
        let blocked = Blocked::default();
        let body = ScannedBody::new(body_of(&pieces), block_dlp(), blocked.clone());
        let got = body.collect().await;
        assert!(got.is_err(), "the value went through");
        assert_eq!(*blocked.lock().unwrap(), ["github-pat"]);
    }

    /// A body is held whole only if all of it fits: one whose last frame
    /// runs past the limit is not (its bytes past the limit were never
    /// read), and either way every byte goes on, in order.
    #[tokio::test]
    async fn a_body_is_whole_only_if_every_byte_fits() {
        let budget = budget(9);
        let stall = Duration::from_secs(5);
        for (frames, whole) in [
            (&[&b"abc"[..], b"defgh"][..], Some(&b"abcdefgh"[..])),
            (&[&b"abc"[..], b"defghi"][..], None),
            (&[&b"abcdefghij"[..]][..], None),
        ] {
            let (sent, held) = hold_whole(body_of(frames), 8, &budget, stall)
                .await
                .unwrap();
            assert_eq!(held.as_deref(), whole, "{frames:?}");
            let all = sent.collect().await.unwrap().to_bytes();
            assert_eq!(all, frames.concat(), "{frames:?}");
        }
        // A body that says it has ended, its one frame past the limit: the
        // DLP's prefix has not seen all of it, and its note must say so.
        let mut full = http_body_util::Full::new(Bytes::from_static(b"abcdefghij"))
            .map_err(|e| match e {})
            .boxed_unsync();
        let prefix = buffer_prefix(&mut full, 8, &budget, stall).await.unwrap();
        assert_eq!(prefix.seen, b"abcdefgh");
        assert!(!prefix.ended, "a cut frame counted as the body's end");
        drop(prefix);
        // Every held byte's budget is back.
        assert_eq!(budget.available_permits(), 9 * HELD_CAPS);
    }

    /// A body sent a byte a frame is held as one piece: each frame held as
    /// it came cost ~100 bytes a byte (1 MiB held in one-byte HTTP/1.1
    /// chunks took ~100 MB of the proxy), far past the budget's count.
    /// Trailers stay after the data, and every byte goes on in order.
    #[tokio::test]
    async fn tiny_frames_are_held_as_one() {
        let budget = budget(1 << 20);
        let stall = Duration::from_secs(5);
        let text: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let pieces: Vec<&[u8]> = text.chunks(1).collect();
        let mut body = body_of(&pieces);
        let prefix = buffer_prefix(&mut body, 1 << 20, &budget, stall)
            .await
            .unwrap();
        assert!(prefix.ended);
        assert_eq!(prefix.frames.len(), 1, "frames held one by one");
        let sent = PrefixBody::new(prefix, body).collect().await.unwrap();
        assert_eq!(sent.to_bytes(), text);

        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-t", http::HeaderValue::from_static("1"));
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = pieces
            .iter()
            .map(|p| Ok(Frame::data(Bytes::copy_from_slice(p))))
            .chain([Ok(Frame::trailers(trailers))])
            .collect();
        let mut body =
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        let prefix = buffer_prefix(&mut body, 1 << 20, &budget, stall)
            .await
            .unwrap();
        assert_eq!(prefix.frames.len(), 2, "frames held one by one");
        let sent = PrefixBody::new(prefix, body).collect().await.unwrap();
        assert!(sent.trailers().is_some());
        assert_eq!(sent.to_bytes(), text);
    }

    /// Pieces that come one at a time (HTTP/1.1 chunks do) are scanned an
    /// overlap's worth at a time, not each with the overlap before it; the
    /// bytes all go on, in order, and a value split across them is still
    /// stopped.
    #[tokio::test]
    async fn a_stream_scan_waits_for_an_overlap_of_lone_pieces() {
        use futures_util::FutureExt;
        let dlp = block_dlp();
        let one_at_a_time = |text: Vec<u8>, blocked: Blocked| {
            let dlp = dlp.clone();
            async move {
                let (tx, rx) =
                    tokio::sync::mpsc::unbounded_channel::<Result<Frame<Bytes>, BoxError>>();
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|f| (f, rx))
                });
                let inner = http_body_util::StreamBody::new(Box::pin(stream)).boxed_unsync();
                let mut body = ScannedBody::new(inner, dlp, blocked).boxed_unsync();
                let (mut out, mut frames, mut failed) = (Vec::new(), 0, false);
                let mut take = |f: Option<Result<Frame<Bytes>, BoxError>>| match f {
                    Some(Ok(f)) => {
                        frames += 1;
                        out.extend_from_slice(&f.into_data().unwrap());
                    }
                    Some(Err(_)) => failed = true,
                    None => {}
                };
                // (A body that failed is polled no more, as hyper does.)
                let mut done = false;
                for b in text.chunks(1) {
                    tx.send(Ok(Frame::data(Bytes::copy_from_slice(b)))).unwrap();
                    // Polled until it waits: the piece came alone.
                    while let (false, Some(f)) = (done, body.frame().now_or_never()) {
                        done = !matches!(f, Some(Ok(_)));
                        take(f);
                    }
                    // (tokio's budget for the channel is per turn of the task.)
                    tokio::task::yield_now().await;
                }
                drop(tx);
                while let (false, Some(f)) = (done, body.frame().await) {
                    done = f.is_err();
                    take(Some(f));
                }
                (out, frames, failed)
            }
        };
        let text = vec![b'x'; 20_000];
        let (out, frames, failed) = one_at_a_time(text.clone(), Blocked::default()).await;
        assert!(!failed);
        assert_eq!(out, text);
        assert!(
            frames <= text.len() / dlp.overlap + 2,
            "{frames} scans of {} lone bytes",
            text.len()
        );

        let secret = b"ghp_abcdefghijklmnopqrstuvwxyz0123456789";
        let text = [&[b' '; 3000][..], secret, &[b' '; 3000]].concat();
        let blocked = Blocked::default();
        let (out, _, failed) = one_at_a_time(text, blocked.clone()).await;
        assert!(failed, "the value went through");
        assert!(!out.windows(secret.len()).any(|w| w == secret));
        assert_eq!(*blocked.lock().unwrap(), ["github-pat"]);
    }
}
