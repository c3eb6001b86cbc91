//! Comparators (RFC 4790: i;octet, i;ascii-casemap, i;ascii-numeric) and match types (:is,
//! :contains, :matches with its match variables, :regex, and the relational :count and :value).

use std::cmp::Ordering;
use std::collections::HashMap;

use regex::{Regex, RegexBuilder};

use crate::compile::{Comparator, MatchKind, Matcher, Relation};

/// Compiled patterns are bounded: a script is someone's input.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A `:regex` key (POSIX extended syntax, read by the `regex` crate: the common syntax is the
/// same, and matching takes linear time whatever the pattern).
pub fn regex(pattern: &str, cmp: Comparator) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .case_insensitive(cmp == Comparator::AsciiCasemap)
        .dot_matches_new_line(true)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .nest_limit(64)
        .build()
        .map_err(|e| format!("the regular expression {pattern:?} is not valid: {e}"))
}

/// A `:matches` pattern as an anchored regular expression: each `*` a lazy group and each `?` a
/// one-character group, so that the match variables are those of RFC 5229 3.2 (each wildcard as
/// short as the rest of the pattern allows). For i;ascii-casemap the pattern is lowercased here
/// and the value before matching.
fn wildcard(pattern: &str, cmp: Comparator) -> Result<Regex, String> {
    let mut re = String::from("^");
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' => re.push_str("(.*?)"),
            '?' => re.push_str("(.)"),
            '\\' => {
                if let Some(next) = chars.next() {
                    re.push_str(&regex::escape(&fold(cmp, &next.to_string())));
                }
            }
            c => re.push_str(&regex::escape(&fold(cmp, &c.to_string()))),
        }
    }
    re.push('$');
    RegexBuilder::new(&re)
        .dot_matches_new_line(true)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("the pattern {pattern:?} is too large: {e}"))
}

fn fold(cmp: Comparator, s: &str) -> String {
    if cmp == Comparator::AsciiCasemap { s.to_ascii_lowercase() } else { s.to_owned() }
}

/// Patterns compiled by a script's runs, kept from one message to the next (compiling one cost
/// more than the rest of a run). Keys made from variables can differ for every message, so the
/// cache is emptied when it holds [`MAX_PATTERNS`].
#[derive(Default, Debug)]
pub struct Patterns {
    /// By key: the `:matches` form and the `:regex` form, each case-sensitive and not.
    compiled: HashMap<String, [Option<Regex>; 4]>,
}

const MAX_PATTERNS: usize = 256;

impl Patterns {
    fn get(&mut self, pattern: &str, cmp: Comparator, is_regex: bool) -> Result<&Regex, String> {
        let slot = usize::from(is_regex) * 2 + usize::from(cmp == Comparator::AsciiCasemap);
        // Looked up by the key as it is: a run compares every value with it, so a hit costs no copy.
        if self.compiled.get(pattern).is_none_or(|forms| forms[slot].is_none()) {
            let r = if is_regex { regex(pattern, cmp)? } else { wildcard(pattern, cmp)? };
            if self.compiled.len() >= MAX_PATTERNS && !self.compiled.contains_key(pattern) {
                self.compiled.clear();
            }
            self.compiled.entry(pattern.to_owned()).or_default()[slot] = Some(r);
        }
        self.compiled.get(pattern).and_then(|forms| forms[slot].as_ref()).ok_or_else(|| "no pattern".to_owned())
    }
}

/// What a successful match gives the match variables: `${0}` and one per wildcard or group
/// (empty for match types without any).
pub type Captures = Vec<String>;

/// Whether `value` matches `key`; for :count use [`count_matches`].
pub fn matches(m: Matcher, value: &str, key: &str, patterns: &mut Patterns) -> Result<Option<Captures>, String> {
    let yes = |b: bool| if b { Some(Vec::new()) } else { None };
    Ok(match m.kind {
        MatchKind::Is => yes(order(m.cmp, value, key) == Ordering::Equal),
        MatchKind::Contains => yes(match m.cmp {
            Comparator::AsciiCasemap => value.to_ascii_lowercase().contains(&key.to_ascii_lowercase()),
            _ => value.contains(key),
        }),
        MatchKind::Value(rel) => yes(relation(rel, order(m.cmp, value, key))),
        MatchKind::Count(_) => None,
        MatchKind::Matches => {
            let re = patterns.get(key, m.cmp, false)?;
            let folded = fold(m.cmp, value);
            // Folding keeps every octet where it was, so the groups index the value itself.
            re.captures(&folded)
                .map(|c| c.iter().map(|g| g.map_or(String::new(), |g| value[g.range()].to_owned())).collect())
        }
        MatchKind::Regex => {
            let re = patterns.get(key, m.cmp, true)?;
            re.captures(value).map(|c| c.iter().map(|g| g.map_or(String::new(), |g| g.as_str().to_owned())).collect())
        }
    })
}

/// `:count REL key`: the number of values, compared as the comparator compares.
pub fn count_matches(m: Matcher, count: usize, key: &str) -> bool {
    match m.kind {
        MatchKind::Count(rel) => relation(rel, order(m.cmp, &count.to_string(), key)),
        _ => false,
    }
}

fn relation(rel: Relation, o: Ordering) -> bool {
    match rel {
        Relation::Gt => o == Ordering::Greater,
        Relation::Ge => o != Ordering::Less,
        Relation::Lt => o == Ordering::Less,
        Relation::Le => o != Ordering::Greater,
        Relation::Eq => o == Ordering::Equal,
        Relation::Ne => o != Ordering::Equal,
    }
}

/// How the comparator orders two strings.
pub fn order(cmp: Comparator, a: &str, b: &str) -> Ordering {
    match cmp {
        Comparator::Octet => a.as_bytes().cmp(b.as_bytes()),
        Comparator::AsciiCasemap => {
            a.bytes().map(|c| c.to_ascii_lowercase()).cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
        }
        Comparator::AsciiNumeric => match (number(a), number(b)) {
            // A string that does not start with a digit is positive infinity (RFC 4790 9.1.1).
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => x.len().cmp(&y.len()).then_with(|| x.cmp(y)),
        },
    }
}

/// The leading digits, without leading zeros (so that length then text orders them).
fn number(s: &str) -> Option<&str> {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 {
        return None;
    }
    let digits = &s[..n];
    let trimmed = digits.trim_start_matches('0');
    Some(if trimmed.is_empty() { "0" } else { trimmed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kind: MatchKind, cmp: Comparator) -> Matcher {
        Matcher { cmp, kind }
    }

    #[test]
    fn match_variables_are_as_rfc_5229_shows() {
        let mut p = Patterns::default();
        let cm = m(MatchKind::Matches, Comparator::AsciiCasemap);
        let caps = matches(cm, "[acme-users] [fwd] version 1.0 is out", "[*] *", &mut p).expect("ok").expect("match");
        assert_eq!(caps, ["[acme-users] [fwd] version 1.0 is out", "acme-users", "[fwd] version 1.0 is out"]);
        let caps = matches(cm, "coyote@ACME.Example.COM", "coyote@**.com", &mut p).expect("ok").expect("match");
        assert_eq!(caps, ["coyote@ACME.Example.COM", "", "ACME.Example"]);
        let caps = matches(cm, "Sales <sales.example.org>", "*<*@*", &mut p).expect("ok");
        assert!(caps.is_none());
        assert!(matches(cm, "a*b", "a\\*b", &mut p).expect("ok").is_some());
        assert!(matches(cm, "axb", "a\\*b", &mut p).expect("ok").is_none());
        assert!(matches(cm, "x", "?", &mut p).expect("ok").is_some());
        assert!(matches(cm, "", "?", &mut p).expect("ok").is_none());
        // i;octet is case-sensitive; i;ascii-casemap folds ASCII only.
        assert!(matches(m(MatchKind::Matches, Comparator::Octet), "ABC", "a*", &mut p).expect("ok").is_none());
        assert!(matches(m(MatchKind::Is, Comparator::AsciiCasemap), "ÄB", "Äb", &mut p).expect("ok").is_some());
        assert!(matches(m(MatchKind::Is, Comparator::AsciiCasemap), "ä", "Ä", &mut p).expect("ok").is_none());
    }

    #[test]
    fn numbers_and_relations() {
        let mut p = Patterns::default();
        let num = |kind| m(kind, Comparator::AsciiNumeric);
        assert!(matches(num(MatchKind::Is), "007", "7", &mut p).expect("ok").is_some());
        assert!(matches(num(MatchKind::Value(Relation::Gt)), "10", "9", &mut p).expect("ok").is_some());
        assert!(
            matches(num(MatchKind::Value(Relation::Gt)), "abc", "99999999999999999999", &mut p).expect("ok").is_some()
        );
        assert!(matches(num(MatchKind::Value(Relation::Lt)), "5 apples", "6", &mut p).expect("ok").is_some());
        assert!(count_matches(num(MatchKind::Count(Relation::Ge)), 2, "2"));
        assert!(!count_matches(num(MatchKind::Count(Relation::Gt)), 2, "2"));
        // Compared as text by the default comparator: "10" sorts before "9".
        let text = m(MatchKind::Value(Relation::Gt), Comparator::AsciiCasemap);
        assert!(matches(text, "10", "9", &mut p).expect("ok").is_none());
    }

    #[test]
    fn regex_groups_and_limits() {
        let mut p = Patterns::default();
        let r = m(MatchKind::Regex, Comparator::AsciiCasemap);
        let caps = matches(r, "Invoice 2026-117 due", "invoice ([0-9]+)-([0-9]+)", &mut p).expect("ok").expect("match");
        assert_eq!(caps, ["Invoice 2026-117", "2026", "117"]);
        assert!(regex("(unclosed", Comparator::Octet).is_err());
        assert!(regex("a{1000}{1000}{1000}", Comparator::Octet).is_err(), "too large a program");
    }
}
