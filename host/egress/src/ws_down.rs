//! The upstream's side of a WebSocket on a route that injects a credential.
//! An echo service, or an error message that quotes the upgrade request,
//! would hand the agent the very token the proxy injected at the upgrade;
//! as in an HTTP response (reflected.rs), every copy of it in a frame's
//! payload is overwritten with `*` of the same length before the agent
//! gets it.
//!
//! The frames are parsed and written out again by the proxy. A data
//! frame's payload goes through a [`Masker`], whose output lags its input
//! where the end of what came could be the start of the token, so each
//! piece the masker lets go is sent as a frame of its own: RFC 6455 §5.4
//! lets an intermediary change a message's fragmentation when it uses no
//! extension, and none is negotiated on such a route (proxy.rs). A message
//! that arrives whole goes on as the same one frame. What the masker holds
//! never waits past its message's last frame, so a protocol of questions
//! and answers never stalls on it (a token split between two messages is
//! not found: docs/egress.md). A control frame, at most 125 bytes, is
//! masked whole and sent at once, between two pieces of a message if that
//! is where it came.

use std::sync::Arc;

use bytes::Bytes;

use crate::reflected::{Masker, Secrets};
use crate::ws::{header, unmask};

/// The frame whose payload is arriving.
struct Frame {
    /// Payload bytes still to come.
    left: u64,
    /// A server must not mask; one that does still has its payload read
    /// (and is sent on unmasked).
    mask: Option<[u8; 4]>,
    /// Payload bytes read so far (the mask's phase).
    phase: u64,
    fin: bool,
    /// Ping, pong or close.
    control: bool,
    /// FIN, RSV and opcode, as it came.
    first: u8,
}

/// The message whose frames are arriving.
struct Message {
    /// RSV bits and opcode of its first frame, for the first frame the
    /// proxy sends of it.
    first: u8,
    /// Whether a frame of it has gone to the agent (the rest are
    /// continuations).
    opened: bool,
}

/// Reads the upstream's frames and writes them for the agent, masked.
pub(crate) struct Reframer {
    secrets: Arc<Secrets>,
    masker: Masker,
    /// Bytes read but not handled yet: at most a frame's header, or a
    /// control frame not all here (a data frame's payload is handled as it
    /// comes).
    pending: Vec<u8>,
    frame: Option<Frame>,
    message: Option<Message>,
    /// Copies masked in control frames (the masker counts the rest).
    masked_control: usize,
}

impl Reframer {
    pub(crate) fn new(secrets: Arc<Secrets>) -> Self {
        Self {
            masker: Masker::new(secrets.clone()),
            secrets,
            pending: Vec::new(),
            frame: None,
            message: None,
            masked_control: 0,
        }
    }

    /// Copies masked so far.
    pub(crate) fn masked(&self) -> usize {
        self.masked_control + self.masker.masked
    }

    /// Handles `input` (what the upstream sent next) and appends to `out`
    /// what may go to the agent now. An error names how the upstream broke
    /// RFC 6455: the proxy cannot tell its frames apart after that.
    pub(crate) fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
        self.pending.extend_from_slice(input);
        let mut at = 0;
        let result = loop {
            if self.frame.is_none() {
                let Some(h) = header(&self.pending[at..]) else {
                    break Ok(());
                };
                let control = !h.is_data();
                if let Err(why) = self.check(&h) {
                    break Err(why);
                }
                if !control && h.opcode != 0 {
                    self.message = Some(Message {
                        first: self.pending[at] & 0x7f,
                        opened: false,
                    });
                }
                self.frame = Some(Frame {
                    left: h.payload,
                    mask: h.mask,
                    phase: 0,
                    fin: h.fin,
                    control,
                    first: self.pending[at],
                });
                at += h.len;
            }
            let Some(f) = self.frame.as_mut() else {
                break Ok(());
            };
            let here = self.pending.len() - at;
            if f.control {
                // At most 125 bytes (checked): taken whole.
                let len = f.left as usize;
                if here < len {
                    break Ok(());
                }
                let mut payload = self.pending[at..at + len].to_vec();
                unmask(&mut payload, f.mask, 0);
                self.masked_control += self.secrets.mask(&mut payload);
                write_frame(f.first, &payload, out);
                at += len;
                self.frame = None;
                continue;
            }
            let take = f.left.min(here as u64) as usize;
            if take == 0 && f.left > 0 {
                break Ok(());
            }
            let mut piece = self.pending[at..at + take].to_vec();
            unmask(&mut piece, f.mask, f.phase);
            f.phase += take as u64;
            f.left -= take as u64;
            at += take;
            let frame_ends = f.left == 0;
            let message_ends = frame_ends && f.fin;
            let mut go = self.masker.feed(Bytes::from(piece));
            if message_ends {
                if let Some(rest) = self.masker.finish() {
                    go = [go, rest].concat().into();
                }
            }
            if let Some(m) = self.message.as_mut() {
                if !go.is_empty() || message_ends {
                    let kind = if m.opened { 0 } else { m.first };
                    let fin = if message_ends { 0x80 } else { 0 };
                    write_frame(fin | kind, &go, out);
                    m.opened = true;
                }
            }
            if message_ends {
                self.message = None;
            }
            if !frame_ends {
                break Ok(());
            }
            self.frame = None;
        };
        self.pending.drain(..at);
        result
    }

    /// Why a frame's header breaks RFC 6455 (§5.2, §5.4, §5.5), if it does.
    fn check(&self, h: &crate::ws::Head) -> Result<(), &'static str> {
        let (opcode, control, fin, len) = (h.opcode, !h.is_data(), h.fin, h.payload);
        if h.rsv != 0 {
            // No extension is negotiated on such a route (proxy.rs takes
            // the offer off), so RSV bits mean one the proxy cannot read:
            // a frame marked compressed (an upstream that answers
            // permessage-deflate unasked, which the agent's client, having
            // offered it, accepts) carried the token deflated past the
            // search, and the agent inflated it. A standard client fails
            // the connection on such a frame anyway.
            Err("a frame with RSV bits set, no extension negotiated")
        } else if !matches!(opcode, 0..=2 | 8..=10) {
            Err("a frame with a reserved opcode")
        } else if control && (len > 125 || !fin) {
            Err("a control frame longer than 125 bytes or fragmented")
        } else if len >> 63 != 0 {
            Err("a frame length with its top bit set")
        } else if opcode == 0 && self.message.is_none() {
            Err("a continuation frame outside a message")
        } else if !control && opcode != 0 && self.message.is_some() {
            Err("a new message before the last one ended")
        } else {
            Ok(())
        }
    }
}

/// Appends an unmasked frame: `first` (FIN, RSV, opcode), the payload's
/// length in the shortest form, the payload.
fn write_frame(first: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(first);
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &[u8] = b"sk-real-0123456789abcdef";

    fn reframer() -> Reframer {
        Reframer::new(Arc::new(Secrets::new([TOKEN])))
    }

    /// A frame as a server sends it.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(first, payload, &mut out);
        out
    }

    /// The messages in `bytes` (frames the proxy sent), each with its
    /// opcode, control frames as messages of their own.
    fn messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut open: Option<(u8, Vec<u8>)> = None;
        while let Some(h) = header(bytes) {
            assert!(h.mask.is_none(), "the proxy sent a masked frame");
            let payload = bytes[h.len..h.len + h.payload as usize].to_vec();
            bytes = &bytes[h.len + h.payload as usize..];
            if !h.is_data() {
                out.push((h.opcode, payload));
                continue;
            }
            let m = open.get_or_insert((h.opcode, Vec::new()));
            m.1.extend(payload);
            if h.fin {
                out.extend(open.take());
            }
        }
        assert!(bytes.is_empty(), "a frame cut short");
        assert!(open.is_none(), "a message left open");
        out
    }

    /// Feeds `pieces` through a reframer: what went out after each.
    fn through(pieces: &[&[u8]]) -> (Vec<Vec<u8>>, usize) {
        let mut r = reframer();
        let outs = pieces
            .iter()
            .map(|p| {
                let mut out = Vec::new();
                r.push(p, &mut out).unwrap();
                out
            })
            .collect();
        (outs, r.masked())
    }

    fn stars() -> Vec<u8> {
        vec![b'*'; TOKEN.len()]
    }

    /// A message without the token goes on byte for byte, as one frame,
    /// at once; one with it goes masked, its length kept.
    #[test]
    fn whole_messages_go_as_they_came_masked() {
        let clean = frame(0x81, br#"{"type":"response.created"}"#);
        let (outs, n) = through(&[&clean]);
        assert_eq!((outs, n), (vec![clean], 0));

        let echo = frame(0x81, &[b"echo: Bearer ", TOKEN, b"!"].concat());
        let (outs, n) = through(&[&echo]);
        assert_eq!(n, 1);
        assert_eq!(
            messages(&outs[0]),
            [(1, [b"echo: Bearer ".as_slice(), &stars(), b"!"].concat())]
        );
        assert_eq!(outs[0].len(), echo.len());
    }

    /// The token split across reads, across frames of a message, or in
    /// one-byte frames, is masked; a ping and a close frame are masked
    /// whole; a ping in the middle of a message goes at once.
    #[test]
    fn a_split_token_and_control_frames_are_masked() {
        let whole = [b"a ", TOKEN, b" b"].concat();
        // One frame, cut into reads anywhere.
        let f = frame(0x82, &whole);
        for cut in 1..f.len() {
            let (outs, n) = through(&[&f[..cut], &f[cut..]]);
            assert_eq!(n, 1, "cut at {cut}");
            let all = outs.concat();
            assert_eq!(
                messages(&all),
                [(2, [b"a ".as_slice(), &stars(), b" b"].concat())]
            );
        }
        // One-byte frames with a ping among them, in one read.
        let mut frames = Vec::new();
        for (i, b) in whole.chunks(1).enumerate() {
            let kind = if i == 0 { 0x1 } else { 0x0 };
            let fin = if i == whole.len() - 1 { 0x80 } else { 0 };
            frames.extend(frame(fin | kind, b));
            if i == 5 {
                frames.extend(frame(0x89, &[b"p ", TOKEN].concat()));
            }
        }
        let (outs, n) = through(&[&frames]);
        assert_eq!(n, 2);
        assert_eq!(
            messages(&outs[0]),
            [
                (9, [b"p ".as_slice(), &stars()].concat()),
                (1, [b"a ".as_slice(), &stars(), b" b"].concat())
            ]
        );
        // A ping after a held start goes before the start is let go.
        let (a, b) = TOKEN.split_at(6);
        let (outs, _) = through(&[
            &frame(0x01, &[b"x ", a].concat()),
            &frame(0x89, b"ping"),
            &frame(0x80, &[b, b" y"].concat()),
        ]);
        assert_eq!(messages(&outs[1]), [(9, b"ping".to_vec())]);
        let close = [&[0x03, 0xe8][..], b"bad token ", TOKEN].concat();
        let (outs, n) = through(&[&frame(0x88, &close)]);
        assert_eq!(n, 1);
        assert!(!outs[0].windows(TOKEN.len()).any(|w| w == TOKEN));
    }

    /// What waits for the next piece is only ever a start of the token, and
    /// never past the message's end: a message ending in one goes whole.
    #[test]
    fn a_held_start_waits_only_within_its_message() {
        let (a, _) = TOKEN.split_at(6);
        let (outs, n) = through(&[&frame(0x81, &[b"ends with ", a].concat())]);
        assert_eq!(n, 0);
        assert_eq!(messages(&outs[0]), [(1, [b"ends with ", a].concat())]);
        // Within a message, the start waits; the text before it does not.
        let (outs, _) = through(&[&frame(0x01, &[b"x ", a].concat())]);
        assert_eq!(outs[0], frame(0x01, b"x "));
    }

    /// A server's masked frame is read and sent unmasked; frames that break
    /// the protocol end the socket.
    #[test]
    fn masked_and_broken_frames() {
        let mask = [1, 2, 3, 4];
        let mut payload = [b"m ", TOKEN].concat();
        unmask(&mut payload, Some(mask), 0);
        let mut f = vec![0x81, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload);
        let (outs, n) = through(&[&f]);
        assert_eq!(n, 1);
        assert_eq!(
            messages(&outs[0]),
            [(1, [b"m ".as_slice(), &stars()].concat())]
        );

        for (bad, why) in [
            (frame(0x83, b""), "reserved opcode"),
            (frame(0x80, b"x"), "continuation frame outside"),
            (frame(0x09, b"x"), "control frame"),
            // RSV1 (compressed), RSV2, RSV3: no extension was negotiated,
            // and what a copy of the token compressed would read as is
            // not searched for.
            (frame(0xc1, b"\x01\x02"), "RSV bits"),
            (frame(0xa2, b"x"), "RSV bits"),
            (frame(0x99, b"x"), "RSV bits"),
            ([frame(0x01, b"x"), frame(0xc0, b"y")].concat(), "RSV bits"),
            (
                [frame(0x01, b"x"), frame(0x81, b"y")].concat(),
                "new message",
            ),
        ] {
            let mut out = Vec::new();
            let e = reframer().push(&bad, &mut out).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
