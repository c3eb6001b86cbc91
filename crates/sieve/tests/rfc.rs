//! Known answers: the RFCs' own example scripts over their example messages (and messages made
//! to tell each branch apart), checked for where each message goes.

use pillarbox_sieve::{Delivery, Environment, Outcome, Script};

/// RFC 5228 1.2, message A.
const MESSAGE_A: &str = "Date: Tue, 1 Apr 1997 09:06:31 -0800 (PST)\r\n\
From: coyote@desert.example.org\r\n\
To: roadrunner@acme.example.com\r\n\
Subject: I have a present for you\r\n\
\r\n\
Look, I'm sorry about the whole anvil thing, and I really\r\n\
didn't mean to try and drop it on you from the top of the\r\n\
cliff.  I want to try to make it up to you.\r\n\
--\r\n\
Wile E. Coyote   \"Super Genius\"   coyote@desert.example.org\r\n";

/// RFC 5228 1.2, message B.
const MESSAGE_B: &str = "From: youcouldberich!@reply-by-postal-mail.invalid\r\n\
Sender: b1ff@de.res.example.com\r\n\
To: rube@landru.example.com\r\n\
Date:  Mon, 31 Mar 1997 18:26:10 -0800\r\n\
Subject: $$$ YOU, TOO, CAN BE A MILLIONAIRE! $$$\r\n\
\r\n\
YOU MAY HAVE ALREADY WON TEN MILLION DOLLARS, BUT I DOUBT\r\n\
IT!  SO JUST POST THIS TO SIX HUNDRED NEWSGROUPS!\r\n";

fn env() -> Environment {
    Environment { now: 1_796_400_000, zone_minutes: 60, ..Environment::default() }
}

fn run(script: &str, message: &str) -> Outcome {
    Script::compile(script).expect("compiles").run(message.as_bytes(), &env()).expect("runs")
}

/// The folders a message goes to (`INBOX` for the inbox), none when discarded.
fn folders(script: &str, message: &str) -> Vec<String> {
    run(script, message).deliveries.into_iter().map(|d| d.folder.unwrap_or_else(|| "INBOX".into())).collect()
}

#[test]
fn rfc5228_if_elsif_else() {
    let script = r#"
        require "fileinto";
        if header :contains "from" "coyote" {
            discard;
        } elsif header :contains ["subject"] ["$$$"] {
            discard;
        } else {
            fileinto "INBOX";
        }"#;
    assert!(folders(script, MESSAGE_A).is_empty());
    assert!(folders(script, MESSAGE_B).is_empty());
    assert_eq!(folders(script, "From: friend@example.org\r\nSubject: hi\r\n\r\nhello\r\n"), ["INBOX"]);
}

#[test]
fn rfc5228_extended_example() {
    let script = r#"
        #
        # Example Sieve Filter
        # Declare any optional features or extension used by the script
        #
        require ["fileinto"];

        if header :is "Sender" "owner-ietf-mta-filters@imc.org"
                {
                fileinto "filter";  # move to "filter" mailbox
                }
        elsif address :DOMAIN :is ["From", "To"] "example.com"
                {
                keep;               # keep in "In" mailbox
                }
        elsif anyof (NOT address :all :contains
                       ["To", "Cc", "Bcc"] "me@example.com",
                     header :matches "subject"
                       ["*make*money*fast*", "*university*dipl*mas*"])
                {
                fileinto "spam";   # move to "spam" mailbox
                }
        else
                {
                # Move all other (non-company) mail to "personal"
                # mailbox.
                fileinto "personal";
                }
    "#;
    let list = "Sender: owner-ietf-mta-filters@imc.org\r\nTo: me@example.com\r\n\r\nx\r\n";
    let colleague = "From: Ann <ann@example.com>\r\nTo: me@example.org\r\n\r\nx\r\n";
    let spam = "From: x@spam.example\r\nTo: me@example.com.invalid\r\nSubject: Make lots of MONEY fast\r\n\r\nx\r\n";
    let not_to_me = "From: x@elsewhere.example\r\nTo: you@example.net\r\n\r\nx\r\n";
    let personal = "From: mum@family.example\r\nTo: all@family.example\r\nCc: Me <me@example.com>\r\n\r\nx\r\n";
    assert_eq!(folders(script, list), ["filter"]);
    assert_eq!(folders(script, colleague), ["INBOX"]);
    assert_eq!(folders(script, spam), ["spam"]);
    assert_eq!(folders(script, not_to_me), ["spam"]);
    assert_eq!(folders(script, personal), ["personal"]);
}

#[test]
fn rfc5228_tests_size_exists_allof_comparators() {
    assert!(folders("if size :over 100 { discard; }", MESSAGE_A).is_empty());
    assert_eq!(folders("if size :under 100 { discard; }", MESSAGE_A), ["INBOX"]);
    assert!(folders(r#"if exists ["From", "Date"] { discard; }"#, MESSAGE_A).is_empty());
    assert_eq!(folders(r#"if exists ["From", "X-Nothing"] { discard; }"#, MESSAGE_A), ["INBOX"]);
    let both = r#"if allof (header :contains "From" "coyote", header :contains "to" "roadrunner") { discard; }"#;
    assert!(folders(both, MESSAGE_A).is_empty());
    assert_eq!(folders(both, MESSAGE_B), ["INBOX"]);
    // i;octet is case-sensitive; the default, i;ascii-casemap, is not.
    let octet = r#"if header :comparator "i;octet" :contains "Subject" "millionaire" { discard; }"#;
    assert_eq!(folders(octet, MESSAGE_B), ["INBOX"]);
    assert!(folders(r#"if header :contains "Subject" "millionaire" { discard; }"#, MESSAGE_B).is_empty());
    // The address test sees the address, not the display name.
    assert_eq!(folders(r#"if address :is "from" "coyote" { discard; }"#, MESSAGE_A), ["INBOX"]);
    assert!(folders(r#"if address :localpart :is "from" "coyote" { discard; }"#, MESSAGE_A).is_empty());
    assert!(folders(r#"if address :domain :is "to" "ACME.example.com" { discard; }"#, MESSAGE_A).is_empty());
}

#[test]
fn keep_and_fileinto_twice_store_once_and_stop_stops() {
    let out = run(r#"require "fileinto"; keep; fileinto "a"; fileinto "a"; keep; stop; fileinto "b";"#, MESSAGE_A);
    assert_eq!(
        out.deliveries,
        [Delivery { folder: None, flags: vec![] }, Delivery { folder: Some("a".into()), flags: vec![] }]
    );
    // discard cancels only the implicit keep.
    assert_eq!(folders(r#"require "fileinto"; discard; fileinto "kept";"#, MESSAGE_A), ["kept"]);
    // :copy keeps the implicit keep.
    assert_eq!(folders(r#"require ["fileinto", "copy"]; fileinto :copy "archive";"#, MESSAGE_A), ["archive", "INBOX"]);
}

#[test]
fn rfc5229_variables_and_match_variables() {
    let script = r#"
        require ["fileinto", "variables"];
        if header :matches "List-ID" "*<*@*" {
            fileinto "INBOX.lists.${2}"; stop;
        }
        # Imagine the header
        # Subject: [acme-users] [fwd] version 1.0 is out
        if header :matches "Subject" "[*] *" {
            # ${1} will hold "acme-users",
            # ${2} will hold "[fwd] version 1.0 is out"
            fileinto "INBOX.lists.${1}"; stop;
        }
        # Imagine the header
        # To: coyote@ACME.Example.COM
        if address :matches ["To", "Cc"] ["coyote@**.com",
                "wile@**.com"] {
            # ${0} is the matching address
            # ${1} is always the empty string
            # ${2} is part of the domain name ("ACME.Example")
            fileinto "INBOX.business.${2}"; stop;
        } else {
            # Control wouldn't reach this block if any match was
            # successful, so no match variables are set at this
            # point.
        }
        if anyof (true, address :domain :matches "To" "*.com") {
            # The second test is never evaluated, so there are
            # still no match variables set.
            fileinto "none${1}"; stop;
        }"#;
    assert_eq!(folders(script, "List-ID: Sales <sales@lists.example.org>\r\n\r\nx\r\n"), ["INBOX.lists.sales"]);
    assert_eq!(
        folders(script, "Subject: [acme-users] [fwd] version 1.0 is out\r\n\r\nx\r\n"),
        ["INBOX.lists.acme-users"]
    );
    assert_eq!(folders(script, "To: coyote@ACME.Example.COM\r\n\r\nx\r\n"), ["INBOX.business.ACME.Example"]);
    assert_eq!(folders(script, "To: someone@example.com\r\n\r\nx\r\n"), ["none"]);
}

#[test]
fn rfc5229_set_modifiers_and_string() {
    let script = r#"
        require ["variables", "fileinto"];
        set "honorific"  "Mr";
        set "last_name"  "Coyote";
        set "vacation" text:
Dear ${HONORIFIC} ${last_name},
I'm out, please leave a message after the meep.
.
;
        set "a" "juMBlEd lETteRS";
        set :length "len" "${a}";
        set :lower "lower" "${a}";
        set :upperfirst "uf" "${a}";
        set :upperfirst :lower "ufl" "${a}";
        set :quotewildcard "qw" "Rock*";
        set "state" "${state} pending";
        if string :matches " ${state} " "* pending *" {
            fileinto "${len}|${lower}|${uf}|${ufl}|${qw}";
        }
        if string :is "${vacation}" "Dear Mr Coyote,${hex:0D 0A}I'm out, please leave a message after the meep.${hex:0d 0a}" {
            fileinto "letter";
        }
        if string :is "${unknown}" "" { fileinto "unknown is empty"; }
        if string :is "$${a}{b" "$juMBlEd lETteRS{b" { fileinto "literal dollars"; }
    "#;
    let script = format!("require \"encoded-character\";\n{script}");
    assert_eq!(
        folders(&script, MESSAGE_A),
        [r"15|jumbled letters|JuMBlEd lETteRS|Jumbled letters|Rock\*", "letter", "unknown is empty", "literal dollars"]
    );
}

#[test]
fn rfc5231_relational_counts_and_values() {
    let message = "Received: from a\r\nReceived: from b\r\nTo: foo@example.com.invalid, baz@example.com.invalid\r\n\
        Cc: qux@example.com.invalid\r\nFrom: bar@example.com.invalid\r\nSubject: example\r\nX-Priority: 1\r\n\r\nx\r\n";
    let yes = |test: &str| {
        let s = format!(
            "require [\"relational\", \"comparator-i;ascii-numeric\", \"fileinto\"]; if {test} {{ fileinto \"yes\"; }}"
        );
        folders(&s, message) == ["yes"]
    };
    assert!(yes(r#"address :count "ge" :comparator "i;ascii-numeric" ["to", "cc"] ["3"]"#));
    assert!(!yes(r#"header :count "ge" :comparator "i;ascii-numeric" ["received"] ["3"]"#));
    assert!(yes(r#"header :count "ge" :comparator "i;ascii-numeric" ["received", "subject"] ["3"]"#));
    assert!(!yes(r#"header :count "ge" :comparator "i;ascii-numeric" ["to", "cc"] ["3"]"#));
    assert!(yes(r#"header :value "lt" :comparator "i;ascii-numeric" ["x-priority"] ["3"]"#));
    assert!(!yes(r#"header :value "gt" :comparator "i;ascii-numeric" ["x-priority"] ["3"]"#));
    // A missing header has no value to compare: :value is false, :count counts zero.
    assert!(!yes(r#"header :value "ne" :comparator "i;ascii-numeric" ["x-nothing"] ["3"]"#));
    assert!(yes(r#"header :count "eq" :comparator "i;ascii-numeric" ["x-nothing"] ["0"]"#));
}

#[test]
fn rfc5233_subaddress_and_rfc5228_envelope() {
    let script = r#"
        require ["envelope", "subaddress", "fileinto"];
        if envelope :user "to" "postmaster" {
            fileinto "inbox.postmaster";
            stop;
        }
        if envelope :detail "to" "mta-filters" {
            fileinto "inbox.ietf-mta-filters";
        }
        if address :detail :is "to" "" { fileinto "empty detail"; }
        if envelope :is "from" "" { fileinto "bounce"; }
    "#;
    let compiled = Script::compile(script).expect("compiles");
    let to = |to: &str, from: &str, header: &str| -> Vec<Option<String>> {
        let env = Environment { to: Some(to.into()), from: Some(from.into()), ..env() };
        compiled.run(header.as_bytes(), &env).expect("runs").deliveries.into_iter().map(|d| d.folder).collect()
    };
    let plain = "To: ken@example.com\r\n\r\nx\r\n";
    assert_eq!(to("postmaster+web@example.com", "a@b.example", plain), [Some("inbox.postmaster".into())]);
    assert_eq!(to("ken+mta-filters@example.com", "a@b.example", plain), [Some("inbox.ietf-mta-filters".into())]);
    // No "+": no detail, so :detail matches nothing, not even "".
    assert_eq!(to("ken@example.com", "a@b.example", plain), [None]);
    assert_eq!(
        to("ken@example.com", "a@b.example", "To: ken+@example.com\r\n\r\nx\r\n"),
        [Some("empty detail".into())]
    );
    assert_eq!(to("ken@example.com", "", plain), [Some("bounce".into())]);
    // The size counts line ends as CRLF, whatever the stored text has.
    let lf = Environment::of_message(b"Subject: x\n\nhi\n");
    assert_eq!(lf.size, Some(18));
    assert_eq!(Environment::of_message(b"Subject: x\r\n\r\nhi\r\n").size, None);
    // From a message's own headers, as fetch learns the envelope.
    let env = Environment::of_message(b"Return-Path: <>\r\nDelivered-To: ken+mta-filters@example.com\r\n\r\nx\r\n");
    assert_eq!((env.from.as_deref(), env.to.as_deref()), (Some(""), Some("ken+mta-filters@example.com")));
}

#[test]
fn rfc5173_body() {
    let script = r#"
        require ["body", "fileinto"];
        # Save any message with any text MIME part that contains the
        # words "missile" or "coordinates" in the "secrets" folder.
        if body :content "text" :contains ["missile", "coordinates"] {
                fileinto "secrets";
        }
        # Save any message with an audio/mp3 MIME part in
        # the "jukebox" folder.
        if body :content "audio/mp3" :contains "" {
                fileinto "jukebox";
        }
        if body :raw :contains "Q29vcmRpbmF0ZXM" { fileinto "raw"; }
        if body :text :contains "the launch codes" { fileinto "text"; }
    "#;
    let mime = "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
        Content-Type: text/html\r\n\r\n<p>the <b>launch</b> codes</p>\r\n--b\r\n\
        Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\nQ29vcmRpbmF0ZXMgZm9sbG93\r\n--b\r\n\
        Content-Type: audio/mp3\r\nContent-Transfer-Encoding: base64\r\n\r\nSUQz\r\n--b--\r\n";
    assert_eq!(folders(script, mime), ["secrets", "jukebox", "raw", "text"]);
    assert_eq!(folders(script, MESSAGE_A), ["INBOX"]);
}

#[test]
fn rfc5232_imap4flags() {
    let script = r#"
        require ["fileinto", "imap4flags", "variables"];
        if size :over 200 {
            addflag "MyFlags" "Big";
            if header :is "From" "boss@company.example.com" {
                # The message will be marked as "\Flagged Big" when filed
                # into mailbox "Big messages"
                addflag "MyFlags" "\\Flagged";
            }
            fileinto :flags "${MyFlags}" "Big messages";
        }
        if header :is "From" "grandma@example.net" {
            addflag "MyFlags" ["\\Answered", "$MDNSent"];
            fileinto :flags "${MyFlags}" "GrandMa";
        }
        if hasflag :contains "MyFlags" "Big" { setflag "\\Seen"; removeflag "MyFlags" "Big"; }
        if hasflag :count "ge" :comparator "i;ascii-numeric" "MyFlags" "1" { keep :flags ["${MyFlags}", "$Counted"]; }
    "#;
    let script = format!("require [\"relational\", \"comparator-i;ascii-numeric\"];\n{script}");
    let big = format!("From: boss@company.example.com\r\nSubject: report\r\n\r\n{}\r\n", "x".repeat(300));
    let out = run(&script, &big);
    assert_eq!(
        out.deliveries,
        [
            Delivery { folder: Some("Big messages".into()), flags: vec!["Big".into(), "\\Flagged".into()] },
            Delivery { folder: None, flags: vec!["\\Flagged".into(), "$Counted".into()] },
        ]
    );
    let out = run(&script, "From: grandma@example.net\r\n\r\nhello\r\n");
    assert_eq!(
        out.deliveries,
        [
            Delivery { folder: Some("GrandMa".into()), flags: vec!["\\Answered".into(), "$MDNSent".into()] },
            Delivery { folder: None, flags: vec!["\\Answered".into(), "$MDNSent".into(), "$Counted".into()] },
        ]
    );
    // The implicit keep carries the internal flags.
    let out = run(r#"require "imap4flags"; addflag "\\Seen"; addflag ["a b", "\\SEEN"];"#, MESSAGE_A);
    assert_eq!(out.deliveries, [Delivery { folder: None, flags: vec!["\\Seen".into(), "a".into(), "b".into()] }]);
}

#[test]
fn rfc5260_date_and_currentdate() {
    let script = r#"
        require ["date", "relational", "fileinto"];
        if allof(header :is "from" "boss@example.com",
                 date :value "ge" :originalzone "date" "hour" "09",
                 date :value "lt" :originalzone "date" "hour" "17")
        {
            fileinto "urgent";
        }
        if date :is "date" "weekday" "1" { fileinto "monday"; }
        if date :zone "+0000" :is "date" "iso8601" "1997-03-31T18:26:10+00:00" { fileinto "iso utc"; }
        if date :zone "+0000" :is "date" "date" "1997-04-01" { fileinto "utc next day"; }
        if date :is "date" "zone" "+0100" { fileinto "local zone"; }
        if currentdate :value "ge" "date" "2026-12-01" { fileinto "recent"; }
        # The Modified Julian Day of 2026-12-04 (env()'s clock: 16:00 UTC, 08:00 at -0800).
        if currentdate :zone "-0800" :is "julian" "61378" { fileinto "julian"; }
        if currentdate :zone "+0900" :is "date" "2026-12-05" { fileinto "tomorrow in Tokyo"; }
    "#;
    // 10:26 in its own zone (-0800), 18:26 UTC, 19:26 in the local zone (+0100) of env().
    let at = |from: &str| format!("From: {from}\r\nDate: Mon, 31 Mar 1997 10:26:10 -0800\r\n\r\nx\r\n");
    assert_eq!(
        folders(script, &at("boss@example.com")),
        ["urgent", "monday", "iso utc", "local zone", "recent", "julian", "tomorrow in Tokyo"]
    );
    assert_eq!(folders(script, &at("someone@example.com"))[0], "monday");
}

#[test]
fn regex_match_type() {
    let script = r#"
        require ["regex", "variables", "fileinto"];
        if header :regex "Subject" "^\\[([a-z-]+)\\] (re|fwd): " {
            fileinto "lists.${1}.${2}";
        }
        if address :regex :domain "from" "(^|\\.)example\\.(com|org)$" { fileinto "example"; }
        set :quoteregex "q" "a.b*c";
        if string :regex "a.b*c" "^${q}$" { fileinto "quoted"; }
    "#;
    assert_eq!(
        folders(script, "From: a@mail.example.org\r\nSubject: [rust-users] Re: help\r\n\r\nx\r\n"),
        ["lists.rust-users.Re", "example", "quoted"]
    );
    let err = Script::compile(r#"require "regex"; if header :regex "Subject" "(" { stop; }"#).expect_err("bad regex");
    assert_eq!(err.line, 1);
    assert!(err.message.contains("regular expression"), "{err}");
}
