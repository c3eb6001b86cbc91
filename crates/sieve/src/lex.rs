//! Tokens of a Sieve script (RFC 5228 section 8.1).

use crate::CompileError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Identifier(String),
    /// `:name`, without the colon, lowercased.
    Tag(String),
    Number(u64),
    /// A quoted or multi-line string, escapes and dot-stuffing undone.
    Str(String),
    LeftBracket,
    RightBracket,
    LeftParen,
    RightParen,
    LeftBrace,
    RightBrace,
    Comma,
    Semicolon,
}

/// A token and the line it starts on.
#[derive(Debug, Clone)]
pub struct Lexed {
    pub token: Token,
    pub line: usize,
}

pub fn tokens(text: &str) -> Result<Vec<Lexed>, CompileError> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let err = |line, message: String| CompileError { line, message };
    while i < b.len() {
        let start_line = line;
        let c = b[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b' ' | b'\t' | b'\r' => i += 1,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let Some(end) = text[i + 2..].find("*/") else {
                    return Err(err(start_line, "a comment /* is never closed".into()));
                };
                line += text[i..i + 2 + end].matches('\n').count();
                i += end + 4;
            }
            b'[' | b']' | b'(' | b')' | b'{' | b'}' | b',' | b';' => {
                let token = match c {
                    b'[' => Token::LeftBracket,
                    b']' => Token::RightBracket,
                    b'(' => Token::LeftParen,
                    b')' => Token::RightParen,
                    b'{' => Token::LeftBrace,
                    b'}' => Token::RightBrace,
                    b',' => Token::Comma,
                    _ => Token::Semicolon,
                };
                out.push(Lexed { token, line });
                i += 1;
            }
            b'"' => {
                let mut s = Vec::new();
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err(err(start_line, "a string is never closed (a missing \")".into())),
                        Some(b'"') => break,
                        Some(b'\\') if i + 1 < b.len() => {
                            // Any escaped octet stands for itself (RFC 5228 2.4.2).
                            if b[i + 1] == b'\n' {
                                line += 1;
                            }
                            s.push(b[i + 1]);
                            i += 2;
                        }
                        Some(&o) => {
                            if o == b'\n' {
                                line += 1;
                            }
                            s.push(o);
                            i += 1;
                        }
                    }
                }
                i += 1;
                out.push(Lexed { token: Token::Str(utf8(s, start_line)?), line: start_line });
            }
            b':' => {
                let n = word(&b[i + 1..]);
                if n == 0 {
                    return Err(err(line, "a lone ':' (a tag is a colon and a name, like :contains)".into()));
                }
                out.push(Lexed { token: Token::Tag(text[i + 1..i + 1 + n].to_ascii_lowercase()), line });
                i += 1 + n;
            }
            b'0'..=b'9' => {
                let n = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
                let digits = &text[i..i + n];
                i += n;
                let scale: u64 = match b.get(i).map(u8::to_ascii_uppercase) {
                    Some(b'K') => 1 << 10,
                    Some(b'M') => 1 << 20,
                    Some(b'G') => 1 << 30,
                    _ => 1,
                };
                if scale > 1 {
                    i += 1;
                }
                let value = digits
                    .parse::<u64>()
                    .ok()
                    .and_then(|v| v.checked_mul(scale))
                    .ok_or_else(|| err(line, format!("the number {digits} is too large")))?;
                out.push(Lexed { token: Token::Number(value), line });
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let n = word(&b[i..]);
                let name = &text[i..i + n];
                i += n;
                if name.eq_ignore_ascii_case("text") && b.get(i) == Some(&b':') {
                    let (s, end, lines) = multiline(text, i + 1).map_err(|m| err(start_line, m))?;
                    out.push(Lexed { token: Token::Str(s), line: start_line });
                    line += lines;
                    i = end;
                } else {
                    out.push(Lexed { token: Token::Identifier(name.to_ascii_lowercase()), line });
                }
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                return Err(err(line, format!("unexpected character {ch:?}")));
            }
        }
    }
    Ok(out)
}

/// The length of an identifier at the start of `b`.
fn word(b: &[u8]) -> usize {
    match b.first() {
        Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
            b.iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'_').count()
        }
        _ => 0,
    }
}

fn utf8(s: Vec<u8>, line: usize) -> Result<String, CompileError> {
    String::from_utf8(s).map_err(|_| CompileError { line, message: "a string is not valid UTF-8".into() })
}

/// `text:` up to a line holding a lone dot: (the text, where the script goes on, newlines
/// passed). Lines starting with a dot lose one (dot-stuffing); line ends become CRLF.
fn multiline(text: &str, mut i: usize) -> Result<(String, usize, usize), String> {
    let b = text.as_bytes();
    // Spaces, tabs and a # comment may follow `text:` on its line.
    while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
        i += 1;
    }
    if b.get(i) == Some(&b'#') {
        while i < b.len() && b[i] != b'\n' {
            i += 1;
        }
    }
    if b.get(i) == Some(&b'\r') {
        i += 1;
    }
    if b.get(i) != Some(&b'\n') {
        return Err("text: must end its line".into());
    }
    i += 1;
    let mut lines = 1;
    let mut out = String::new();
    loop {
        let Some(len) = text[i..].find('\n') else {
            return Err("a text: string is never ended by a line holding a single dot".into());
        };
        let raw = text[i..i + len].strip_suffix('\r').unwrap_or(&text[i..i + len]);
        i += len + 1;
        lines += 1;
        if raw == "." {
            return Ok((out, i, lines));
        }
        out.push_str(if raw.starts_with("..") { &raw[1..] } else { raw });
        out.push_str("\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(s: &str) -> Vec<Token> {
        tokens(s).expect("lexes").into_iter().map(|l| l.token).collect()
    }

    #[test]
    fn numbers_strings_tags_and_comments() {
        assert_eq!(
            kinds("size :OVER 100K; # a comment\n/* and\nanother */ \"a\\\"b\\\\c\\d\""),
            vec![
                Token::Identifier("size".into()),
                Token::Tag("over".into()),
                Token::Number(102_400),
                Token::Semicolon,
                Token::Str("a\"b\\cd".into()),
            ]
        );
        assert!(tokens("size :over 99999999999999999999G;").is_err());
        assert_eq!(tokens("\"open").expect_err("unclosed").line, 1);
        assert_eq!(tokens("\n\n/* never closed").expect_err("unclosed").line, 3);
    }

    #[test]
    fn multiline_strings_unstuff_dots() {
        let t = tokens("set \"a\" text: # comment\r\nline one\r\n..dot\r\n.\r\n;\nstop;").expect("lexes");
        assert_eq!(t[2].token, Token::Str("line one\r\n.dot\r\n".into()));
        assert_eq!(t[3].line, 5);
        assert_eq!(t[4].line, 6);
    }
}
