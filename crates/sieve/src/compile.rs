//! From the generic tree to the commands and tests of the supported extensions, checked: every
//! command and test known, required, and given the arguments it takes.

use std::collections::{HashMap, HashSet};

use crate::CompileError;
use crate::parse::{Arg, Node};

/// The extensions `require` may name.
pub const EXTENSIONS: &[&str] = &[
    "fileinto",
    "envelope",
    "body",
    "variables",
    "regex",
    "date",
    "relational",
    "subaddress",
    "imap4flags",
    "copy",
    "encoded-character",
    "comparator-i;octet",
    "comparator-i;ascii-casemap",
    "comparator-i;ascii-numeric",
];

#[derive(Debug, Clone)]
pub enum Command {
    If { branches: Vec<(Test, Vec<Command>)>, otherwise: Option<Vec<Command>> },
    Stop,
    Keep { flags: Option<Vec<String>> },
    Discard,
    FileInto { folder: String, flags: Option<Vec<String>>, copy: bool },
    Set { name: String, value: String, modifiers: Vec<Modifier> },
    Flags { op: FlagOp, var: Option<String>, flags: Vec<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    Set,
    Add,
    Remove,
}

/// `set` modifiers, in the order they apply (RFC 5229 4.1: highest precedence first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Modifier {
    Lower,
    Upper,
    LowerFirst,
    UpperFirst,
    QuoteWildcard,
    QuoteRegex,
    Length,
}

impl Modifier {
    fn precedence(self) -> u8 {
        match self {
            Modifier::Lower | Modifier::Upper => 40,
            Modifier::LowerFirst | Modifier::UpperFirst => 30,
            Modifier::QuoteWildcard | Modifier::QuoteRegex => 20,
            Modifier::Length => 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparator {
    Octet,
    AsciiCasemap,
    AsciiNumeric,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    Is,
    Contains,
    Matches,
    Regex,
    Count(Relation),
    Value(Relation),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matcher {
    pub cmp: Comparator,
    pub kind: MatchKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressPart {
    All,
    LocalPart,
    Domain,
    User,
    Detail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyTransform {
    Raw,
    Text,
    /// Media types: `text`, `text/html`, or `""` for every part.
    Content(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Zone {
    /// The implementation's local zone.
    Local,
    /// `:zone "+0100"`: minutes east of UTC.
    Fixed(i32),
    /// `:originalzone`: the header's own.
    Original,
}

#[derive(Debug, Clone)]
pub enum Test {
    Address { part: AddressPart, matcher: Matcher, headers: Vec<String>, keys: Vec<String> },
    Envelope { part: AddressPart, matcher: Matcher, parts: Vec<String>, keys: Vec<String> },
    Header { matcher: Matcher, headers: Vec<String>, keys: Vec<String> },
    Exists(Vec<String>),
    Size { over: bool, limit: u64 },
    AllOf(Vec<Test>),
    AnyOf(Vec<Test>),
    Not(Box<Test>),
    True,
    False,
    Body { transform: BodyTransform, matcher: Matcher, keys: Vec<String> },
    Date { zone: Zone, matcher: Matcher, header: String, part: String, keys: Vec<String> },
    CurrentDate { zone: Zone, matcher: Matcher, part: String, keys: Vec<String> },
    String { matcher: Matcher, sources: Vec<String>, keys: Vec<String> },
    HasFlag { matcher: Matcher, vars: Vec<String>, keys: Vec<String> },
}

pub struct Compiled {
    pub commands: Vec<Command>,
    pub required: HashSet<String>,
}

pub fn compile(nodes: &[Node]) -> Result<Compiled, CompileError> {
    let mut c = Compiler { required: HashSet::new(), requires_done: false };
    let commands = c.block(nodes)?;
    Ok(Compiled { commands, required: c.required })
}

struct Compiler {
    required: HashSet<String>,
    /// A command other than `require` has been seen.
    requires_done: bool,
}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, CompileError> {
    Err(CompileError { line, message: message.into() })
}

/// Tagged arguments (each with its value, if the tag takes one) and the positional ones.
struct Args {
    tags: HashMap<String, Option<Arg>>,
    positional: Vec<Arg>,
    line: usize,
}

impl Args {
    /// `takes`: the tags this command knows, and whether each is followed by a value.
    fn split(node: &Node, takes: &[(&str, bool)]) -> Result<Self, CompileError> {
        let mut tags = HashMap::new();
        let mut positional = Vec::new();
        let mut it = node.args.iter().cloned();
        while let Some(a) = it.next() {
            match a {
                Arg::Tag(t) => {
                    if !positional.is_empty() {
                        return err(
                            node.line,
                            format!("{}: the tag :{t} must come before the other arguments", node.name),
                        );
                    }
                    let Some(&(_, value)) = takes.iter().find(|(name, _)| *name == t) else {
                        return err(node.line, format!("{} has no tag :{t}", node.name));
                    };
                    let v = if value {
                        Some(it.next().ok_or_else(|| CompileError {
                            line: node.line,
                            message: format!("{}: :{t} needs a value after it", node.name),
                        })?)
                    } else {
                        None
                    };
                    if tags.insert(t.clone(), v).is_some() {
                        return err(node.line, format!("{}: :{t} is given twice", node.name));
                    }
                }
                other => positional.push(other),
            }
        }
        Ok(Self { tags, positional, line: node.line })
    }

    fn has(&self, tag: &str) -> bool {
        self.tags.contains_key(tag)
    }

    fn string_value(&self, tag: &str) -> Result<Option<String>, CompileError> {
        match self.tags.get(tag) {
            None => Ok(None),
            Some(Some(Arg::Str(s))) => Ok(Some(s.clone())),
            Some(Some(Arg::List(l))) if l.len() == 1 => Ok(Some(l[0].clone())),
            Some(_) => err(self.line, format!(":{tag} takes a string")),
        }
    }

    fn list_value(&self, tag: &str) -> Result<Option<Vec<String>>, CompileError> {
        match self.tags.get(tag) {
            None => Ok(None),
            Some(Some(Arg::Str(s))) => Ok(Some(vec![s.clone()])),
            Some(Some(Arg::List(l))) => Ok(Some(l.clone())),
            Some(_) => err(self.line, format!(":{tag} takes a string list")),
        }
    }

    /// The positional arguments, which must be `n` string lists (a string is a list of one).
    fn lists(&self, name: &str, n: usize) -> Result<Vec<Vec<String>>, CompileError> {
        if self.positional.len() != n {
            let what = if n == 1 { "one argument".to_owned() } else { format!("{n} arguments") };
            return err(self.line, format!("{name} takes {what}, {} given", self.positional.len()));
        }
        self.positional
            .iter()
            .map(|a| match a {
                Arg::Str(s) => Ok(vec![s.clone()]),
                Arg::List(l) => Ok(l.clone()),
                _ => err(self.line, format!("{name}: expected a string or a string list")),
            })
            .collect()
    }

    fn string(&self, name: &str, at: usize) -> Result<String, CompileError> {
        match self.positional.get(at) {
            Some(Arg::Str(s)) => Ok(s.clone()),
            Some(Arg::List(l)) if l.len() == 1 => Ok(l[0].clone()),
            _ => err(self.line, format!("{name}: expected a string")),
        }
    }
}

const MATCH_TAGS: &[(&str, bool)] = &[
    ("comparator", true),
    ("is", false),
    ("contains", false),
    ("matches", false),
    ("regex", false),
    ("count", true),
    ("value", true),
];
const ADDRESS_TAGS: &[(&str, bool)] =
    &[("all", false), ("localpart", false), ("domain", false), ("user", false), ("detail", false)];

impl Compiler {
    fn need(&self, ext: &str, line: usize, what: &str) -> Result<(), CompileError> {
        if self.required.contains(ext) { Ok(()) } else { err(line, format!("{what} needs require \"{ext}\"")) }
    }

    fn block(&mut self, nodes: &[Node]) -> Result<Vec<Command>, CompileError> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < nodes.len() {
            let n = &nodes[i];
            i += 1;
            if n.name != "require" {
                self.requires_done = true;
            }
            if n.block.is_some() && !matches!(n.name.as_str(), "if" | "elsif" | "else") {
                return err(n.line, format!("{} takes no block", n.name));
            }
            if !n.tests.is_empty() && !matches!(n.name.as_str(), "if" | "elsif") {
                return err(n.line, format!("{} takes no test", n.name));
            }
            let c = match n.name.as_str() {
                "require" => {
                    if self.requires_done {
                        return err(n.line, "require must come before every other command");
                    }
                    for ext in Args::split(n, &[])?.lists("require", 1)?.remove(0) {
                        if !EXTENSIONS.contains(&ext.as_str()) {
                            return err(n.line, format!("the extension \"{ext}\" is not supported"));
                        }
                        self.required.insert(ext);
                    }
                    continue;
                }
                "if" => {
                    let mut branches = vec![self.branch(n)?];
                    let mut otherwise = None;
                    while let Some(next) = nodes.get(i) {
                        match next.name.as_str() {
                            "elsif" => branches.push(self.branch(next)?),
                            "else" => {
                                if !next.args.is_empty() || !next.tests.is_empty() {
                                    return err(next.line, "else takes no test");
                                }
                                let Some(b) = &next.block else { return err(next.line, "else needs a block") };
                                otherwise = Some(self.block(b)?);
                                i += 1;
                                break;
                            }
                            _ => break,
                        }
                        i += 1;
                    }
                    Command::If { branches, otherwise }
                }
                "elsif" | "else" => return err(n.line, format!("{} without an if before it", n.name)),
                "stop" => {
                    Args::split(n, &[])?.lists("stop", 0)?;
                    Command::Stop
                }
                "discard" => {
                    Args::split(n, &[])?.lists("discard", 0)?;
                    Command::Discard
                }
                "keep" => {
                    let a = Args::split(n, &[("flags", true)])?;
                    a.lists("keep", 0)?;
                    let flags = a.list_value("flags")?;
                    if flags.is_some() {
                        self.need("imap4flags", n.line, "keep :flags")?;
                    }
                    Command::Keep { flags }
                }
                "fileinto" => {
                    self.need("fileinto", n.line, "fileinto")?;
                    let a = Args::split(n, &[("flags", true), ("copy", false)])?;
                    a.lists("fileinto", 1)?;
                    let flags = a.list_value("flags")?;
                    if flags.is_some() {
                        self.need("imap4flags", n.line, "fileinto :flags")?;
                    }
                    if a.has("copy") {
                        self.need("copy", n.line, "fileinto :copy")?;
                    }
                    Command::FileInto { folder: a.string("fileinto", 0)?, flags, copy: a.has("copy") }
                }
                "set" => {
                    self.need("variables", n.line, "set")?;
                    let names = [
                        ("lower", Modifier::Lower),
                        ("upper", Modifier::Upper),
                        ("lowerfirst", Modifier::LowerFirst),
                        ("upperfirst", Modifier::UpperFirst),
                        ("quotewildcard", Modifier::QuoteWildcard),
                        ("quoteregex", Modifier::QuoteRegex),
                        ("length", Modifier::Length),
                    ];
                    let takes: Vec<(&str, bool)> = names.iter().map(|(n, _)| (*n, false)).collect();
                    let a = Args::split(n, &takes)?;
                    a.lists("set", 2)?;
                    let mut modifiers: Vec<Modifier> =
                        names.iter().filter(|(t, _)| a.has(t)).map(|(_, m)| *m).collect();
                    if modifiers.contains(&Modifier::QuoteRegex) {
                        self.need("regex", n.line, "set :quoteregex")?;
                    }
                    modifiers.sort_by_key(|m| std::cmp::Reverse(m.precedence()));
                    if modifiers.windows(2).any(|w| w[0].precedence() == w[1].precedence()) {
                        return err(n.line, "set: two modifiers of the same precedence (like :lower and :upper)");
                    }
                    let name = a.string("set", 0)?;
                    if !valid_variable(&name) {
                        return err(n.line, format!("set: {name:?} is not a variable name"));
                    }
                    Command::Set { name: name.to_ascii_lowercase(), value: a.string("set", 1)?, modifiers }
                }
                "setflag" | "addflag" | "removeflag" => {
                    self.need("imap4flags", n.line, &n.name)?;
                    let a = Args::split(n, &[])?;
                    let (var, flags) = match a.positional.len() {
                        1 => (None, a.lists(&n.name, 1)?.remove(0)),
                        2 => {
                            let mut l = a.lists(&n.name, 2)?;
                            let var = a.string(&n.name, 0)?;
                            if !valid_variable(&var) {
                                return err(n.line, format!("{}: {var:?} is not a variable name", n.name));
                            }
                            (Some(var.to_ascii_lowercase()), l.remove(1))
                        }
                        _ => {
                            return err(
                                n.line,
                                format!("{} takes a list of flags, after a variable name or not", n.name),
                            );
                        }
                    };
                    let op = match n.name.as_str() {
                        "setflag" => FlagOp::Set,
                        "addflag" => FlagOp::Add,
                        _ => FlagOp::Remove,
                    };
                    Command::Flags { op, var, flags }
                }
                other => return err(n.line, format!("unknown command {other:?}")),
            };
            out.push(c);
        }
        Ok(out)
    }

    fn branch(&mut self, n: &Node) -> Result<(Test, Vec<Command>), CompileError> {
        if !n.args.is_empty() || n.tests.len() != 1 {
            return err(n.line, format!("{} takes one test", n.name));
        }
        let Some(b) = &n.block else { return err(n.line, format!("{} needs a block", n.name)) };
        Ok((self.test(&n.tests[0])?, self.block(b)?))
    }

    fn matcher(&self, a: &Args, name: &str) -> Result<Matcher, CompileError> {
        let line = a.line;
        let cmp = match a.string_value("comparator")?.as_deref() {
            None | Some("i;ascii-casemap") => Comparator::AsciiCasemap,
            Some("i;octet") => Comparator::Octet,
            Some("i;ascii-numeric") => {
                self.need("comparator-i;ascii-numeric", line, "the comparator i;ascii-numeric")?;
                Comparator::AsciiNumeric
            }
            Some(other) => return err(line, format!("{name}: the comparator {other:?} is not supported")),
        };
        let kinds: Vec<&str> =
            ["is", "contains", "matches", "regex", "count", "value"].into_iter().filter(|t| a.has(t)).collect();
        if kinds.len() > 1 {
            return err(line, format!("{name}: one match type at most (:{} and :{})", kinds[0], kinds[1]));
        }
        let relation = |tag: &str| -> Result<Relation, CompileError> {
            self.need("relational", line, &format!(":{tag}"))?;
            match a.string_value(tag)?.map(|s| s.to_ascii_lowercase()).as_deref() {
                Some("gt") => Ok(Relation::Gt),
                Some("ge") => Ok(Relation::Ge),
                Some("lt") => Ok(Relation::Lt),
                Some("le") => Ok(Relation::Le),
                Some("eq") => Ok(Relation::Eq),
                Some("ne") => Ok(Relation::Ne),
                _ => err(line, format!("{name}: :{tag} takes one of \"gt\", \"ge\", \"lt\", \"le\", \"eq\", \"ne\"")),
            }
        };
        let kind = match kinds.first().copied() {
            None | Some("is") => MatchKind::Is,
            Some("contains") => MatchKind::Contains,
            Some("matches") => MatchKind::Matches,
            Some("regex") => {
                self.need("regex", line, ":regex")?;
                MatchKind::Regex
            }
            Some("count") => MatchKind::Count(relation("count")?),
            _ => MatchKind::Value(relation("value")?),
        };
        if cmp == Comparator::AsciiNumeric
            && matches!(kind, MatchKind::Contains | MatchKind::Matches | MatchKind::Regex)
        {
            return err(
                line,
                format!("{name}: i;ascii-numeric compares numbers; it cannot do :contains, :matches or :regex"),
            );
        }
        Ok(Matcher { cmp, kind })
    }

    fn address_part(&self, a: &Args, name: &str) -> Result<AddressPart, CompileError> {
        let parts: Vec<&str> =
            ["all", "localpart", "domain", "user", "detail"].into_iter().filter(|t| a.has(t)).collect();
        if parts.len() > 1 {
            return err(a.line, format!("{name}: one address part at most"));
        }
        Ok(match parts.first().copied() {
            None | Some("all") => AddressPart::All,
            Some("localpart") => AddressPart::LocalPart,
            Some("domain") => AddressPart::Domain,
            Some(p) => {
                self.need("subaddress", a.line, &format!(":{p}"))?;
                if p == "user" { AddressPart::User } else { AddressPart::Detail }
            }
        })
    }

    fn zone(&self, a: &Args) -> Result<Zone, CompileError> {
        match (a.string_value("zone")?, a.has("originalzone")) {
            (Some(_), true) => err(a.line, ":zone and :originalzone cannot go together"),
            (Some(z), false) => parse_zone(&z).map(Zone::Fixed).ok_or_else(|| CompileError {
                line: a.line,
                message: format!(":zone {z:?} is not a zone like \"+0100\" or \"-0530\""),
            }),
            (None, true) => Ok(Zone::Original),
            (None, false) => Ok(Zone::Local),
        }
    }

    fn test(&self, n: &Node) -> Result<Test, CompileError> {
        let with = |extra: &[(&'static str, bool)]| -> Vec<(&'static str, bool)> {
            MATCH_TAGS.iter().chain(extra.iter()).copied().collect()
        };
        if !n.tests.is_empty() && !matches!(n.name.as_str(), "allof" | "anyof" | "not") {
            return err(n.line, format!("{} takes no test", n.name));
        }
        let t = match n.name.as_str() {
            "true" | "false" => {
                Args::split(n, &[])?.lists(&n.name, 0)?;
                if n.name == "true" { Test::True } else { Test::False }
            }
            "not" => {
                if !n.args.is_empty() || n.tests.len() != 1 {
                    return err(n.line, "not takes one test");
                }
                Test::Not(Box::new(self.test(&n.tests[0])?))
            }
            "allof" | "anyof" => {
                if !n.args.is_empty() || n.tests.is_empty() {
                    return err(n.line, format!("{} takes a list of tests", n.name));
                }
                let tests = n.tests.iter().map(|t| self.test(t)).collect::<Result<Vec<_>, _>>()?;
                if n.name == "allof" { Test::AllOf(tests) } else { Test::AnyOf(tests) }
            }
            "exists" => Test::Exists(Args::split(n, &[])?.lists("exists", 1)?.remove(0)),
            "size" => {
                let a = Args::split(n, &[("over", false), ("under", false)])?;
                let over = match (a.has("over"), a.has("under")) {
                    (true, false) => true,
                    (false, true) => false,
                    _ => return err(n.line, "size takes :over or :under"),
                };
                let [Arg::Number(limit)] = a.positional.as_slice() else {
                    return err(n.line, "size takes a number (like 100K)");
                };
                Test::Size { over, limit: *limit }
            }
            "header" => {
                let a = Args::split(n, MATCH_TAGS)?;
                let mut l = a.lists("header", 2)?;
                let keys = l.remove(1);
                Test::Header { matcher: self.matcher(&a, "header")?, headers: l.remove(0), keys }
            }
            "address" | "envelope" => {
                if n.name == "envelope" {
                    self.need("envelope", n.line, "envelope")?;
                }
                let a = Args::split(n, &with(ADDRESS_TAGS))?;
                let mut l = a.lists(&n.name, 2)?;
                let keys = l.remove(1);
                let (part, matcher) = (self.address_part(&a, &n.name)?, self.matcher(&a, &n.name)?);
                if n.name == "address" {
                    Test::Address { part, matcher, headers: l.remove(0), keys }
                } else {
                    let parts = l.remove(0);
                    if let Some(p) = parts.iter().find(|p| !["from", "to"].contains(&p.to_ascii_lowercase().as_str())) {
                        return err(n.line, format!("envelope: {p:?} is not an envelope part (\"from\" or \"to\")"));
                    }
                    Test::Envelope { part, matcher, parts, keys }
                }
            }
            "body" => {
                self.need("body", n.line, "body")?;
                let a = Args::split(n, &with(&[("raw", false), ("text", false), ("content", true)]))?;
                let transform = match (a.has("raw"), a.has("text"), a.list_value("content")?) {
                    (true, false, None) => BodyTransform::Raw,
                    (false, _, None) => BodyTransform::Text,
                    (false, false, Some(types)) => BodyTransform::Content(types),
                    _ => return err(n.line, "body: one of :raw, :text and :content at most"),
                };
                let keys = a.lists("body", 1)?.remove(0);
                Test::Body { transform, matcher: self.matcher(&a, "body")?, keys }
            }
            "date" | "currentdate" => {
                self.need("date", n.line, &n.name)?;
                let mut extra = vec![("zone", true)];
                if n.name == "date" {
                    extra.push(("originalzone", false));
                }
                let a = Args::split(n, &with(&extra))?;
                let (zone, matcher) = (self.zone(&a)?, self.matcher(&a, &n.name)?);
                if n.name == "date" {
                    let keys = a.lists("date", 3)?.remove(2);
                    let (header, part) = (a.string("date", 0)?, a.string("date", 1)?);
                    check_date_part(&part, n.line)?;
                    Test::Date { zone, matcher, header, part, keys }
                } else {
                    let keys = a.lists("currentdate", 2)?.remove(1);
                    let part = a.string("currentdate", 0)?;
                    check_date_part(&part, n.line)?;
                    Test::CurrentDate { zone, matcher, part, keys }
                }
            }
            "string" => {
                self.need("variables", n.line, "string")?;
                let a = Args::split(n, MATCH_TAGS)?;
                let mut l = a.lists("string", 2)?;
                let keys = l.remove(1);
                Test::String { matcher: self.matcher(&a, "string")?, sources: l.remove(0), keys }
            }
            "hasflag" => {
                self.need("imap4flags", n.line, "hasflag")?;
                let a = Args::split(n, MATCH_TAGS)?;
                let (vars, keys) = match a.positional.len() {
                    1 => (Vec::new(), a.lists("hasflag", 1)?.remove(0)),
                    _ => {
                        let mut l = a.lists("hasflag", 2)?;
                        let keys = l.remove(1);
                        (l.remove(0).into_iter().map(|v| v.to_ascii_lowercase()).collect(), keys)
                    }
                };
                Test::HasFlag { matcher: self.matcher(&a, "hasflag")?, vars, keys }
            }
            other => return err(n.line, format!("unknown test {other:?}")),
        };
        self.check_keys(&t, n.line)?;
        Ok(t)
    }

    /// A `:regex` key holding no variable is compiled now, so that a bad one is a compile error.
    fn check_keys(&self, t: &Test, line: usize) -> Result<(), CompileError> {
        let (matcher, keys) = match t {
            Test::Address { matcher, keys, .. }
            | Test::Envelope { matcher, keys, .. }
            | Test::Header { matcher, keys, .. }
            | Test::Body { matcher, keys, .. }
            | Test::Date { matcher, keys, .. }
            | Test::CurrentDate { matcher, keys, .. }
            | Test::String { matcher, keys, .. }
            | Test::HasFlag { matcher, keys, .. } => (matcher, keys),
            _ => return Ok(()),
        };
        if matcher.kind == MatchKind::Regex {
            let variables = self.required.contains("variables");
            for k in keys.iter().filter(|k| !(variables && k.contains("${"))) {
                crate::matching::regex(k, matcher.cmp).map_err(|e| CompileError { line, message: e })?;
            }
        }
        Ok(())
    }
}

/// `+0100` to minutes east of UTC.
pub fn parse_zone(z: &str) -> Option<i32> {
    let b = z.as_bytes();
    if b.len() != 5 || !(b[0] == b'+' || b[0] == b'-') || !b[1..].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let (h, m): (i32, i32) = (z[1..3].parse().ok()?, z[3..5].parse().ok()?);
    if h > 23 || m > 59 {
        return None;
    }
    Some(if b[0] == b'-' { -(h * 60 + m) } else { h * 60 + m })
}

/// The date parts of RFC 5260 4.
pub const DATE_PARTS: &[&str] = &[
    "year", "month", "day", "date", "julian", "hour", "minute", "second", "time", "iso8601", "std11", "zone", "weekday",
];

fn check_date_part(p: &str, line: usize) -> Result<(), CompileError> {
    // One holding a variable is checked when it is known (an unknown part matches nothing).
    if DATE_PARTS.contains(&p.to_ascii_lowercase().as_str()) || p.contains("${") {
        Ok(())
    } else {
        err(line, format!("{p:?} is not a date part (one of {})", DATE_PARTS.join(", ")))
    }
}

/// A variable name (RFC 5229 3): an identifier.
pub fn valid_variable(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}
