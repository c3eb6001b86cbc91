//! Scripts that must not compile say where and why; no input makes the parser or the
//! interpreter panic, loop or grow without bound.

use pillarbox_sieve::{Environment, Script};
use proptest::prelude::*;

fn error(script: &str) -> (usize, String) {
    let e = Script::compile(script).expect_err("must not compile");
    (e.line, e.message)
}

#[test]
fn errors_name_the_line_and_the_fault() {
    let cases: &[(&str, usize, &str)] = &[
        ("keep;\nfileinto \"x\";", 2, "fileinto needs require \"fileinto\""),
        ("require \"vacation\";", 1, "the extension \"vacation\" is not supported"),
        ("keep;\nrequire \"fileinto\";", 2, "require must come before every other command"),
        ("if true {\n  keep;\n", 2, "'}' to close the block at the end of the script"),
        ("redirect \"a@b.example\";", 1, "unknown command \"redirect\""),
        ("if header :is \"a\" { keep; }", 1, "header takes 2 arguments, 1 given"),
        ("if header :is :contains \"a\" \"b\" { keep; }", 1, "one match type at most"),
        ("if size :over \"big\" { keep; }", 1, "size takes a number"),
        (
            "if header :comparator \"i;ascii-numeric\" :is \"a\" \"1\" { keep; }",
            1,
            "require \"comparator-i;ascii-numeric\"",
        ),
        ("require \"date\";\nif date :zone \"CET\" :is \"date\" \"hour\" \"09\" { keep; }", 2, "is not a zone"),
        ("require \"date\";\nif date :is \"date\" \"fortnight\" \"1\" { keep; }", 2, "is not a date part"),
        ("require \"variables\";\nset \"1x\" \"v\";", 2, "is not a variable name"),
        ("require \"variables\";\nset :lower :upper \"a\" \"v\";", 2, "same precedence"),
        ("else { keep; }", 1, "else without an if"),
        ("keep\nstop;", 1, "keep takes no test"),
        ("keep\n", 1, "expected ';' after keep at the end of the script"),
        ("if header :is \"a\" \"b\" keep;", 1, "if needs a block"),
        ("\"lonely string\";", 1, "unexpected string"),
        ("keep; /* unterminated", 1, "never closed"),
        ("if header :is \"subject\" \"é", 1, "never closed"),
        ("require \"relational\";\nif header :count \"over\" \"a\" \"1\" { keep; }", 2, ":count takes one of"),
        ("if anyof () { keep; }", 1, "expected a test"),
        ("discard :flags \"a\";", 1, "discard has no tag :flags"),
    ];
    for (script, line, text) in cases {
        let (l, m) = error(script);
        assert_eq!(l, *line, "{script:?}: {m}");
        assert!(m.contains(text), "{script:?}: {m:?} should say {text:?}");
    }
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let deep = format!("{}keep;{}", "if true {".repeat(10_000), "}".repeat(10_000));
    assert!(error(&deep).1.contains("nested"));
    let not = format!("if {}true {{ keep; }}", "not ".repeat(10_000));
    assert!(error(&not).1.contains("nested"));
    let lists = format!("if {}true{} {{ keep; }}", "anyof(".repeat(10_000), ")".repeat(10_000));
    assert!(error(&lists).1.contains("nested"));
}

#[test]
fn variables_cannot_grow_without_bound() {
    let mut script = String::from("require \"variables\";\nset \"a\" \"0123456789abcdef\";\n");
    for _ in 0..64 {
        script.push_str("set \"a\" \"${a}${a}\";\n");
    }
    script.push_str("set :length \"n\" \"${a}\";\nif string :value \"ge\" \"${n}\" \"0\" { keep; }");
    let script = format!("require \"relational\";\n{script}");
    let out = Script::compile(&script).expect("compiles").run(b"\r\n", &Environment::default()).expect("runs");
    assert_eq!(out.deliveries.len(), 1);
}

/// Scripts made of the language's own words in any order, and of any text: compiling never
/// panics, and a script that compiles runs over any message without panicking.
const WORDS: &[&str] = &[
    "require",
    "\"fileinto\"",
    "\"variables\"",
    "\"regex\"",
    "\"relational\"",
    "\"body\"",
    "\"date\"",
    "\"imap4flags\"",
    "\"envelope\"",
    "\"subaddress\"",
    "\"encoded-character\"",
    "[",
    "]",
    "(",
    ")",
    "{",
    "}",
    ",",
    ";",
    "if",
    "elsif",
    "else",
    "keep",
    "discard",
    "stop",
    "fileinto",
    "set",
    "addflag",
    "header",
    "address",
    "envelope",
    "body",
    "date",
    "currentdate",
    "string",
    "hasflag",
    "exists",
    "size",
    "allof",
    "anyof",
    "not",
    "true",
    "false",
    ":is",
    ":contains",
    ":matches",
    ":regex",
    ":count",
    ":value",
    "\"gt\"",
    ":comparator",
    "\"i;octet\"",
    ":over",
    "10K",
    ":domain",
    ":detail",
    ":raw",
    ":text",
    ":content",
    "\"subject\"",
    "\"*a?\\\\*\"",
    "\"${1}${a}\"",
    "\"(a|b)*\"",
    "\"${hex:41}\"",
    "text:\n..x\n.\n",
    "#c\n",
    ":flags",
    ":zone",
    "\"+0100\"",
    "\"date\"",
    "\"hour\"",
    "\"a\"",
];

fn message() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400),
        "(Subject|From|To|Date|List-Id|Content-Type): [ -~]{0,40}\r\n(From|X-A): [ -~]{0,30}\r\n\r\n[ -~\r\n]{0,200}"
            .prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn word_soup_never_panics(words in proptest::collection::vec(0..WORDS.len(), 0..40), msg in message()) {
        let script: Vec<&str> = words.iter().map(|&i| WORDS[i]).collect();
        if let Ok(s) = Script::compile(&script.join(" ")) {
            let _ = s.run(&msg, &Environment::default());
        }
    }

    #[test]
    fn any_text_never_panics(text in "\\PC{0,200}", msg in message()) {
        if let Ok(s) = Script::compile(&text) {
            let _ = s.run(&msg, &Environment::default());
        }
    }
}
