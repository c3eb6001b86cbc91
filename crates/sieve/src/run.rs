//! Running a compiled script over one message.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, FixedOffset, Timelike};
use mailparse::{MailAddr, MailHeaderMap, ParsedMail};

use crate::compile::{AddressPart, BodyTransform, Command, FlagOp, MatchKind, Matcher, Modifier, Test, Zone};
use crate::matching::{self, Patterns};
use crate::{Delivery, Environment, Outcome, RuntimeError};

/// A variable's value is cut to this many octets (RFC 5229 asks for at least 4,000).
pub const MAX_VALUE: usize = 64 * 1024;
/// Distinct variables one run may set.
const MAX_VARIABLES: usize = 1024;
/// Folders one message may be filed into.
const MAX_DELIVERIES: usize = 64;

/// A message as the tests see it.
pub struct Message<'a> {
    raw: &'a [u8],
    parsed: Option<ParsedMail<'a>>,
}

impl<'a> Message<'a> {
    pub fn new(raw: &'a [u8]) -> Self {
        Self { raw, parsed: mailparse::parse_mail(raw).ok() }
    }

    /// Every occurrence of a header, decoded (RFC 2047) and unfolded, without the spaces around.
    fn header(&self, name: &str) -> Vec<String> {
        self.parsed.as_ref().map_or_else(Vec::new, |p| {
            p.headers.get_all_headers(name).into_iter().map(|h| h.get_value().trim().to_owned()).collect()
        })
    }

    /// The addresses in every occurrence of a header, as `local@domain` (a group's members).
    fn addresses(&self, name: &str) -> Vec<String> {
        let Some(p) = &self.parsed else { return Vec::new() };
        let mut out = Vec::new();
        for h in p.headers.get_all_headers(name) {
            match mailparse::addrparse_header(h) {
                Ok(list) => {
                    for a in list.iter() {
                        match a {
                            MailAddr::Single(s) => out.push(s.addr.clone()),
                            MailAddr::Group(g) => out.extend(g.addrs.iter().map(|s| s.addr.clone())),
                        }
                    }
                }
                // Not a list of addresses: the value as it is, so that :contains can still test it.
                Err(_) => out.push(h.get_value().trim().to_owned()),
            }
        }
        out
    }

    fn body(&self, transform: &BodyTransform) -> Vec<String> {
        let Some(p) = &self.parsed else { return vec![String::from_utf8_lossy(self.raw).into_owned()] };
        match transform {
            BodyTransform::Raw => {
                let at = memchr_body_start(self.raw);
                vec![String::from_utf8_lossy(&self.raw[at..]).into_owned()]
            }
            BodyTransform::Text => pillarbox_mailbox::leaves(p)
                .into_iter()
                .filter(|l| l.ctype.mimetype.starts_with("text/"))
                .map(|l| {
                    let body = l.get_body().unwrap_or_default();
                    if l.ctype.mimetype == "text/html" { pillarbox_mailbox::html_to_text(&body) } else { body }
                })
                .collect(),
            BodyTransform::Content(types) => pillarbox_mailbox::leaves(p)
                .into_iter()
                .filter(|l| {
                    let (top, _) = l.ctype.mimetype.split_once('/').unwrap_or((&l.ctype.mimetype, ""));
                    types.iter().any(|t| {
                        t.is_empty()
                            || t.eq_ignore_ascii_case(&l.ctype.mimetype)
                            || (!t.contains('/') && t.eq_ignore_ascii_case(top))
                    })
                })
                .map(|l| {
                    if l.ctype.mimetype.starts_with("text/") {
                        l.get_body().unwrap_or_default()
                    } else {
                        String::from_utf8_lossy(&l.get_body_raw().unwrap_or_default()).into_owned()
                    }
                })
                .collect(),
        }
    }
}

/// Where the body starts: after the first empty line (the whole text when there is none).
fn memchr_body_start(raw: &[u8]) -> usize {
    let crlf = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = raw.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(raw.len()),
    }
}

pub struct Run<'m, 'e> {
    patterns: &'e mut Patterns,
    msg: &'m Message<'m>,
    env: &'e Environment,
    variables_on: bool,
    vars: HashMap<String, String>,
    captures: Vec<String>,
    /// imap4flags' internal variable.
    flags: Vec<String>,
    deliveries: Vec<Delivery>,
    implicit_keep: bool,
    discarded: bool,
}

enum Flow {
    Next,
    Stop,
}

impl<'m, 'e> Run<'m, 'e> {
    pub fn new(msg: &'m Message<'m>, env: &'e Environment, variables_on: bool, patterns: &'e mut Patterns) -> Self {
        Self {
            patterns,
            msg,
            env,
            variables_on,
            vars: HashMap::new(),
            captures: Vec::new(),
            flags: Vec::new(),
            deliveries: Vec::new(),
            implicit_keep: true,
            discarded: false,
        }
    }

    pub fn all(mut self, commands: &[Command]) -> Result<Outcome, RuntimeError> {
        self.block(commands)?;
        if self.implicit_keep {
            let flags = self.flags.clone();
            self.deliver(None, flags)?;
        }
        Ok(Outcome { deliveries: self.deliveries, discarded: self.discarded })
    }

    fn block(&mut self, commands: &[Command]) -> Result<Flow, RuntimeError> {
        for c in commands {
            if let Flow::Stop = self.command(c)? {
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Next)
    }

    fn command(&mut self, c: &Command) -> Result<Flow, RuntimeError> {
        match c {
            Command::If { branches, otherwise } => {
                for (test, block) in branches {
                    if self.test(test)? {
                        return self.block(block);
                    }
                }
                if let Some(b) = otherwise {
                    return self.block(b);
                }
            }
            Command::Stop => return Ok(Flow::Stop),
            Command::Keep { flags } => {
                let flags = self.action_flags(flags.as_deref());
                self.implicit_keep = false;
                self.deliver(None, flags)?;
            }
            Command::Discard => {
                self.implicit_keep = false;
                self.discarded = true;
            }
            Command::FileInto { folder, flags, copy } => {
                let folder = self.expand(folder);
                if folder.is_empty() || folder.chars().any(char::is_control) {
                    return Err(RuntimeError(format!("fileinto: {folder:?} is not a folder name")));
                }
                let flags = self.action_flags(flags.as_deref());
                if !copy {
                    self.implicit_keep = false;
                }
                let inbox = folder.eq_ignore_ascii_case("INBOX");
                self.deliver(if inbox { None } else { Some(folder) }, flags)?;
            }
            Command::Set { name, value, modifiers } => {
                let mut v = self.expand(value);
                for m in modifiers {
                    v = modify(*m, &v);
                }
                self.set(name, v)?;
            }
            Command::Flags { op, var, flags } => {
                let given: Vec<String> = flag_list(flags.iter().map(|f| self.expand(f)));
                let current = match var {
                    Some(v) => flag_list([self.vars.get(v).cloned().unwrap_or_default()]),
                    None => self.flags.clone(),
                };
                let new = match op {
                    FlagOp::Set => given,
                    FlagOp::Add => flag_list(current.into_iter().chain(given)),
                    FlagOp::Remove => {
                        current.into_iter().filter(|f| !given.iter().any(|g| g.eq_ignore_ascii_case(f))).collect()
                    }
                };
                match var {
                    Some(v) => self.set(v, new.join(" "))?,
                    None => self.flags = new,
                }
            }
        }
        Ok(Flow::Next)
    }

    fn set(&mut self, name: &str, value: String) -> Result<(), RuntimeError> {
        if self.vars.len() >= MAX_VARIABLES && !self.vars.contains_key(name) {
            return Err(RuntimeError(format!("more than {MAX_VARIABLES} variables")));
        }
        self.vars.insert(name.to_owned(), cut(value));
        Ok(())
    }

    /// An action's flags: its `:flags`, else the internal variable's.
    fn action_flags(&self, given: Option<&[String]>) -> Vec<String> {
        match given {
            Some(f) => flag_list(f.iter().map(|f| self.expand(f))),
            None => self.flags.clone(),
        }
    }

    /// The same folder twice is one delivery (RFC 5228 2.10.3), with the flags of both.
    fn deliver(&mut self, folder: Option<String>, flags: Vec<String>) -> Result<(), RuntimeError> {
        if let Some(d) = self.deliveries.iter_mut().find(|d| d.folder == folder) {
            d.flags = flag_list(d.flags.drain(..).chain(flags));
            return Ok(());
        }
        if self.deliveries.len() >= MAX_DELIVERIES {
            return Err(RuntimeError(format!("more than {MAX_DELIVERIES} folders for one message")));
        }
        self.deliveries.push(Delivery { folder, flags });
        Ok(())
    }

    /// `${name}` and `${N}` replaced, when the script requires "variables".
    fn expand(&self, s: &str) -> String {
        if !self.variables_on || !s.contains("${") {
            return s.to_owned();
        }
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(at) = rest.find("${") {
            out.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            match after.find('}') {
                Some(end) if is_reference(&after[..end]) => {
                    let name = &after[..end];
                    let value = if name.bytes().all(|c| c.is_ascii_digit()) {
                        name.parse::<usize>().ok().and_then(|n| self.captures.get(n)).cloned().unwrap_or_default()
                    } else {
                        self.vars.get(&name.to_ascii_lowercase()).cloned().unwrap_or_default()
                    };
                    out.push_str(&value);
                    rest = &after[end + 1..];
                }
                _ => {
                    out.push_str("${");
                    rest = after;
                }
            }
            if out.len() > MAX_VALUE {
                break;
            }
        }
        out.push_str(rest);
        cut(out)
    }

    fn expand_all(&self, list: &[String]) -> Vec<String> {
        list.iter().map(|s| self.expand(s)).collect()
    }

    fn test(&mut self, t: &Test) -> Result<bool, RuntimeError> {
        Ok(match t {
            Test::True => true,
            Test::False => false,
            Test::Not(t) => !self.test(t)?,
            Test::AllOf(ts) => {
                for t in ts {
                    if !self.test(t)? {
                        return Ok(false);
                    }
                }
                true
            }
            Test::AnyOf(ts) => {
                for t in ts {
                    if self.test(t)? {
                        return Ok(true);
                    }
                }
                false
            }
            Test::Exists(headers) => self.expand_all(headers).iter().all(|h| !self.msg.header(h).is_empty()),
            Test::Size { over, limit } => {
                let size = self.env.size.unwrap_or(self.msg.raw.len() as u64);
                if *over { size > *limit } else { size < *limit }
            }
            Test::Header { matcher, headers, keys } => {
                let values = self.expand_all(headers).iter().flat_map(|h| self.msg.header(h)).collect();
                self.values(*matcher, values, keys)?
            }
            Test::Address { part, matcher, headers, keys } => {
                let addresses: Vec<String> =
                    self.expand_all(headers).iter().flat_map(|h| self.msg.addresses(h)).collect();
                let values = addresses.iter().filter_map(|a| address_part(a, *part)).collect();
                self.values(*matcher, values, keys)?
            }
            Test::Envelope { part, matcher, parts, keys } => {
                let mut values = Vec::new();
                for p in self.expand_all(parts) {
                    let given = if p.eq_ignore_ascii_case("from") { &self.env.from } else { &self.env.to };
                    if let Some(a) = given {
                        // The null reverse-path is the empty string, whatever part is asked for.
                        if a.is_empty() {
                            values.push(String::new());
                        } else if let Some(v) = address_part(a, *part) {
                            values.push(v);
                        }
                    }
                }
                self.values(*matcher, values, keys)?
            }
            Test::Body { transform, matcher, keys } => {
                let transform = match transform {
                    BodyTransform::Content(types) => BodyTransform::Content(self.expand_all(types)),
                    other => other.clone(),
                };
                let values = self.msg.body(&transform);
                self.values(*matcher, values, keys)?
            }
            Test::Date { zone, matcher, header, part, keys } => {
                let header = self.expand(header);
                let part = self.expand(part);
                let values = self
                    .msg
                    .header(&header)
                    .iter()
                    .filter_map(|v| parse_date(v))
                    .filter_map(|d| date_part(self.in_zone(d, zone), &part))
                    .collect();
                self.values(*matcher, values, keys)?
            }
            Test::CurrentDate { zone, matcher, part, keys } => {
                let now = DateTime::from_timestamp(self.env.now, 0).unwrap_or_default().fixed_offset();
                let part = self.expand(part);
                let values = date_part(self.in_zone(now, zone), &part).into_iter().collect();
                self.values(*matcher, values, keys)?
            }
            Test::String { matcher, sources, keys } => {
                let mut values = self.expand_all(sources);
                // :count counts the sources that are not empty (RFC 5229 5).
                if matches!(matcher.kind, MatchKind::Count(_)) {
                    values.retain(|v| !v.is_empty());
                }
                self.values(*matcher, values, keys)?
            }
            Test::HasFlag { matcher, vars, keys } => {
                let values = if vars.is_empty() {
                    self.flags.clone()
                } else {
                    flag_list(
                        vars.iter()
                            .map(|v| self.vars.get(&self.expand(v).to_ascii_lowercase()).cloned().unwrap_or_default()),
                    )
                };
                let keys: Vec<String> = flag_list(keys.iter().map(|k| self.expand(k)));
                self.compare(*matcher, values, &keys)?
            }
        })
    }

    fn in_zone(&self, d: DateTime<FixedOffset>, zone: &Zone) -> DateTime<FixedOffset> {
        let minutes = match zone {
            Zone::Original => return d,
            Zone::Local => self.env.zone_minutes,
            Zone::Fixed(m) => *m,
        };
        FixedOffset::east_opt(minutes * 60).map_or(d, |z| d.with_timezone(&z))
    }

    /// Any value against any key (keys expanded first).
    fn values(&mut self, m: Matcher, values: Vec<String>, keys: &[String]) -> Result<bool, RuntimeError> {
        let keys = self.expand_all(keys);
        self.compare(m, values, &keys)
    }

    fn compare(&mut self, m: Matcher, values: Vec<String>, keys: &[String]) -> Result<bool, RuntimeError> {
        if matches!(m.kind, MatchKind::Count(_)) {
            return Ok(keys.iter().any(|k| matching::count_matches(m, values.len(), k)));
        }
        for v in &values {
            for k in keys {
                if let Some(caps) = matching::matches(m, v, k, self.patterns).map_err(RuntimeError)? {
                    if matches!(m.kind, MatchKind::Matches | MatchKind::Regex) {
                        self.captures = caps.into_iter().map(cut).collect();
                    }
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// `${...}`'s inside: a variable name or a number.
fn is_reference(s: &str) -> bool {
    (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())) || crate::compile::valid_variable(s)
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_VALUE {
        let mut at = MAX_VALUE;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
    s
}

fn modify(m: Modifier, v: &str) -> String {
    let first = |f: fn(&str) -> String| {
        let mut c = v.chars();
        c.next().map_or_else(String::new, |h| f(&h.to_string()) + c.as_str())
    };
    match m {
        Modifier::Lower => v.to_lowercase(),
        Modifier::Upper => v.to_uppercase(),
        Modifier::LowerFirst => first(str::to_lowercase),
        Modifier::UpperFirst => first(str::to_uppercase),
        Modifier::QuoteWildcard => v.replace('\\', "\\\\").replace('*', "\\*").replace('?', "\\?"),
        Modifier::QuoteRegex => regex::escape(v),
        Modifier::Length => v.chars().count().to_string(),
    }
}

/// Flags from strings that may each hold several, separated by spaces; each once (compared
/// without case), in the order first seen.
fn flag_list(strings: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in strings {
        for f in s.split_ascii_whitespace() {
            if !out.iter().any(|o| o.eq_ignore_ascii_case(f)) {
                out.push(f.to_owned());
            }
        }
    }
    out
}

/// One part of `local@domain`; `None` where the address has none (no `+` for :detail).
fn address_part(a: &str, part: AddressPart) -> Option<String> {
    let (local, domain) = a.rsplit_once('@').unwrap_or((a, ""));
    // The detail separator is "+" (RFC 5233 leaves it to the implementation).
    Some(match part {
        AddressPart::All => a.to_owned(),
        AddressPart::LocalPart => local.to_owned(),
        AddressPart::Domain => domain.to_owned(),
        AddressPart::User => local.split_once('+').map_or(local, |(u, _)| u).to_owned(),
        AddressPart::Detail => local.split_once('+')?.1.to_owned(),
    })
}

/// An RFC 5322 date, with its zone; a date too broken for that is passed over.
fn parse_date(v: &str) -> Option<DateTime<FixedOffset>> {
    // A trailing comment, like "(UTC)", is not part of the date.
    let v = v.split_once('(').map_or(v, |(d, _)| d).trim();
    DateTime::parse_from_rfc2822(v).ok()
}

/// A date part (RFC 5260 4); `None` for an unknown part.
fn date_part(d: DateTime<FixedOffset>, part: &str) -> Option<String> {
    let zone = {
        let m = d.offset().local_minus_utc() / 60;
        format!("{}{:02}{:02}", if m < 0 { '-' } else { '+' }, m.abs() / 60, m.abs() % 60)
    };
    Some(match part.to_ascii_lowercase().as_str() {
        "year" => format!("{:04}", d.year()),
        "month" => format!("{:02}", d.month()),
        "day" => format!("{:02}", d.day()),
        "date" => d.format("%Y-%m-%d").to_string(),
        "julian" => {
            // The Modified Julian Day: days since 1858-11-17.
            let epoch = chrono::NaiveDate::from_ymd_opt(1858, 11, 17)?;
            (d.date_naive() - epoch).num_days().to_string()
        }
        "hour" => format!("{:02}", d.hour()),
        "minute" => format!("{:02}", d.minute()),
        "second" => format!("{:02}", d.second()),
        "time" => d.format("%H:%M:%S").to_string(),
        "iso8601" => d.format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        "std11" => d.to_rfc2822(),
        "zone" => zone,
        "weekday" => d.weekday().num_days_from_sunday().to_string(),
        _ => return None,
    })
}
