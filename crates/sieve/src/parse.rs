//! The grammar of RFC 5228 section 8.2, to a tree of generic commands and tests: what they mean
//! is checked by [`crate::compile`].

use crate::CompileError;
use crate::lex::{Lexed, Token};

/// Blocks and tests nested deeper than this are refused (the parser and interpreter recurse).
pub const MAX_NESTING: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Tag(String),
    Number(u64),
    Str(String),
    List(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub line: usize,
    pub args: Vec<Arg>,
    pub tests: Vec<Node>,
    /// A command's block (`None` for a command ended by `;`, and for tests).
    pub block: Option<Vec<Node>>,
}

struct Parser<'a> {
    t: &'a [Lexed],
    at: usize,
}

pub fn commands(t: &[Lexed]) -> Result<Vec<Node>, CompileError> {
    let mut p = Parser { t, at: 0 };
    let out = p.commands(0)?;
    if let Some(l) = p.t.get(p.at) {
        return Err(CompileError { line: l.line, message: format!("unexpected {}", show(&l.token)) });
    }
    Ok(out)
}

fn show(t: &Token) -> String {
    match t {
        Token::Identifier(s) => format!("word {s:?}"),
        Token::Tag(s) => format!("tag :{s}"),
        Token::Number(n) => format!("number {n}"),
        Token::Str(_) => "string".into(),
        Token::LeftBracket => "'['".into(),
        Token::RightBracket => "']'".into(),
        Token::LeftParen => "'('".into(),
        Token::RightParen => "')'".into(),
        Token::LeftBrace => "'{'".into(),
        Token::RightBrace => "'}'".into(),
        Token::Comma => "','".into(),
        Token::Semicolon => "';'".into(),
    }
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.t.get(self.at).map(|l| &l.token)
    }

    fn line(&self) -> usize {
        self.t.get(self.at).or_else(|| self.t.last()).map_or(1, |l| l.line)
    }

    fn err<T>(&self, message: String) -> Result<T, CompileError> {
        Err(CompileError { line: self.line(), message })
    }

    fn expect(&mut self, want: &Token, what: &str) -> Result<(), CompileError> {
        match self.peek() {
            Some(t) if t == want => {
                self.at += 1;
                Ok(())
            }
            Some(t) => self.err(format!("expected {what}, found {}", show(t))),
            None => self.err(format!("expected {what} at the end of the script")),
        }
    }

    /// Commands up to a `}` or the end.
    fn commands(&mut self, depth: usize) -> Result<Vec<Node>, CompileError> {
        if depth > MAX_NESTING {
            return self.err(format!("blocks are nested more than {MAX_NESTING} deep"));
        }
        let mut out = Vec::new();
        while let Some(Token::Identifier(name)) = self.peek() {
            let (name, line) = (name.clone(), self.line());
            self.at += 1;
            let (args, tests) = self.arguments(depth)?;
            let block = match self.peek() {
                Some(Token::Semicolon) => {
                    self.at += 1;
                    None
                }
                Some(Token::LeftBrace) => {
                    self.at += 1;
                    let inner = self.commands(depth + 1)?;
                    self.expect(&Token::RightBrace, "'}' to close the block")?;
                    Some(inner)
                }
                Some(t) => return self.err(format!("expected ';' or a block after {name}, found {}", show(t))),
                None => return self.err(format!("expected ';' after {name} at the end of the script")),
            };
            out.push(Node { name, line, args, tests, block });
        }
        Ok(out)
    }

    /// Arguments, then a test or a test list.
    fn arguments(&mut self, depth: usize) -> Result<(Vec<Arg>, Vec<Node>), CompileError> {
        let mut args = Vec::new();
        loop {
            match self.peek() {
                Some(Token::Tag(t)) => args.push(Arg::Tag(t.clone())),
                Some(Token::Number(n)) => args.push(Arg::Number(*n)),
                Some(Token::Str(s)) => args.push(Arg::Str(s.clone())),
                Some(Token::LeftBracket) => {
                    self.at += 1;
                    let mut list = Vec::new();
                    loop {
                        match self.peek() {
                            Some(Token::Str(s)) => list.push(s.clone()),
                            _ => return self.err("expected a string in the list".into()),
                        }
                        self.at += 1;
                        match self.peek() {
                            Some(Token::Comma) => self.at += 1,
                            Some(Token::RightBracket) => break,
                            _ => return self.err("expected ',' or ']' in the list".into()),
                        }
                    }
                    args.push(Arg::List(list));
                }
                _ => break,
            }
            self.at += 1;
        }
        let tests = match self.peek() {
            Some(Token::Identifier(_)) => vec![self.test(depth + 1)?],
            Some(Token::LeftParen) => {
                self.at += 1;
                let mut tests = vec![self.test(depth + 1)?];
                while self.peek() == Some(&Token::Comma) {
                    self.at += 1;
                    tests.push(self.test(depth + 1)?);
                }
                self.expect(&Token::RightParen, "')' to close the test list")?;
                tests
            }
            _ => Vec::new(),
        };
        Ok((args, tests))
    }

    fn test(&mut self, depth: usize) -> Result<Node, CompileError> {
        if depth > MAX_NESTING {
            return self.err(format!("tests are nested more than {MAX_NESTING} deep"));
        }
        let Some(Token::Identifier(name)) = self.peek() else {
            return self.err("expected a test".into());
        };
        let (name, line) = (name.clone(), self.line());
        self.at += 1;
        let (args, tests) = self.arguments(depth)?;
        Ok(Node { name, line, args, tests, block: None })
    }
}
