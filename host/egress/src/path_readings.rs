//! The readings of a request path that a route's path prefix must hold
//! for.
//!
//! Servers disagree on what a path means: how often they percent-decode,
//! whether `\\` and `%2F` separate segments, whether `;params` count,
//! whether they fold look-alike characters (IIS `%u`, overlong UTF-8, NFKC,
//! Windows best-fit). A prefix that held for one reading only would let the
//! agent reach, with the route's credential, a path the server reads as
//! outside it. So [`prefix_holds`] asks it of every reading here, and the
//! allow-list ([`crate::route`]) asks nothing else about paths.

use unicode_normalization::UnicodeNormalization;

/// The path as the allow-list sees it: percent-escapes decoded, again and
/// again until none is left that decodes, up to nine passes (as a server
/// that decodes twice would: `%252e` and `%25%32%65` are `.`), `\` as `/`, `.` and `..`
/// resolved, doubled slashes collapsed, no query. Stricter than most
/// servers, so a path that escapes a prefix here escapes it there too. The
/// other way round — a path this view moves *into* a prefix, such as
/// `/admin/../v1` — is why a prefix must also hold for the path as sent
/// (`match_route` in [`crate::route`]).
pub fn normalise_path(raw: &str) -> String {
    resolve_segments(&decoded_text(raw, 0))
}

/// The lenient steps some servers take besides percent-decoding, as bits of
/// a mix ([`lenient_readings`]).
const IIS_U: u8 = 1;
const OVERLONG: u8 = 2;
const NFKC: u8 = 4;
const BEST_FIT: u8 = 8;

/// A lenient reading that grows past this (NFKC expands some characters
/// elevenfold) is refused on prefix routes rather than read further.
const EXPANDED_LIMIT: usize = 2 * MAX_LENIENT_PATH;

/// Paths longer than this with an escape, a `\\`, a `;` or non-ASCII are
/// refused on prefix routes rather than read every way ([`prefix_holds`]:
/// a 60 KiB crafted path cost ~0.4 s in a debug build; API paths are short).
pub(crate) const MAX_LENIENT_PATH: usize = 8 * 1024;

/// How servers that decode more than percent-escapes read the path: IIS's
/// `%u002e`, overlong UTF-8 (`%c0%ae` is `.` to a lenient decoder), NFKC
/// (`%ef%bc%8e`, a full-width dot, is `.` to a server that normalises
/// Unicode) and the best-fit tables of Windows code pages (`¥` and `₩` are
/// `\` under the Japanese and Korean ones, `／` and `∕` are `/`). Servers
/// take any mix of these steps (IIS decodes `%u` but folds no full-width
/// slash; a framework may apply NFKC and no best-fit table), and a step may
/// come before a further decoding pass (NFKC turns `%２ｅ` into `%2e`), so
/// each of the fifteen mixes is read, decoding and the mix's steps repeated
/// until nothing changes, and each reading also with `;parameters`
/// stripped. A route's path prefix must hold for every one of them.
/// `None` when no step changes anything (every reading is
/// [`normalise_path`]'s); `Some(vec![])`, which no prefix holds for, when a
/// reading grows past [`EXPANDED_LIMIT`]. The caller has already refused
/// paths longer than [`MAX_LENIENT_PATH`].
pub(crate) fn lenient_readings(raw: &str) -> Option<Vec<String>> {
    let raw = raw.split(['?', '#']).next().unwrap_or("");
    if !raw.contains('%') && raw.is_ascii() {
        return None;
    }
    let strict = decoded_text(raw, 0);
    let mut out = Vec::new();
    for mix in 1..16u8 {
        let text = decoded_text(raw, mix);
        if text == strict {
            continue;
        }
        if text.len() > EXPANDED_LIMIT {
            return Some(Vec::new());
        }
        out.push(resolve_segments(&strip_params(&text)));
        out.push(resolve_segments(&text));
    }
    (!out.is_empty()).then_some(out)
}

/// The path's text once decoded: percent-escapes again and again until none
/// is left that decodes, up to nine passes, `\` and `%5c` as `/`, no query.
/// With a `mix` of lenient steps ([`lenient_readings`]), each pass also
/// takes those steps.
fn decoded_text(raw: &str, mix: u8) -> String {
    let raw = raw.split(['?', '#']).next().unwrap_or("");
    let mut decoded = lenient_pass(decode_once(raw.as_bytes(), mix & IIS_U != 0), mix);
    // Each pass that changes something makes the path shorter, but a chain
    // `%252525…` loses one level a pass: without a bound, 64 KiB of it took
    // 3.5 s. No server decodes a path more than a few times.
    for _ in 0..MAX_DECODES {
        // NFKC can grow text elevenfold (U+FDFA): past this, stop and let
        // the caller refuse rather than normalise it nine more times.
        if !decoded.contains(&b'%') || decoded.len() > EXPANDED_LIMIT {
            break;
        }
        let again = lenient_pass(decode_once(&decoded, mix & IIS_U != 0), mix);
        if again == decoded {
            break;
        }
        decoded = again;
    }
    // A decoded byte that is not UTF-8 reads as U+FFFD, the same way on the
    // prefix's side.
    String::from_utf8_lossy(&decoded).into_owned()
}

/// The steps of `mix` after a percent-decoding pass: overlong forms folded,
/// NFKC, best-fit; `\` as `/` whatever made it.
fn lenient_pass(b: Vec<u8>, mix: u8) -> Vec<u8> {
    if mix & (OVERLONG | NFKC | BEST_FIT) == 0 || b.is_ascii() {
        return b;
    }
    let b = if mix & OVERLONG != 0 {
        fold_overlong(&b)
    } else {
        b
    };
    // A byte that is not UTF-8 is U+FFFD to a server that decodes lossily,
    // which then normalises the rest all the same.
    let text = String::from_utf8_lossy(&b);
    let text: &str = &text;
    let text: String = if mix & NFKC != 0 {
        text.nfkc().collect()
    } else {
        text.to_owned()
    };
    let text: String = if mix & BEST_FIT != 0 {
        text.chars().map(best_fit).collect()
    } else {
        text
    };
    text.replace('\\', "/").into_bytes()
}

/// `.` and `..` resolved, doubled slashes collapsed, a trailing slash kept.
fn resolve_segments(decoded: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        // `%2e` is a dot in a dot segment to WHATWG URL parsers, whatever
        // else they leave encoded.
        let dots = seg.len() <= 6 && seg.to_ascii_lowercase().replace("%2e", ".") == "..";
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ if dots => {
                out.pop();
            }
            _ if seg.eq_ignore_ascii_case("%2e") => {}
            s => out.push(s),
        }
    }
    let mut p = String::from("/");
    p.push_str(&out.join("/"));
    if decoded.ends_with('/') && p.len() > 1 {
        p.push('/');
    }
    p
}

/// Overlong UTF-8 forms of ASCII characters (`C0 AE` for `.`, `E0 80 AF`
/// for `/`) as the character: strict decoders reject them, lenient ones
/// (the cause of many a path traversal) read them so. Other bytes are kept.
fn fold_overlong(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let n = b[i].leading_ones() as usize;
        let tail = b.get(i + 1..i + n.max(1));
        if (2..=6).contains(&n) {
            if let Some(tail) = tail.filter(|t| t.iter().all(|c| c & 0xC0 == 0x80)) {
                let cp = tail.iter().fold(u32::from(b[i] & (0x7F >> n)), |cp, c| {
                    cp << 6 | u32::from(c & 0x3F)
                });
                if cp < 0x80 {
                    // A `\\` among them becomes `/` with the rest of the
                    // pass ([`lenient_pass`]).
                    out.push(cp as u8);
                    i += n;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Characters the best-fit tables of Windows' ANSI code pages turn into a
/// separator, a dot or a `%`: the yen and won signs (`\` under the Japanese
/// and Korean code pages) and slash and backslash look-alikes (division
/// slash, set minus, fraction slash, the solidus operators), which NFKC
/// leaves alone; and the full-width and small forms, which a best-fit table
/// maps without NFKC.
fn best_fit(c: char) -> char {
    match c {
        '\u{a5}' | '\u{20a9}' | '\u{2215}' | '\u{2216}' | '\u{2044}' | '\u{29f5}' | '\u{29f8}' => {
            '/'
        }
        // Full-width and small forms, which best-fit maps without NFKC.
        '\u{ffe5}' | '\u{ffe6}' | '\u{ff0f}' | '\u{ff3c}' | '\u{fe68}' => '/',
        '\u{ff0e}' | '\u{fe52}' => '.',
        '\u{ff05}' | '\u{fe6a}' => '%',
        c => c,
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decoding passes of [`normalise_path`] after the first, at most.
const MAX_DECODES: usize = 8;

/// One pass of percent-decoding, with `\` as `/` (IIS and ASP.NET read
/// `%5c` and `\` as a separator). With `lenient`, IIS's `%uXXXX` too.
fn decode_once(b: &[u8], lenient: bool) -> Vec<u8> {
    decode_with(b, lenient, true, true)
}

/// One pass of percent-decoding: IIS's `%uXXXX` too with `iis_u`, `%2F`
/// left encoded unless `slash`, `\` (as sent or decoded) as `/` with
/// `backslash`.
fn decode_with(b: &[u8], iis_u: bool, slash: bool, backslash: bool) -> Vec<u8> {
    let sep = |c: u8| if backslash && c == b'\\' { b'/' } else { c };
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let c = h << 4 | l;
                if c != b'/' || slash {
                    out.push(sep(c));
                    i += 3;
                    continue;
                }
            }
            if let Some(c) = iis_u.then(|| iis_escape(&b[i + 1..])).flatten() {
                let c = if backslash && c == '\\' { '/' } else { c };
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                i += 6;
                continue;
            }
        }
        out.push(sep(b[i]));
        i += 1;
    }
    out
}

/// `s` percent-decoded once, as a framework reads a query parameter's name
/// or value (`%5Fmethod` is `_method`).
pub(crate) fn percent_decoded(s: &str) -> String {
    String::from_utf8_lossy(&percent_decoded_bytes(s.as_bytes())).into_owned()
}

/// One pass of plain percent-decoding of bytes (`%XX` only).
pub(crate) fn percent_decoded_bytes(b: &[u8]) -> Vec<u8> {
    decode_with(b, false, true, false)
}

/// The character of IIS's `%uXXXX` escape (`rest` follows the `%`): a
/// UTF-16 unit, a lone surrogate read as U+FFFD.
fn iis_escape(rest: &[u8]) -> Option<char> {
    let (u, digits) = (rest.first()?, rest.get(1..5)?);
    if !u.eq_ignore_ascii_case(&b'u') {
        return None;
    }
    let unit = digits
        .iter()
        .try_fold(0u32, |v, &d| Some(v << 4 | u32::from(hex(d)?)))?;
    Some(char::from_u32(unit).unwrap_or(char::REPLACEMENT_CHARACTER))
}

/// `s` with the hex digits of its escapes in upper case: `%2f` and `%2F`
/// are the same byte.
fn upper_escapes(s: &str) -> String {
    let mut out = s.as_bytes().to_vec();
    let mut i = 0;
    while i + 2 < out.len() {
        if out[i] == b'%' && hex(out[i + 1]).is_some() && hex(out[i + 2]).is_some() {
            out[i + 1].make_ascii_uppercase();
            out[i + 2].make_ascii_uppercase();
            i += 3;
        } else {
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path as a server that strips `;parameters` from each segment sees
/// it (Tomcat and Spring do, so `/open/..;/admin` is `/admin` there), when
/// the raw path has any; `None` otherwise. A route's path prefix must hold
/// for this view as well as for [`normalise_path`]'s, which keeps them (as
/// most servers do, where `/open;x/` is not under `/open/`).
pub(crate) fn param_free_path(raw: &str) -> Option<String> {
    param_free_raw(raw).map(|p| normalise_path(&p))
}

/// The raw path with `;parameters` stripped from each segment, when it has
/// any (read on by the lenient decoders too: old Tomcat stripped, then
/// folded overlong UTF-8).
fn param_free_raw(raw: &str) -> Option<String> {
    let raw = raw.split(['?', '#']).next().unwrap_or("");
    if !raw.contains(';') {
        return None;
    }
    Some(strip_params(raw))
}

/// The path as servers that decode it fewer times, or not at all, read it:
/// at each decoding depth from none (the path as sent) to
/// [`normalise_path`]'s, with `\` a separator and not, with `;parameters`
/// stripped after decoding and not, dot segments resolved in each (and
/// `%2e` read as a dot, as WHATWG URL parsers do). A `%2f` or `\` that one
/// server splits at and another does not changes how far a `..` climbs:
/// `/v1/x%2fy/../../admin` is `/admin` to Node's URL parser and Envoy,
/// which resolve dots without decoding, and `/v1/x%252fy/../../admin` to
/// servers that decode once. `depths` forces the number of depths (to read
/// a prefix as deep as a path); the second value is the number used.
fn depth_readings(raw: &str, depths: Option<usize>) -> (Vec<String>, usize) {
    let raw = raw.split(['?', '#']).next().unwrap_or("");
    let mut texts = vec![raw.as_bytes().to_vec()];
    while depths.map_or(texts.len() <= MAX_DECODES + 1, |n| texts.len() < n) {
        let next = decode_with(texts.last().unwrap_or(&Vec::new()), false, true, false);
        if depths.is_none() && Some(&next) == texts.last() {
            break;
        }
        texts.push(next);
    }
    // And as servers that decode everything but an encoded slash read it
    // (Tomcat's `encodedSolidusHandling="passthrough"`, common in Spring
    // apps; with `allowBackslash` a `%5c` then splits where `%2F` does not).
    let mut kept = raw.as_bytes().to_vec();
    let mut slash_kept = Vec::with_capacity(texts.len());
    for _ in 1..texts.len() {
        kept = decode_with(&kept, false, false, false);
        slash_kept.push(kept.clone());
    }
    let mut out = Vec::with_capacity(texts.len() * 8);
    for t in texts.iter().chain(&slash_kept) {
        // What is still escaped compares the same in either case.
        let t = upper_escapes(&String::from_utf8_lossy(t));
        for backslash in [false, true] {
            let t = if backslash {
                t.replace('\\', "/")
            } else {
                t.to_string()
            };
            out.push(resolve_segments(&t));
            out.push(resolve_segments(&strip_params(&t)));
        }
    }
    (out, texts.len())
}

/// `path` with `;parameters` stripped from each segment.
fn strip_params(path: &str) -> String {
    let segments: Vec<&str> = path
        .split('/')
        .map(|seg| seg.split(';').next().unwrap_or(""))
        .collect();
    segments.join("/")
}

/// Whether `prefix` holds for each reading of the path ([`crate::route::match_route`]):
/// as sent, [`normalise_path`]'s, [`param_free_path`]'s and
/// [`lenient_readings`].
/// The path as sent is compared with the prefix as written (`group%2Fproject`
/// is how GitLab's API names a project), the other readings with the prefix
/// read the same way.
pub(crate) fn prefix_holds(prefix: &str, raw_path: &str, norm_path: &str) -> bool {
    let raw_path = raw_path.split(['?', '#']).next().unwrap_or("");
    // Too long to read every way: the cap comes first, so no reading is
    // paid for (a 60 KiB crafted path cost ~0.4 s in a debug build).
    if raw_path.len() > MAX_LENIENT_PATH
        && (raw_path.contains(['%', '\\', ';']) || !raw_path.is_ascii())
    {
        return false;
    }
    let norm_prefix = normalise_path(prefix);
    let (path_depths, n) = depth_readings(raw_path, None);
    let (prefix_depths, _) = depth_readings(prefix, Some(n));
    let lenient_holds = |raw: &str| {
        lenient_readings(raw).is_none_or(|readings| {
            !readings.is_empty()
                && readings
                    .iter()
                    .all(|p| segment_prefix(&norm_prefix, p) && !disguised_dots(p))
        })
    };
    segment_prefix(&upper_escapes(prefix), &upper_escapes(raw_path))
        && segment_prefix(&norm_prefix, norm_path)
        && !disguised_dots(norm_path)
        && param_free_path(raw_path).is_none_or(|p| segment_prefix(&norm_prefix, &p))
        && prefix_depths
            .iter()
            .zip(&path_depths)
            .all(|(pre, path)| segment_prefix(pre, path))
        && lenient_holds(raw_path)
        && param_free_raw(raw_path).is_none_or(|p| lenient_holds(&p))
}

/// Whether a segment of a decoded `path` is a dot segment in disguise:
/// dots with spaces or control characters (`..%00`, `..%20`, `. .`), or
/// three dots or more. Windows drops a segment's trailing dots and spaces
/// and some servers drop NULs, so to them these may be `..`; every reading
/// here keeps them as names. No API path has one, so prefix routes refuse
/// them rather than guess which they are.
fn disguised_dots(path: &str) -> bool {
    path.split('/').any(|seg| {
        seg != "."
            && seg != ".."
            && seg.contains('.')
            && seg.chars().all(|c| c == '.' || c == ' ' || c.is_control())
    })
}

/// Whether `path` starts with `prefix` at a segment boundary (`/v1` holds
/// for `/v1` and `/v1/x`, not `/v1beta`; `/v1/` for what is below it).
fn segment_prefix(prefix: &str, path: &str) -> bool {
    if prefix == "/" || prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    path == prefix || (path.starts_with(prefix) && path.as_bytes()[prefix.len()] == b'/')
}

#[cfg(test)]
fn prefix_matches(prefix: &str, path: &str) -> bool {
    segment_prefix(&normalise_path(prefix), path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise() {
        assert_eq!(normalise_path("/v1/../admin"), "/admin");
        assert_eq!(normalise_path("/v1/%2e%2e/admin"), "/admin");
        assert_eq!(normalise_path("/v1/%2E%2E%2fadmin"), "/admin");
        assert_eq!(normalise_path("//v1///x?y=/.."), "/v1/x");
        assert_eq!(normalise_path("/v1/./x/"), "/v1/x/");
        assert_eq!(normalise_path("/../../"), "/");
        assert_eq!(normalise_path("/a%"), "/a%");
        assert_eq!(normalise_path("/a%2"), "/a%2");
        assert_eq!(normalise_path("/a\\..\\b"), "/b");
        assert_eq!(normalise_path("/v1/..%5cadmin"), "/admin");
        assert_eq!(normalise_path("/v1/..%255cadmin"), "/admin");
        // A chain that loses a level a pass is decoded so far and no more
        // (unbounded, 64 KiB of it took seconds).
        let chain = format!("/v1/%{}2e", "25".repeat(20));
        assert!(normalise_path(&chain).starts_with("/v1/%25"));
        // Decoded as often as a server might: `%25` is `%`.
        assert_eq!(normalise_path("/v1/%252e%252e/admin"), "/admin");
        assert_eq!(normalise_path("/v1/%25252e%25252E/admin"), "/admin");
        assert_eq!(normalise_path("/a/100%25"), "/a/100%");
        // Every escape, as a server that decodes twice reads it.
        assert_eq!(normalise_path("/v1/%25%32%65%25%32%65/admin"), "/admin");
        assert_eq!(normalise_path("/v1/%252%65%252%65/admin"), "/admin");
        assert_eq!(normalise_path("/a%41/é/%C3%A9"), "/aA/é/é");
    }

    #[test]
    fn prefixes_are_segment_aware() {
        assert!(prefix_matches("/v1", "/v1"));
        assert!(prefix_matches("/v1", "/v1/x"));
        assert!(!prefix_matches("/v1", "/v1beta"));
        assert!(prefix_matches("/v1/", "/v1/x"));
        assert!(prefix_matches("/", "/anything"));
    }
}
