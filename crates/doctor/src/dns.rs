//! Name resolution for account setup and checks: addresses and SRV records (RFC 6186), with
//! failures told apart (the name does not exist, it has no address, the resolver did not answer).
//!
//! By default the system's resolver answers address lookups (so `/etc/hosts` and nsswitch count,
//! exactly as for `pillarbox fetch`), and DNS is asked directly only to explain a failure and for
//! SRV records. A resolver given by address (`--dns-server`) answers everything.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// NXDOMAIN: the name does not exist.
    #[error("{0} does not exist in DNS (NXDOMAIN)")]
    NoSuchName(String),
    /// The name exists, without a record of the asked type.
    #[error("{0} has no {1} record")]
    NoRecord(String, &'static str),
    /// No answer, or an answer that is not one.
    #[error("the DNS resolver failed for {0}: {1}")]
    Failed(String, String),
}

/// Longest wait for one lookup unless told otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One SRV target, in the order to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub target: String,
    pub port: u16,
    pub priority: u16,
    pub weight: u16,
}

#[derive(Clone)]
pub struct Resolver {
    dns: Result<TokioResolver, String>,
    /// Address lookups through the system's resolver first.
    system_first: bool,
    /// Longest wait for one lookup.
    timeout: Duration,
}

impl Resolver {
    /// The system's configuration (`/etc/resolv.conf`, the hosts file).
    pub fn system() -> Self {
        let dns = TokioResolver::builder_tokio().and_then(|b| b.build()).map_err(|e| e.to_string());
        Self { dns, system_first: true, timeout: DEFAULT_TIMEOUT }
    }

    /// Only the DNS server at `addr` (UDP and TCP), for a local or chosen resolver.
    pub fn server(addr: SocketAddr) -> Self {
        let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
            .into_iter()
            .map(|mut c| {
                c.port = addr.port();
                c
            })
            .collect();
        let config =
            ResolverConfig::from_parts(None, Vec::new(), vec![NameServerConfig::new(addr.ip(), true, connections)]);
        let dns = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .build()
            .map_err(|e| e.to_string());
        Self { dns, system_first: false, timeout: DEFAULT_TIMEOUT }
    }

    /// `PILLARBOX_DNS_SERVER` (an address, port 53 unless given) or the system's resolver.
    pub fn from_option(server: Option<&str>) -> Result<Self, String> {
        match server {
            None => Ok(Self::system()),
            Some(s) => {
                let addr =
                    s.parse::<SocketAddr>()
                        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                        .map_err(|_| format!("{s:?} is not a DNS server address (like 127.0.0.1:5353 or [::1]:53)"))?;
                Ok(Self::server(addr))
            }
        }
    }

    /// Give up on a lookup after `timeout` (the resolver's own retries take up to 15 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn dns(&self) -> Result<&TokioResolver, DnsError> {
        self.dns.as_ref().map_err(|e| DnsError::Failed("(resolver setup)".into(), e.clone()))
    }

    /// The addresses of `host` (an IP address is its own answer).
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if self.system_first
            && let Ok(found) = tokio::net::lookup_host((host, 0)).await
        {
            let mut ips: Vec<IpAddr> = found.map(|a| a.ip()).collect();
            ips.dedup();
            if !ips.is_empty() {
                return Ok(ips);
            }
        }
        let lookup = tokio::time::timeout(self.timeout, self.dns()?.lookup_ip(fqdn(host)))
            .await
            .map_err(|_| DnsError::Failed(host.to_owned(), format!("no answer within {:?}", self.timeout)))?;
        match lookup {
            Ok(found) => {
                let ips: Vec<IpAddr> = found.iter().collect();
                if ips.is_empty() { Err(DnsError::NoRecord(host.to_owned(), "A or AAAA")) } else { Ok(ips) }
            }
            Err(e) => Err(classify(host, "A or AAAA", &e)),
        }
    }

    /// The mail exchangers of `name`, most preferred first.
    pub async fn mx(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let found = tokio::time::timeout(self.timeout, self.dns()?.mx_lookup(fqdn(name)))
            .await
            .map_err(|_| DnsError::Failed(name.to_owned(), format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| classify(name, "MX", &e))?;
        let mut out: Vec<(u16, String)> = found
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(m) => Some((m.preference, m.exchange.to_ascii().trim_end_matches('.').to_ascii_lowercase())),
                _ => None,
            })
            .filter(|(_, h)| !h.is_empty())
            .collect();
        out.sort();
        Ok(out.into_iter().map(|(_, h)| h).collect())
    }

    /// The SRV records of `name` (like `_pop3s._tcp.example.com`), by priority, then weight
    /// (heaviest first). A single record with target "." means "no such service here" (RFC 2782):
    /// an empty list.
    pub async fn srv(&self, name: &str) -> Result<Vec<Srv>, DnsError> {
        let found = tokio::time::timeout(self.timeout, self.dns()?.srv_lookup(fqdn(name)))
            .await
            .map_err(|_| DnsError::Failed(name.to_owned(), format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| classify(name, "SRV", &e))?;
        let mut out: Vec<Srv> = found
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some(Srv {
                    target: s.target.to_ascii().trim_end_matches('.').to_owned(),
                    port: s.port,
                    priority: s.priority,
                    weight: s.weight,
                }),
                _ => None,
            })
            .filter(|s| !s.target.is_empty())
            .collect();
        out.sort_by_key(|s| (s.priority, std::cmp::Reverse(s.weight)));
        Ok(out)
    }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') { name.to_owned() } else { format!("{name}.") }
}

fn classify(name: &str, kind: &'static str, e: &NetError) -> DnsError {
    if e.is_nx_domain() {
        DnsError::NoSuchName(name.to_owned())
    } else if e.is_no_records_found() {
        DnsError::NoRecord(name.to_owned(), kind)
    } else {
        DnsError::Failed(name.to_owned(), e.to_string())
    }
}
