//! Sieve (RFC 5228) for Pillarbox's `fetch`: a script compiled once, then run over each message
//! to say where it goes. Supported extensions: fileinto, envelope, body (RFC 5173), variables
//! (RFC 5229), regex (draft-ietf-sieve-regex), date (RFC 5260), relational (RFC 5231),
//! subaddress (RFC 5233), imap4flags (RFC 5232), copy (RFC 3894), encoded-character, and the
//! comparators i;octet, i;ascii-casemap and i;ascii-numeric.
//!
//! Nothing here sends mail: `redirect`, `reject` and `vacation` belong to a server, not to a
//! client filing its own downloads, and are refused as unknown commands.
//!
//! ```
//! let script = pillarbox_sieve::Script::compile(r#"
//!     require ["fileinto", "variables"];
//!     if header :matches "List-Id" "*<*.*>" { fileinto "lists.${2}"; }
//! "#).expect("a valid script");
//! let env = pillarbox_sieve::Environment::default();
//! let out = script.run(b"List-Id: Rust users <rust.example.org>\r\n\r\nhi\r\n", &env).expect("runs");
//! assert_eq!(out.deliveries[0].folder.as_deref(), Some("lists.rust"));
//! ```

mod compile;
mod lex;
mod matching;
mod parse;
mod run;

pub use run::MAX_VALUE;

/// A script that does not compile: the line, and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct CompileError {
    pub line: usize,
    pub message: String,
}

/// A script that failed while running over a message (the message goes to the inbox).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RuntimeError(pub String);

/// What a script runs with beside the message.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// The envelope's sender (`""` for the null sender) and recipient, where known: a POP3
    /// client learns them from the Return-Path and Delivered-To headers its server added.
    pub from: Option<String>,
    pub to: Option<String>,
    /// The time now (seconds since the epoch), for `currentdate`.
    pub now: i64,
    /// The local zone, in minutes east of UTC, for `date` and `currentdate` without `:zone`.
    pub zone_minutes: i32,
    /// The message's size for `size`, where the text given differs from it (a store's LF line
    /// ends for a message whose size, RFC 5322's, counts CRLF); else the text's length.
    pub size: Option<u64>,
}

impl Environment {
    /// The envelope from the headers a delivering server adds (Return-Path, then Delivered-To
    /// or X-Original-To), the clock and the local zone of this machine.
    pub fn of_message(raw: &[u8]) -> Self {
        use mailparse::MailHeaderMap;
        let now = chrono::Local::now();
        let mut env =
            Self { now: now.timestamp(), zone_minutes: now.offset().local_minus_utc() / 60, ..Self::default() };
        // LF line ends (a store's) count as CRLF, as on the wire.
        if !raw.contains(&b'\r') {
            env.size = Some(raw.len() as u64 + raw.iter().filter(|&&b| b == b'\n').count() as u64);
        }
        if let Ok((headers, _)) = mailparse::parse_headers(raw) {
            let bare = |v: String| v.trim().trim_start_matches('<').trim_end_matches('>').trim().to_owned();
            env.from = headers.get_first_value("Return-Path").map(bare);
            env.to =
                headers.get_first_value("Delivered-To").or_else(|| headers.get_first_value("X-Original-To")).map(bare);
        }
        env
    }
}

/// Where a message goes: a folder (`None` for the inbox) with the flags it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub folder: Option<String>,
    pub flags: Vec<String>,
}

/// The result of a script over one message: where it is stored, once per folder, in the order
/// the script said. No delivery at all means the script discarded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub deliveries: Vec<Delivery>,
    /// `discard` ran (the message may still be stored, by a keep or fileinto before or after).
    pub discarded: bool,
}

#[derive(Debug)]
pub struct Script {
    commands: Vec<compile::Command>,
    variables: bool,
    extensions: Vec<String>,
    /// `:matches` and `:regex` keys as compiled, for the next messages.
    patterns: std::sync::Mutex<matching::Patterns>,
}

impl Clone for Script {
    fn clone(&self) -> Self {
        Self {
            commands: self.commands.clone(),
            variables: self.variables,
            extensions: self.extensions.clone(),
            patterns: std::sync::Mutex::default(),
        }
    }
}

impl Script {
    /// Parse and check a script.
    pub fn compile(text: &str) -> Result<Self, CompileError> {
        let tokens = lex::tokens(text)?;
        let mut nodes = parse::commands(&tokens)?;
        if requires(&nodes, "encoded-character") {
            for n in &mut nodes {
                decode_encoded_characters(n)?;
            }
        }
        let c = compile::compile(&nodes)?;
        let mut extensions: Vec<String> = c.required.iter().cloned().collect();
        extensions.sort();
        Ok(Self {
            commands: c.commands,
            variables: c.required.contains("variables"),
            extensions,
            patterns: std::sync::Mutex::default(),
        })
    }

    /// The extensions the script requires.
    pub fn extensions(&self) -> &[String] {
        &self.extensions
    }

    /// Run the script over a message (its whole text, headers and body).
    pub fn run(&self, message: &[u8], env: &Environment) -> Result<Outcome, RuntimeError> {
        let msg = run::Message::new(message);
        // A run that panicked left nothing half-done in the cache: compiled patterns only.
        let mut patterns = self.patterns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        run::Run::new(&msg, env, self.variables, &mut patterns).all(&self.commands)
    }
}

/// Whether the script's leading `require`s name this extension.
fn requires(nodes: &[parse::Node], ext: &str) -> bool {
    nodes.iter().take_while(|n| n.name == "require").any(|n| {
        n.args.iter().any(|a| match a {
            parse::Arg::Str(s) => s == ext,
            parse::Arg::List(l) => l.iter().any(|s| s == ext),
            _ => false,
        })
    })
}

/// `${hex:...}` and `${unicode:...}` in every string (RFC 5228 2.4.2.4).
fn decode_encoded_characters(n: &mut parse::Node) -> Result<(), CompileError> {
    let line = n.line;
    let fix = |s: &mut String| -> Result<(), CompileError> {
        *s = encoded_characters(s).map_err(|message| CompileError { line, message })?;
        Ok(())
    };
    for a in &mut n.args {
        match a {
            parse::Arg::Str(s) => fix(s)?,
            parse::Arg::List(l) => l.iter_mut().try_for_each(fix)?,
            _ => {}
        }
    }
    for t in &mut n.tests {
        decode_encoded_characters(t)?;
    }
    for c in n.block.iter_mut().flatten() {
        decode_encoded_characters(c)?;
    }
    Ok(())
}

fn encoded_characters(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let lower = after.get(..8).unwrap_or(after).to_ascii_lowercase();
        let (hex, skip) = if lower.starts_with("hex:") {
            (true, 4)
        } else if lower.starts_with("unicode:") {
            (false, 8)
        } else {
            out.push_str("${");
            rest = after;
            continue;
        };
        let Some(end) = after.find('}') else {
            out.push_str("${");
            rest = after;
            continue;
        };
        let body = &after[skip..end];
        let units: Option<Vec<u32>> = body.split_ascii_whitespace().map(|u| u32::from_str_radix(u, 16).ok()).collect();
        match units {
            // Not an encoding after all (RFC 5228: left as it is).
            None => {
                out.push_str("${");
                rest = after;
                continue;
            }
            Some(units) if hex => {
                let bytes: Option<Vec<u8>> = units.iter().map(|&u| u8::try_from(u).ok()).collect();
                let bytes = bytes.ok_or_else(|| format!("${{hex:{body}}}: each octet is at most two hex digits"))?;
                out.push_str(&String::from_utf8(bytes).map_err(|_| format!("${{hex:{body}}} is not UTF-8"))?);
            }
            Some(units) => {
                for u in units {
                    out.push(
                        char::from_u32(u).ok_or_else(|| format!("${{unicode:{body}}}: {u:X} is not a character"))?,
                    );
                }
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
