//! `bot-bottle-bench-dlp [--secs S]`: how fast the egress proxy's DLP stage
//! scans a body, on ordinary text and on text an agent can craft to slow a
//! regex engine down (a rule's literal prefix recurring inside the counted
//! class that follows it: `github_pat_` inside `\w{82}`).
//!
//! Two scanners over the same rules, in one run: the proxy's (each rule its
//! own regex: a prefilter finds a literal prefix, the rest is checked from
//! there) and one `RegexSet` of all rules (one pass; what the proxy used
//! before, whose lazy DFA tracks every start at once). Both get the text in
//! 64 KiB pieces, as a decoded body is scanned. Prints MB/s, the ratio of
//! the two, and the proxy's slowest text against ordinary text: the bound
//! on what a crafted body costs per byte. Then the same for small inputs
//! scanned whole (4 KiB, 256 bytes: a request head, a WebSocket frame):
//! microseconds per scan. Every text is made here, from a
//! fixed seed; nothing is read from disk.

use std::time::{Duration, Instant};

use bot_bottle_egress::dlp_bench::{patterns, Scanner};
use regex::bytes::{RegexSet, RegexSetBuilder};

const SIZE: usize = 4 << 20;

/// A deterministic generator (xorshift64*), so every run scans the same text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next() % xs.len() as u64) as usize]
    }
}

/// `SIZE` bytes of `class` characters with one of `tokens` in place of one
/// in `every` characters.
fn crafted(seed: u64, tokens: &[&str], class: &str, every: u64) -> Vec<u8> {
    let mut r = Rng(seed);
    let class = class.as_bytes();
    let mut out = Vec::with_capacity(SIZE + 64);
    while out.len() < SIZE {
        if r.next() % every == 0 {
            out.extend_from_slice(r.pick(tokens).as_bytes());
        } else {
            out.push(*r.pick(class));
        }
    }
    out.truncate(SIZE);
    out
}

/// A JSON request body of the kind agents send: messages of words; with
/// `escapes`, lines of them (`\n` in the JSON text), as code and file
/// contents are sent, which the proxy scans a second time decoded.
fn ordinary(escapes: bool) -> Vec<u8> {
    let words = [
        "the", "model", "function", "returns", "a", "value", "import", "const", "let", "async",
        "await", "error", "string", "number", "file", "path", "test", "build", "config", "run",
    ];
    let mut r = Rng(7);
    let mut out = Vec::with_capacity(SIZE + 256);
    out.extend_from_slice(br#"{"model":"gpt-5","input":["#);
    while out.len() < SIZE {
        out.extend_from_slice(br#"{"role":"user","content":""#);
        for i in 0..60 {
            out.extend_from_slice(r.pick(&words).as_bytes());
            if escapes && i % 10 == 9 {
                out.extend_from_slice(b"\\n");
            } else {
                out.push(b' ');
            }
        }
        out.extend_from_slice(b"\"},");
    }
    out.truncate(SIZE);
    out
}

/// What the proxy did before: one `RegexSet`, fed 64 KiB pieces with the
/// same overlap.
fn set_scan(set: &RegexSet, names: &[String], data: &[u8]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut w: Vec<u8> = Vec::new();
    for piece in data.chunks(64 * 1024) {
        w.extend_from_slice(piece);
        for i in set.matches(&w).iter() {
            if !out.contains(&names[i]) {
                out.push(names[i].clone());
            }
        }
        let keep = w.len().min(256);
        w.drain(..w.len() - keep);
    }
    out
}

/// MB/s of `f` over `data`: as many passes as fit in `secs` (at least one).
fn rate(data: &[u8], secs: f64, mut f: impl FnMut(&[u8]) -> Vec<String>) -> (f64, Vec<String>) {
    let start = Instant::now();
    let mut passes = 0u32;
    let mut found;
    loop {
        found = f(data);
        passes += 1;
        if start.elapsed() >= Duration::from_secs_f64(secs) {
            break;
        }
    }
    let mb = data.len() as f64 * passes as f64 / 1e6;
    found.sort();
    (mb / start.elapsed().as_secs_f64(), found)
}

fn main() {
    let mut secs = 0.5;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--secs", Some(s)) => secs = s,
            _ => {
                eprintln!("usage: bot-bottle-bench-dlp [--secs S]");
                std::process::exit(2);
            }
        }
    }
    let pats = patterns();
    // Fresh scanners for every row: a regex's lazy DFA keeps its cache
    // between searches, so a row after a crafted text would measure what
    // that text left behind.
    let fresh = || {
        let scanner = Scanner::new().expect("the DLP rules compile");
        let set = RegexSetBuilder::new(&pats)
            .unicode(false)
            .size_limit(64 << 20)
            .build()
            .expect("the DLP rules compile as a set");
        (scanner, set)
    };
    let names: Vec<String> = bot_bottle_egress::dlp_bench::names();

    let word = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_";
    let texts: Vec<(&str, Vec<u8>)> = vec![
        ("ordinary (JSON)", ordinary(false)),
        ("JSON with \\n escapes", ordinary(true)),
        ("spaces", vec![b' '; SIZE]),
        (
            "-----BEGIN in its label",
            crafted(
                1,
                &["-----BEGIN"],
                "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-",
                12,
            ),
        ),
        ("github_pat_ in \\w", crafted(2, &["github_pat_"], word, 16)),
        (
            "sk_live_, sk-proj- in [\\w-]",
            crafted(
                3,
                &["sk_live_", "rk_test_", "sk-proj-", "sk-ant-api03-"],
                word,
                12,
            ),
        ),
        (
            "xoxb-, xoxp- in digits",
            crafted(
                4,
                &["xoxb-", "xoxp-", "-1234567890", "xapp-1-"],
                "0123456789-abcdef",
                12,
            ),
        ),
        (
            "AKIA in [A-Z2-7]",
            crafted(
                5,
                &["AKIA", "ASIA", "A3TX"],
                "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567",
                12,
            ),
        ),
        (
            "AIza, SG., glpat- in [\\w-.]",
            crafted(
                6,
                &[
                    "AIza",
                    "SG.",
                    "dop_v1_",
                    "hf_",
                    "npm_",
                    "pypi-AgEIcHlwaS5vcmc",
                    "glpat-",
                ],
                "abcdef0123456789ABCDEF_-.",
                12,
            ),
        ),
    ];

    println!(
        "DLP scan, {} MiB per text in 64 KiB pieces, {} rules, >= {secs} s per cell",
        SIZE >> 20,
        pats.len()
    );
    println!(
        "{:<30} {:>14} {:>14} {:>8}  rules found",
        "text", "proxy MB/s", "RegexSet MB/s", "ratio"
    );
    let mut base = None;
    let mut worst: Option<(f64, &str)> = None;
    for (name, data) in &texts {
        let (scanner, set) = fresh();
        let (ours, found) = rate(data, secs, |d| scanner.scan(d));
        let (theirs, found_set) = rate(data, secs, |d| set_scan(&set, &names, d));
        let same = if found == found_set {
            ""
        } else {
            "  (the set found other rules!)"
        };
        println!(
            "{name:<30} {ours:>14.1} {theirs:>14.1} {:>7.1}x  {}{same}",
            ours / theirs,
            if found.is_empty() {
                "-".to_string()
            } else {
                found.join(",")
            }
        );
        if base.is_none() {
            base = Some(ours);
        } else if worst.is_none_or(|(w, _)| ours < w) {
            worst = Some((ours, name));
        }
    }
    // A lazy DFA keeps its cache from one search to the next: what a
    // crafted text leaves there slows the searches after it.
    let (scanner, set) = fresh();
    for (_, data) in &texts[3..] {
        scanner.scan(data);
        set_scan(&set, &names, data);
    }
    let ordinary = &texts[0].1;
    let (ours, _) = rate(ordinary, secs, |d| scanner.scan(d));
    let (theirs, _) = rate(ordinary, secs, |d| set_scan(&set, &names, d));
    println!(
        "{:<30} {ours:>14.1} {theirs:>14.1} {:>7.1}x",
        "ordinary, after the crafted",
        ours / theirs
    );
    if let (Some(base), Some((w, name))) = (base, worst) {
        println!(
            "\nthe proxy's slowest text ({name}) against ordinary text: {:.2}x",
            w / base
        );
    }

    // Small inputs, scanned whole: a request head (HPACK resends a large
    // header for a byte or two), a WebSocket frame with its context.
    for size in [4096, 256] {
        println!(
            "\n{size}-byte inputs scanned whole, us per scan\n{:<30} {:>14} {:>14} {:>8}",
            "text", "proxy", "RegexSet", "ratio"
        );
        for (name, data) in &texts {
            let (scanner, set) = fresh();
            let piece = &data[..size];
            let per = |f: &dyn Fn(&[u8]) -> usize| {
                let start = Instant::now();
                let mut n = 0u32;
                while start.elapsed() < Duration::from_secs_f64(secs / 4.0) {
                    std::hint::black_box(f(piece));
                    n += 1;
                }
                start.elapsed().as_secs_f64() * 1e6 / n as f64
            };
            let ours = per(&|d| scanner.scan_whole(d).len());
            let theirs = per(&|d| set.matches(d).iter().count());
            println!(
                "{name:<30} {ours:>14.2} {theirs:>14.2} {:>7.1}x",
                theirs / ours
            );
        }
    }
}
