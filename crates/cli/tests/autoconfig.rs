//! Mail clients that set themselves up from an address: Thunderbird's autoconfig file and
//! Outlook's Autodiscover answer, served over HTTPS with a certificate for the autoconfig name
//! (SNI), plain HTTP redirecting there, and the DNS records `pillarbox domain dns` prints.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::certs::{CURRENT, TestCa};
use common::{Pillarbox, require_tool};

/// A server for customer.test: HTTPS and HTTP listeners, a certificate for its autoconfig and
/// autodiscover names, retention of 14 days, OAuth2 not configured.
fn server() -> (Pillarbox, TestCa) {
    let mut pb = Pillarbox::new();
    let dir = pb.data().join("names");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let ca = TestCa::new(&dir);
    let pair = ca.issue(&dir, "auto", &["autoconfig.customer.test", "autodiscover.customer.test"], CURRENT);
    pb.edit_config("https = []", "https = [\"127.0.0.1:0\"]");
    pb.edit_config("http = []", "http = [\"127.0.0.1:0\"]");
    pb.edit_config("domains = []", "domains = [\"customer.test\"]");
    pb.edit_config("pop_host = \"\"", "pop_host = \"pop.customer.test\"");
    pb.edit_config("expire = \"never\"", "expire = \"14\"");
    let mut config = std::fs::read_to_string(pb.config_path()).expect("config");
    config.push_str("\n[domains.\"virtual.test\"]\nnames = [\"pop.virtual.test\"]\n");
    config.push_str(&format!(
        "\n[tls.names.\"autoconfig.customer.test\"]\ncert = \"{0}\"\nkey = \"{1}\"\n\n\
         [tls.names.\"autodiscover.customer.test\"]\ncert = \"{0}\"\nkey = \"{1}\"\n",
        pair.cert.display(),
        pair.key.display()
    ));
    std::fs::write(pb.config_path(), config).expect("config");
    pb.start();
    (pb, ca)
}

/// curl to `name` (resolved to the server) at `path`, trusting only the test CA: status, body.
fn curl(pb: &Pillarbox, ca: &TestCa, name: &str, path: &str, extra: &[&str]) -> (u16, String) {
    require_tool("curl");
    let port = pb.https.expect("https").port();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
        .arg(&ca.pem)
        .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
        .args(extra)
        .arg(format!("https://{name}:{port}{path}"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status");
    (code.parse().expect("code"), body.to_owned())
}

fn thunderbird_reads(xml: &str) -> Vec<String> {
    let mut child = Command::new("python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/autoconfig_check.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().expect("stdin").write_all(xml.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("check");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "Thunderbird would refuse it: {text}\n{xml}");
    text.lines().map(str::to_owned).collect()
}

#[test]
fn thunderbird_and_outlook_find_the_pop3_settings_over_https() {
    let (pb, ca) = server();
    let (pop3, pop3s) = (pb.pop3.expect("pop3").port(), pb.pop3s.expect("pop3s").port());

    let (status, xml) =
        curl(&pb, &ca, "autoconfig.customer.test", "/mail/config-v1.1.xml?emailaddress=alice%40customer.test", &[]);
    assert_eq!(status, 200, "{xml}");
    let servers = thunderbird_reads(&xml);
    assert_eq!(
        servers,
        [
            format!("pop3 pop.customer.test SSL {pop3s} %EMAILLOCALPART% password-cleartext true 14"),
            format!("pop3 pop.customer.test STARTTLS {pop3} %EMAILLOCALPART% password-cleartext true 14"),
        ],
        "implicit TLS first, STLS second, the logins offered, the retention"
    );
    assert!(xml.contains("<hostname>smtp.customer.test</hostname>"), "the outgoing server: {xml}");
    // The well-known URL at the domain itself, by the Host it was asked at.
    let (status, same) =
        curl(&pb, &ca, "autoconfig.customer.test", "/.well-known/autoconfig/mail/config-v1.1.xml", &[]);
    assert_eq!((status, same), (200, xml));
    // A virtual domain: its users log in with the whole address.
    let (status, xml) =
        curl(&pb, &ca, "autoconfig.customer.test", "/mail/config-v1.1.xml?emailaddress=bob%40virtual.test", &[]);
    assert_eq!(status, 200, "{xml}");
    assert!(thunderbird_reads(&xml).iter().all(|l| l.contains(" %EMAILADDRESS% ")), "{xml}");
    // Not a domain of this server.
    let (status, _) =
        curl(&pb, &ca, "autoconfig.customer.test", "/mail/config-v1.1.xml?emailaddress=bob%40elsewhere.test", &[]);
    assert_eq!(status, 404);
    // Domains added while the server runs: one whose retention is 0 (delete after download),
    // answered for its alias too; one whose POP3 is off, not answered.
    for args in [
        &["domain", "add", "hosted.test", "--expire", "0", "--alias", "hosted-alias.test"][..],
        &["domain", "add", "closed.test", "--pop3", "off"],
    ] {
        let out = pb.run(args, b"");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    for address in ["carol%40hosted.test", "carol%40hosted-alias.test"] {
        let path = format!("/mail/config-v1.1.xml?emailaddress={address}");
        let (status, xml) = curl(&pb, &ca, "autoconfig.customer.test", &path, &[]);
        assert_eq!(status, 200, "{xml}");
        let servers = thunderbird_reads(&xml);
        assert!(servers.iter().all(|l| l.ends_with(" %EMAILADDRESS% password-cleartext false -")), "{servers:?}");
    }
    let (status, _) =
        curl(&pb, &ca, "autoconfig.customer.test", "/mail/config-v1.1.xml?emailaddress=dan%40closed.test", &[]);
    assert_eq!(status, 404, "no offer for a domain whose POP3 is off");

    // Outlook: a POSTed Autodiscover request.
    let request = "<?xml version=\"1.0\" encoding=\"utf-8\"?><Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006\"><Request><EMailAddress>alice@customer.test</EMailAddress><AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>";
    let (status, answer) = curl(
        &pb,
        &ca,
        "autodiscover.customer.test",
        "/Autodiscover/Autodiscover.xml",
        &["-H", "Content-Type: text/xml", "--data-binary", request],
    );
    assert_eq!(status, 200, "{answer}");
    let script = "import sys, xml.etree.ElementTree as ET\n\
                  ns = {'r': 'http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a'}\n\
                  doc = ET.fromstring(sys.argv[1])\n\
                  for p in doc.findall('.//r:Protocol', ns):\n\
                  \x20   print(*(p.findtext('r:' + f, namespaces=ns) for f in ('Type', 'Server', 'Port', 'LoginName', 'SSL', 'SPA')))\n";
    let protocols = Command::new("python3").args(["-c", script, &answer]).output().expect("python3");
    let protocols = String::from_utf8_lossy(&protocols.stdout).into_owned();
    assert!(protocols.contains(&format!("POP3 pop.customer.test {pop3s} alice on off")), "{protocols}\n{answer}");
    assert!(protocols.contains("SMTP smtp.customer.test 587"), "{protocols}");

    // Plain HTTP sends the client to HTTPS, method and all.
    let http = pb.http.expect("http");
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "-H", "Host: autoconfig.customer.test"])
        .arg(format!("http://{http}/mail/config-v1.1.xml?emailaddress=alice%40customer.test"))
        .output()
        .expect("curl");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        said,
        format!(
            "308 https://autoconfig.customer.test:{}/mail/config-v1.1.xml?emailaddress=alice%40customer.test",
            pb.https.expect("https").port()
        )
    );
}

#[test]
fn domain_dns_prints_the_records_clients_look_up() {
    let (pb, _ca) = server();
    let out = pb.run(&["domain", "dns", "customer.test"], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let zone = String::from_utf8_lossy(&out.stdout).into_owned();
    // The configuration's ports (the test's are from the configuration file, not the ones the
    // running server was given on its command line).
    for record in [
        "_pop3s._tcp.customer.test. 3600 IN SRV 0 1 1995 pop.customer.test.",
        "_pop3._tcp.customer.test. 3600 IN SRV 10 1 1110 pop.customer.test.",
        "autoconfig.customer.test. 3600 IN CNAME pop.customer.test.",
        "_autodiscover._tcp.customer.test. 3600 IN SRV 0 1 0 pop.customer.test.",
    ] {
        assert!(zone.contains(record), "{record}\n{zone}");
    }
    let out = pb.run(&["domain", "dns", "other.test"], b"");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a domain of this server"));
}

/// `account add` on an address whose domain has nothing but its autoconfig listener: no SRV
/// records, no usual names, a POP3S port nobody would guess. The private DNS server knows only
/// autoconfig.customer.test and pop.customer.test.
#[test]
fn account_add_finds_the_server_through_the_domains_autoconfig_alone() {
    require_tool("curl");
    let ip = "127.44.3.1";
    let mut pb = Pillarbox::new();
    pb.add_user("me", common::PASSWORD);
    pb.deliver("me", &common::message(1));
    let dir = pb.data().join("names");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let ca = TestCa::new(&dir);
    let auto = ca.issue(&dir, "auto", &["autoconfig.customer.test"], CURRENT);
    let pop = ca.issue(&dir, "pop", &["pop.customer.test"], CURRENT);
    pb.edit_config("https = []", &format!("https = [\"{ip}:443\"]"));
    pb.edit_config("domains = []", "domains = [\"customer.test\", \"other.test\"]");
    pb.edit_config("pop_host = \"\"", "pop_host = \"pop.customer.test\"");
    let mx = ca.issue(&dir, "mx", &["autoconfig.mailhost.test"], CURRENT);
    let mut config = std::fs::read_to_string(pb.config_path()).expect("config");
    for (name, pair) in
        [("autoconfig.customer.test", &auto), ("pop.customer.test", &pop), ("autoconfig.mailhost.test", &mx)]
    {
        config.push_str(&format!(
            "\n[tls.names.\"{name}\"]\ncert = \"{}\"\nkey = \"{}\"\n",
            pair.cert.display(),
            pair.key.display()
        ));
    }
    std::fs::write(pb.config_path(), config).expect("config");
    pb.start_on(ip, &[]);
    let dns = common::dns::Dns::start(
        "customer.test",
        &[
            format!("--host-record=autoconfig.customer.test,{ip}"),
            format!("--host-record=pop.customer.test,{ip}"),
            // other.test's mail runs at mailhost.test, whose autoconfig names pop.customer.test.
            "--mx-host=other.test,mx1.mailhost.test,10".into(),
            format!("--host-record=autoconfig.mailhost.test,{ip}"),
        ],
    );
    let work = tempfile::tempdir().expect("tempdir");
    let add = |address: &str| {
        Command::new(common::bin())
            .args(["account", "add", address, "--password-env", "PB_PASSWORD", "--keep", "delete"])
            .arg("--deliver-maildir")
            .arg(work.path().join("mail"))
            .arg("--accounts-file")
            .arg(work.path().join("accounts.toml"))
            .args(["--dns-server", &dns.addr.to_string()])
            .env("PB_PASSWORD", common::PASSWORD)
            .env("SSL_CERT_FILE", &ca.pem)
            .env("XDG_STATE_HOME", work.path().join("state"))
            .stdin(Stdio::null())
            .output()
            .expect("account add")
    };
    // Found through the MX's domain, outside other.test: not used without the user's word.
    let out = add("me@other.test");
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("via the autoconfig file at https://autoconfig.mailhost.test/mail/config-v1.1.xml")
            || said.contains("the autoconfig file at https://autoconfig.mailhost.test/mail/config-v1.1.xml names"),
        "{said}"
    );
    assert!(
        said.contains("did not come over HTTPS from other.test itself")
            && said.contains("not used without confirmation"),
        "{said}"
    );

    let out = add("me@customer.test");
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    let port = pb.pop3s.expect("pop3s").port();
    assert!(
        said.contains(&format!("Found pop.customer.test:{port} (implicit TLS), via the autoconfig file at https://autoconfig.customer.test/mail/config-v1.1.xml")),
        "{said}"
    );
    let saved = std::fs::read_to_string(work.path().join("accounts.toml")).expect("saved");
    assert!(saved.contains("host = \"pop.customer.test\"") && saved.contains(&format!("port = {port}")), "{saved}");
    assert!(saved.contains("username = \"me\""), "the autoconfig file's user name: {saved}");
}

/// iOS and macOS Mail: a configuration profile, signed with the certificate of the name it was
/// asked at, as `openssl smime -verify` checks it against the test CA, with the POP3 settings
/// Python's plistlib reads from it.
#[test]
fn apple_devices_get_a_signed_profile() {
    require_tool("openssl");
    let (pb, ca) = server();
    let port = pb.https.expect("https").port();
    let file = pb.data().join("alice.mobileconfig");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-f", "-o"])
        .arg(&file)
        .arg("--cacert")
        .arg(&ca.pem)
        .args(["--resolve", &format!("autoconfig.customer.test:{port}:127.0.0.1")])
        .arg(format!("https://autoconfig.customer.test:{port}/email.mobileconfig?emailaddress=alice%40customer.test"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plist = pb.data().join("alice.plist");
    let verify = |out: &std::path::Path| {
        Command::new("openssl")
            .args(["smime", "-verify", "-inform", "der", "-in"])
            .arg(&file)
            .arg("-CAfile")
            .arg(&ca.pem)
            .arg("-out")
            .arg(out)
            .output()
            .expect("openssl")
    };
    let out = verify(&plist);
    assert!(out.status.success(), "the signature checks out: {}", String::from_utf8_lossy(&out.stderr));
    let script = "import plistlib, sys\n\
                  p = plistlib.load(open(sys.argv[1], 'rb'))\n\
                  m = p['PayloadContent'][0]\n\
                  print(p['PayloadType'], m['PayloadType'], m['EmailAccountType'], m['IncomingMailServerHostName'],\n\
                  \x20     m['IncomingMailServerPortNumber'], m['IncomingMailServerUseSSL'], m['IncomingMailServerUsername'],\n\
                  \x20     m['OutgoingMailServerHostName'], m['EmailAddress'])\n";
    let out = Command::new("python3").args(["-c", script]).arg(&plist).output().expect("python3");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        said.trim(),
        format!(
            "Configuration com.apple.mail.managed EmailTypePOP pop.customer.test {} True alice smtp.customer.test alice@customer.test",
            pb.pop3s.expect("pop3s").port()
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Signed by the autoconfig name's certificate (a tampered profile does not verify).
    let mut der = std::fs::read(&file).expect("profile");
    let at = der.windows(12).position(|w| w == b"EmailTypePOP").expect("the plist inside");
    der[at] = b'X';
    std::fs::write(&file, der).expect("write");
    assert!(!verify(std::path::Path::new("/dev/null")).status.success(), "a changed profile is refused");
}
