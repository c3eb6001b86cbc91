//! Transcript files: scripted client/server exchanges (`C:` / `S:` lines, as in the RFCs'
//! examples) that tests replay against the session core and against the running server. Shared
//! by two test binaries, each using part of it.
#![allow(dead_code)]

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The client sends this line (without CRLF).
    Send(String),
    /// The server's next line is exactly this (without CRLF).
    Expect(String),
    /// The server's next line starts with this.
    ExpectPrefix(String),
}

/// Parse a transcript; `#` lines and blank lines are comments.
pub fn parse(text: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (tag, rest) = line.split_at(line.len().min(2));
        let rest = rest.strip_prefix(' ').unwrap_or(rest).to_owned();
        steps.push(match tag {
            "C:" => Step::Send(rest),
            "S:" => Step::Expect(rest),
            "S~" => Step::ExpectPrefix(rest),
            _ => return Err(format!("line {}: expected C:, S: or S~", n + 1)),
        });
    }
    Ok(steps)
}

/// Replace `{apop:SECRET}` in a client line with the APOP digest for `timestamp`.
pub fn expand(line: &str, timestamp: Option<&str>) -> String {
    match (line.find("{apop:"), timestamp) {
        (Some(start), Some(ts)) => {
            let end = line[start..].find('}').map_or(line.len(), |e| start + e);
            let secret = &line[start + 6..end];
            let digest = pillarbox_proto::apop::digest(ts, secret.as_bytes());
            format!("{}{}{}", &line[..start], digest, &line[(end + 1).min(line.len())..])
        }
        _ => line.to_owned(),
    }
}

/// The `<...>` timestamp in a greeting line, if any.
pub fn greeting_timestamp(greeting: &str) -> Option<&str> {
    let start = greeting.find('<')?;
    let end = greeting[start..].find('>')? + start;
    Some(&greeting[start..=end])
}
