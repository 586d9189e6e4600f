//! Which DLP rules could match a small input, in one pass: the literal
//! prefixes every match of a rule must start with (extracted from the
//! rule's own regex by `regex-syntax`), in one Aho-Corasick automaton. Only
//! the rules whose prefix occurs are then searched.
//!
//! Why not one `RegexSet` for small inputs (request heads, WebSocket
//! frames): on text made so that a rule's prefix recurs inside the class
//! after it (`github_pat_` inside `\w{82}`) the set's lazy DFA tracks every
//! start at once, and a 4 KiB header cost ~0.8 ms a request (HPACK sends
//! it again for a byte or two). Nor every rule searched on its own: twenty
//! searches cost ~3.7k instructions a request more than one pass on
//! ordinary heads.

use aho_corasick::{AhoCorasick, AhoCorasickKind};
use regex_syntax::hir::literal::Extractor;

#[derive(Debug)]
pub(crate) struct Prefilter {
    /// Every rule's prefixes; pattern `k` is a prefix of rule `rule_of[k]`.
    ac: AhoCorasick,
    rule_of: Vec<usize>,
    /// Rules without a usable prefix: searched every time.
    always: Vec<usize>,
}

impl Prefilter {
    /// `patterns` as the scanner compiles them (bytes, no Unicode).
    pub(crate) fn new(patterns: &[String]) -> Result<Self, String> {
        let mut lits: Vec<Vec<u8>> = Vec::new();
        let mut rule_of = Vec::new();
        let mut always = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            let hir = regex_syntax::ParserBuilder::new()
                .unicode(false)
                .utf8(false)
                .build()
                .parse(p)
                .map_err(|e| e.to_string())?;
            let seq = Extractor::new().extract(&hir);
            match seq.literals() {
                Some(ls) if !ls.is_empty() && ls.iter().all(|l| !l.as_bytes().is_empty()) => {
                    for l in ls {
                        lits.push(l.as_bytes().to_vec());
                        rule_of.push(i);
                    }
                }
                // Any text may start a match (or none can be named).
                _ => always.push(i),
            }
        }
        // A full DFA: one table lookup a byte (a few hundred states here).
        let ac = AhoCorasick::builder()
            .kind(Some(AhoCorasickKind::DFA))
            .build(&lits)
            .map_err(|e| e.to_string())?;
        Ok(Self {
            ac,
            rule_of,
            always,
        })
    }

    /// Rules searched whatever the input.
    #[cfg(test)]
    pub(crate) fn always(&self) -> &[usize] {
        &self.always
    }

    /// The rules that could match in `data`, in order, each once.
    pub(crate) fn candidates(&self, data: &[u8]) -> Vec<usize> {
        let mut seen = vec![false; self.rule_of.iter().max().map_or(0, |m| m + 1)];
        let mut out = self.always.clone();
        for m in self.ac.find_overlapping_iter(data) {
            let r = self.rule_of[m.pattern().as_usize()];
            if !seen[r] {
                seen[r] = true;
                out.push(r);
            }
        }
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_name_the_rules_that_could_match() {
        let pats: Vec<String> = [
            r"ghp_[0-9a-zA-Z]{36}",
            r"\b(?:AKIA|ASIA)[A-Z2-7]{16}\b",
            r"(?i)xapp-\d-[A-Z0-9]+",
            r"[a-z]+@[a-z]+",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = Prefilter::new(&pats).unwrap();
        // The last has no literal prefix: always searched.
        assert_eq!(p.candidates(b"nothing here"), [3]);
        assert_eq!(p.candidates(b"x ghp_ y ASIA z"), [0, 1, 3]);
        assert_eq!(p.candidates(b"XaPp-1-"), [2, 3]);
    }
}
