//! Where webhooks may go. A tenant admin chooses a webhook's URL, and the server makes the
//! request from inside the operator's network, so without a rule a hook could reach the
//! server's own loopback, the private network around it or a cloud metadata endpoint (SSRF).
//!
//! By default a webhook may only reach public addresses: not loopback, private (RFC 1918,
//! `fc00::/7`), link-local (`169.254.0.0/16`, where cloud metadata lives, `fe80::/10`), shared
//! (`100.64.0.0/10`), unspecified, documentation, benchmarking, multicast or broadcast ones.
//! `[server.hooks] allow_private_destinations = true` lifts that (one machine, a trusted team);
//! `allowed_destinations` lists exceptions: host names (any address they resolve to is then
//! allowed), IP addresses and CIDR blocks.
//!
//! The rule is applied where the connection is made: the hook client's DNS resolver drops the
//! addresses it forbids (so a name that resolves to a public address at creation and to an
//! internal one later is still refused), and a URL whose host is an IP address is checked before
//! the request. The client follows no redirects and uses no proxy, so nothing bypasses it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The operator's rule for webhook destinations, parsed from `[server.hooks]`.
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    allow_private: bool,
    /// Lower-case host names allowed whatever they resolve to.
    names: Vec<String>,
    /// Address blocks allowed even when private: (network, prefix length).
    nets: Vec<(IpAddr, u8)>,
}

impl Destinations {
    /// Parses the settings; an entry that is neither a host name, an IP address nor a CIDR
    /// block is refused with the setting's name.
    pub fn new(allow_private: bool, allowed: &[String]) -> Result<Self, String> {
        let mut d = Destinations {
            allow_private,
            ..Destinations::default()
        };
        for entry in allowed {
            let e = entry.trim();
            if let Some((addr, len)) = e.split_once('/') {
                let ip: IpAddr = addr.parse().map_err(|_| bad_entry(entry))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let len: u8 = len
                    .parse()
                    .ok()
                    .filter(|l| *l <= max)
                    .ok_or_else(|| bad_entry(entry))?;
                d.nets.push((ip, len));
            } else if let Ok(ip) = e.parse::<IpAddr>() {
                d.nets.push((ip, if ip.is_ipv4() { 32 } else { 128 }));
            } else if valid_host_name(e) {
                d.names.push(e.to_ascii_lowercase());
            } else {
                return Err(bad_entry(entry));
            }
        }
        Ok(d)
    }

    /// Whether a webhook may connect to `ip`.
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allow_private || is_public(ip) || self.nets.iter().any(|(n, l)| in_net(ip, *n, *l))
    }

    /// Whether every address of `host` is allowed because of its name.
    fn name_allowed(&self, host: &str) -> bool {
        self.allow_private
            || self
                .names
                .iter()
                .any(|n| n.eq_ignore_ascii_case(host.trim_end_matches('.')))
    }

    /// Checks a webhook URL's host without resolving it: an IP address must be allowed, and
    /// `localhost` (which always means this machine) is refused like 127.0.0.1. A name is
    /// checked again, with what it resolves to, at every connection.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        let Some(host) = url.host_str() else {
            return Err("the webhook URL has no host".to_string());
        };
        // An IPv6 host is written in brackets.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.check_ip(host, ip);
        }
        let lower = host.trim_end_matches('.').to_ascii_lowercase();
        if (lower == "localhost" || lower.ends_with(".localhost")) && !self.name_allowed(&lower) {
            return Err(refusal(&lower, "loopback"));
        }
        Ok(())
    }

    fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), String> {
        if self.ip_allowed(ip) {
            return Ok(());
        }
        Err(refusal(host, kind_of(canonical(ip))))
    }

    /// The DNS resolver of the hook client, which applies this rule to every connection.
    pub fn resolver(self: &Arc<Self>) -> GuardedResolver {
        GuardedResolver(self.clone())
    }
}

fn bad_entry(entry: &str) -> String {
    format!(
        "server.hooks.allowed_destinations: '{entry}' is not a host name, an IP address or a \
         CIDR block such as 10.0.0.0/8"
    )
}

fn refusal(host: &str, kind: &str) -> String {
    format!(
        "webhook destination '{host}' is a {kind} address, and webhooks may only reach public \
         addresses: the operator can allow it with [server.hooks] allowed_destinations = \
         [\"{host}\"] (or allow_private_destinations = true on a trusted single machine)"
    )
}

fn valid_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, canonical(net)) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// What kind of non-public address `ip` is (for the refusal), or `public`.
fn kind_of(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(v4) => kind_v4(v4),
        IpAddr::V6(v6) => kind_v6(v6),
    }
}

fn kind_v4(ip: Ipv4Addr) -> &'static str {
    let o = ip.octets();
    if ip.is_loopback() {
        "loopback"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local (cloud metadata)"
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        "shared (carrier-grade NAT)"
    } else if ip.is_unspecified() || o[0] == 0 {
        "unspecified"
    } else if ip.is_broadcast() || ip.is_multicast() || o[0] >= 240 {
        "broadcast, multicast or reserved"
    } else if ip.is_documentation() || (o[0] == 198 && (o[1] & 0xfe) == 18) || o[..3] == [192, 0, 0]
    {
        "documentation, benchmarking or protocol"
    } else {
        "public"
    }
}

fn kind_v6(ip: Ipv6Addr) -> &'static str {
    let s = ip.segments();
    if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() {
        "unspecified"
    } else if (s[0] & 0xfe00) == 0xfc00 {
        "private (unique local)"
    } else if (s[0] & 0xffc0) == 0xfe80 {
        "link-local"
    } else if ip.is_multicast() {
        "multicast"
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        "documentation"
    } else if s[0] == 0x64 && s[1] == 0xff9b {
        // NAT64 maps IPv4 into this block; which IPv4 address it reaches is not checkable here.
        "NAT64"
    } else if s[..6] == [0, 0, 0, 0, 0, 0] {
        // IPv4-compatible (deprecated) addresses.
        "IPv4-compatible"
    } else {
        "public"
    }
}

fn is_public(ip: IpAddr) -> bool {
    kind_of(ip) == "public"
}

/// The hook client's resolver: the system's answer, less the addresses the rule forbids; an
/// error that says why when none is left.
#[derive(Clone)]
pub struct GuardedResolver(Arc<Destinations>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let rule = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if rule.name_allowed(&host) {
                let addrs: Addrs = Box::new(found.into_iter());
                return Ok(addrs);
            }
            let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
                found.into_iter().partition(|a| rule.ip_allowed(a.ip()));
            if allowed.is_empty()
                && let Some(first) = refused.first()
            {
                let why = refusal(&host, kind_of(canonical(first.ip())));
                return Err(format!("{host} resolves to {}: {why}", first.ip()).into());
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_by_default() {
        let d = Destinations::new(false, &[]).unwrap();
        for bad in [
            "http://127.0.0.1:8080/h",
            "http://10.1.2.3/h",
            "http://172.16.0.1/h",
            "http://192.168.1.1/h",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/h",
            "http://0.0.0.0/h",
            "http://[::1]/h",
            "http://[fd00::1]/h",
            "http://[fe80::1]/h",
            "http://[::ffff:127.0.0.1]/h",
            "http://localhost:9000/h",
            "http://api.localhost/h",
            "http://224.0.0.1/h",
        ] {
            let e = d.check_url(&url(bad)).expect_err(bad);
            assert!(e.contains("allowed_destinations"), "{bad}: {e}");
        }
        for good in [
            "https://93.184.215.14/h",
            "https://hooks.example.com/h",
            "https://[2606:4700::1111]/h",
        ] {
            d.check_url(&url(good)).expect(good);
        }
    }

    #[test]
    fn exceptions_by_block_address_and_name() {
        let allowed = [
            "10.20.0.0/16".to_string(),
            "192.168.1.7".to_string(),
            "Hooks.Corp.Internal".to_string(),
            "fd00:1::/32".to_string(),
        ];
        let d = Destinations::new(false, &allowed).unwrap();
        d.check_url(&url("http://10.20.3.4/h")).unwrap();
        assert!(d.check_url(&url("http://10.21.3.4/h")).is_err());
        d.check_url(&url("http://192.168.1.7/h")).unwrap();
        assert!(d.check_url(&url("http://192.168.1.8/h")).is_err());
        d.check_url(&url("http://[fd00:1:2::5]/h")).unwrap();
        assert!(d.name_allowed("hooks.corp.internal."));
        assert!(!d.name_allowed("other.corp.internal"));
        let open = Destinations::new(true, &[]).unwrap();
        open.check_url(&url("http://127.0.0.1:1/h")).unwrap();
        open.check_url(&url("http://localhost/h")).unwrap();
    }

    #[test]
    fn bad_entries_are_refused_with_the_setting() {
        for bad in ["10.0.0.0/33", "not a host", "::1/129", "a..b", "10.0.0.1/x"] {
            let e = Destinations::new(false, &[bad.to_string()]).expect_err(bad);
            assert!(e.contains("allowed_destinations"), "{e}");
        }
    }

    #[tokio::test]
    async fn the_resolver_drops_forbidden_addresses() {
        let d = Arc::new(Destinations::new(false, &[]).unwrap());
        let r = d.resolver();
        let err = match r.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost resolved through the guard"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("loopback"), "{err}");
        let named = Arc::new(Destinations::new(false, &["localhost".to_string()]).unwrap());
        let addrs: Vec<SocketAddr> = named
            .resolver()
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().any(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
