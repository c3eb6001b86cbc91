//! What a mail client is told when it sets itself up from an address: Thunderbird's
//! autoconfig file (clientConfig 1.1), Outlook's Autodiscover answer (POX), and the DNS records
//! that lead clients to them (`pillarbox domain dns`). The facts come from the configuration:
//! the POP3 listeners (implicit TLS first, STLS second), the login methods really offered, the
//! retention (`leaveMessagesOnServer`), and `[autoconfig]` for the outgoing server.

use pillarbox_auth::DomainSet;
use pillarbox_proto::server::Expire;

use crate::config::Config;

/// How mail clients should log in to one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub domain: String,
    pub pop_host: String,
    /// Implicit TLS (RFC 8314), the first choice.
    pub pop3s_port: Option<u16>,
    /// STLS on the plain port, the second.
    pub pop3_starttls_port: Option<u16>,
    /// Passwords over TLS (USER/PASS, PLAIN: what every client has).
    pub password: bool,
    /// OAUTHBEARER/XOAUTH2 with the identity provider's tokens.
    pub oauth2: bool,
    pub retention: Expire,
    /// Users log in with their whole address (the domain is a virtual one: not among
    /// `[delivery] domains`, whose users are named by the local part).
    pub whole_address: bool,
    pub smtp_host: String,
    pub smtp_port: u16,
    /// `starttls`, `implicit` or `none`.
    pub smtp_tls: String,
}

/// Whether autoconfiguration is answered for `domain`: a domain delivered here (or an alias of
/// one) whose users may use POP3; every domain when none is named anywhere.
pub fn served(domains: &DomainSet, domain: &str) -> bool {
    match domains.resolve(domain) {
        Some((_, r)) => r.pop3,
        None => domains.is_empty() && !domain.is_empty(),
    }
}

impl Offer {
    /// The offer for `domain` from a configuration and the domains delivered here (see
    /// [`served`]); `pop_host` is the name clients should use (see
    /// [`crate::config::AutoconfigSettings`]).
    pub fn new(config: &Config, domains: &DomainSet, domain: &str, pop_host: &str) -> Self {
        let record = domains.resolve(domain).map(|(_, r)| r);
        let a = &config.autoconfig;
        Offer {
            domain: domain.to_owned(),
            pop_host: a.pop_host.clone().unwrap_or_else(|| pop_host.to_owned()),
            pop3s_port: config.pop3s.first().map(|a| a.port()),
            pop3_starttls_port: config.tls.as_ref().and(config.pop3.first()).map(|a| a.port()),
            password: true,
            oauth2: config.oauth2.is_some(),
            retention: record.and_then(|r| r.expire).unwrap_or(config.expire),
            // Bare names are the users of `[delivery] domains` (and of every domain when none is
            // named); the others log in with their whole address.
            whole_address: record.is_some_and(|r| !r.local),
            smtp_host: a.smtp_host.clone().unwrap_or_else(|| format!("smtp.{domain}")),
            smtp_port: a.smtp_port,
            smtp_tls: a.smtp_tls.clone(),
        }
    }

    /// Thunderbird's names for the login methods, in the order to try: passwords (over TLS:
    /// "password-cleartext") first, since a client needs its own registration with an identity
    /// provider to use OAuth2.
    /// The user name to log in with, for `address`.
    pub fn login(&self, address: &str) -> String {
        match (self.whole_address, address.rsplit_once('@')) {
            (false, Some((local, _))) => local.to_owned(),
            _ => address.to_owned(),
        }
    }

    fn methods(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.password {
            v.push("password-cleartext");
        }
        if self.oauth2 {
            v.push("OAuth2");
        }
        v
    }
}

/// The POP3 server's name for clients: `[autoconfig] pop_host`, else the first DNS name of the
/// default certificate (the name a client can check), else `hostname`.
pub fn pop_host(config: &Config, certificates: Option<&crate::tls::CertSet>, hostname: &str) -> String {
    if let Some(h) = &config.autoconfig.pop_host {
        return h.clone();
    }
    let from_cert = certificates.and_then(|set| {
        let der = set.default_pair().cert.first()?.clone();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let san = cert.subject_alternative_name().ok().flatten()?;
        san.value.general_names.iter().find_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) if !d.starts_with('*') && d.contains('.') => {
                Some(d.to_string())
            }
            _ => None,
        })
    });
    from_cert.unwrap_or_else(|| hostname.to_owned())
}

/// `s` as XML text or attribute value.
pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Thunderbird's autoconfig file (clientConfig version 1.1) for `o`.
pub fn thunderbird(o: &Offer) -> String {
    let d = esc(&o.domain);
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<clientConfig version=\"1.1\">\n  <emailProvider id=\"{d}\">\n    \
         <domain>{d}</domain>\n    <displayName>{d} mail</displayName>\n    <displayShortName>{d}</displayShortName>\n"
    );
    let leave = match o.retention {
        // Retrieved messages go at QUIT: nothing can be left.
        Expire::Days(0) => "<leaveMessagesOnServer>false</leaveMessagesOnServer>".to_owned(),
        Expire::Days(n) => format!(
            "<leaveMessagesOnServer>true</leaveMessagesOnServer>\n        \
             <daysToLeaveMessagesOnServer>{n}</daysToLeaveMessagesOnServer>"
        ),
        Expire::Never => "<leaveMessagesOnServer>true</leaveMessagesOnServer>".to_owned(),
    };
    for (port, socket) in [(o.pop3s_port, "SSL"), (o.pop3_starttls_port, "STARTTLS")] {
        let Some(port) = port else { continue };
        x.push_str(&format!(
            "    <incomingServer type=\"pop3\">\n      <hostname>{}</hostname>\n      <port>{port}</port>\n      \
             <socketType>{socket}</socketType>\n      <username>{}</username>\n",
            esc(&o.pop_host),
            if o.whole_address { "%EMAILADDRESS%" } else { "%EMAILLOCALPART%" }
        ));
        for m in o.methods() {
            x.push_str(&format!("      <authentication>{m}</authentication>\n"));
        }
        x.push_str(&format!("      <pop3>\n        {leave}\n      </pop3>\n    </incomingServer>\n"));
    }
    let socket = match o.smtp_tls.as_str() {
        "implicit" => "SSL",
        "none" => "plain",
        _ => "STARTTLS",
    };
    x.push_str(&format!(
        "    <outgoingServer type=\"smtp\">\n      <hostname>{}</hostname>\n      <port>{}</port>\n      \
         <socketType>{socket}</socketType>\n      <username>%EMAILADDRESS%</username>\n      \
         <authentication>password-cleartext</authentication>\n    </outgoingServer>\n  </emailProvider>\n</clientConfig>\n",
        esc(&o.smtp_host),
        o.smtp_port
    ));
    x
}

/// The address an Autodiscover request (Outlook's "POX" schema) asks about: the text of its
/// `EMailAddress` element.
pub fn autodiscover_address(body: &str) -> Option<String> {
    let start = body.find("<EMailAddress>")? + "<EMailAddress>".len();
    let len = body[start..].find("</EMailAddress>")?;
    let a = body[start..start + len].trim();
    (a.contains('@') && !a.contains(['<', '&', '"', ' '])).then(|| a.to_owned())
}

/// Outlook's Autodiscover answer (POX, responseschema 2006a) for `address`: POP3 with SSL on,
/// SPA off, then SMTP.
pub fn autodiscover(o: &Offer, address: &str) -> String {
    let login = esc(&o.login(address));
    let mut protocols = String::new();
    if let Some(port) = o.pop3s_port.or(o.pop3_starttls_port) {
        let ssl = if o.pop3s_port.is_some() { "on" } else { "off" };
        let encryption = if o.pop3s_port.is_some() { "" } else { "        <Encryption>TLS</Encryption>\n" };
        protocols.push_str(&format!(
            "      <Protocol>\n        <Type>POP3</Type>\n        <Server>{}</Server>\n        <Port>{port}</Port>\n        \
             <LoginName>{login}</LoginName>\n        <DomainRequired>off</DomainRequired>\n        <SPA>off</SPA>\n        \
             <SSL>{ssl}</SSL>\n{encryption}        <AuthRequired>on</AuthRequired>\n      </Protocol>\n",
            esc(&o.pop_host)
        ));
    }
    let smtp_ssl = if o.smtp_tls == "none" { "off" } else { "on" };
    let encryption = if o.smtp_tls == "starttls" { "        <Encryption>TLS</Encryption>\n" } else { "" };
    protocols.push_str(&format!(
        "      <Protocol>\n        <Type>SMTP</Type>\n        <Server>{}</Server>\n        <Port>{}</Port>\n        \
         <LoginName>{}</LoginName>\n        <DomainRequired>off</DomainRequired>\n        <SPA>off</SPA>\n        \
         <SSL>{smtp_ssl}</SSL>\n{encryption}        <AuthRequired>on</AuthRequired>\n      </Protocol>\n",
        esc(&o.smtp_host),
        o.smtp_port,
        esc(address)
    ));
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006\">\n  \
         <Response xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a\">\n    \
         <Account>\n      <AccountType>email</AccountType>\n      <Action>settings</Action>\n{protocols}    </Account>\n  \
         </Response>\n</Autodiscover>\n"
    )
}

/// The DNS records (zone file syntax) that lead clients of `o.domain` here: RFC 6186 SRV
/// records for POP3S and POP3, and the names autoconfig and Autodiscover clients look up.
pub fn dns_records(o: &Offer, https_port: Option<u16>) -> String {
    let d = &o.domain;
    let host = format!("{}.", o.pop_host);
    let mut z = format!("; DNS records for {d}: mail clients find the POP3 server and their settings from these.\n");
    let srv = |name: &str, prio: u16, port: Option<u16>| match port {
        Some(p) => format!("_{name}._tcp.{d}. 3600 IN SRV {prio} 1 {p} {host}\n"),
        // RFC 6186 section 3.4: "." says the service is not offered.
        None => format!("_{name}._tcp.{d}. 3600 IN SRV 0 0 0 .\n"),
    };
    z.push_str(&srv("pop3s", 0, o.pop3s_port));
    z.push_str(&srv("pop3", 10, o.pop3_starttls_port));
    if let Some(port) = https_port {
        z.push_str(&format!("autoconfig.{d}. 3600 IN CNAME {host}\n"));
        z.push_str(&format!("autodiscover.{d}. 3600 IN CNAME {host}\n"));
        z.push_str(&format!("_autodiscover._tcp.{d}. 3600 IN SRV 0 1 {port} {host}\n"));
        z.push_str(&format!(
            "; The certificate on port {port} must name autoconfig.{d} and autodiscover.{d} ([tls.names]).\n"
        ));
    } else {
        z.push_str("; No [listen] https: autoconfig and Autodiscover are not served, so no records for them.\n");
    }
    z
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> Offer {
        Offer {
            domain: "example.com".into(),
            pop_host: "pop.example.com".into(),
            pop3s_port: Some(995),
            pop3_starttls_port: Some(110),
            password: true,
            oauth2: true,
            retention: Expire::Days(14),
            whole_address: false,
            smtp_host: "smtp.example.com".into(),
            smtp_port: 587,
            smtp_tls: "starttls".into(),
        }
    }

    #[test]
    fn thunderbird_gets_ssl_first_then_starttls_with_the_retention() {
        let x = thunderbird(&offer());
        let ssl = x.find("<socketType>SSL</socketType>").expect("SSL");
        let starttls = x.find("<socketType>STARTTLS</socketType>").expect("STARTTLS");
        assert!(ssl < starttls, "{x}");
        assert!(x.contains("<daysToLeaveMessagesOnServer>14</daysToLeaveMessagesOnServer>"));
        assert!(x.find("password-cleartext") < x.find("OAuth2"));
        assert!(x.contains("<outgoingServer type=\"smtp\">"));
        let x = thunderbird(&Offer { retention: Expire::Days(0), oauth2: false, pop3_starttls_port: None, ..offer() });
        assert!(x.contains("<leaveMessagesOnServer>false</leaveMessagesOnServer>") && !x.contains("OAuth2"));
        assert!(!x.contains("STARTTLS</socketType>\n      <username>%EMAILLOCALPART%"), "no STLS entry");
        // A virtual domain's users log in with their whole address.
        let x = thunderbird(&Offer { whole_address: true, ..offer() });
        assert!(x.contains("<username>%EMAILADDRESS%</username>") && !x.contains("%EMAILLOCALPART%"));
        assert_eq!(Offer { whole_address: true, ..offer() }.login("alice@example.com"), "alice@example.com");
        assert_eq!(offer().login("alice@example.com"), "alice");
    }

    #[test]
    fn autodiscover_reads_the_address_and_answers_pop3_with_ssl() {
        let req = "<?xml version=\"1.0\"?><Autodiscover xmlns=\"http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006\"><Request><EMailAddress>alice@example.com</EMailAddress><AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>";
        assert_eq!(autodiscover_address(req).as_deref(), Some("alice@example.com"));
        assert_eq!(autodiscover_address("<EMailAddress><x></EMailAddress>"), None);
        let a = autodiscover(&offer(), "alice@example.com");
        assert!(a.contains("<Type>POP3</Type>") && a.contains("<SSL>on</SSL>") && a.contains("<SPA>off</SPA>"));
        assert!(a.contains("<LoginName>alice</LoginName>") && a.contains("<Port>995</Port>"));
    }

    #[test]
    fn dns_records_name_the_services() {
        let z = dns_records(&offer(), Some(443));
        assert!(z.contains("_pop3s._tcp.example.com. 3600 IN SRV 0 1 995 pop.example.com."));
        assert!(z.contains("autoconfig.example.com. 3600 IN CNAME pop.example.com."));
        let z = dns_records(&Offer { pop3_starttls_port: None, ..offer() }, None);
        assert!(z.contains("_pop3._tcp.example.com. 3600 IN SRV 0 0 0 ."), "{z}");
    }
}
