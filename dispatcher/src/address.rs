//! Server-side request forgery guard: a callback may not reach loopback,
//! private, link-local, unique-local or cloud-metadata addresses unless they
//! are allow-listed. The check runs on the address actually connected to —
//! names go through [`GuardedResolver`], whose answer is the only thing the
//! HTTP client connects to (so a name that re-resolves to another address
//! between check and connect gains nothing), and IP-literal URLs, which the
//! client never resolves, are checked by [`AddressPolicy::check_url`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A callback address that the policy refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub host: String,
    pub ip: IpAddr,
    pub class: &'static str,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "callback address refused: {} resolves to {}, a {} address (allow it with CHIME_CALLBACK_ALLOW)",
            self.host, self.ip, self.class
        )
    }
}

impl std::error::Error for Refused {}

/// Which callback addresses may be called.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    /// Networks allowed even though they are not public.
    pub allow: Vec<IpNet>,
}

impl AddressPolicy {
    /// Parses a comma-separated allow-list of CIDRs (`127.0.0.0/8, fd00::/8`);
    /// a bare address means just that address.
    pub fn parse_allow(list: &str) -> anyhow::Result<Vec<IpNet>> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| anyhow::anyhow!("callback allow-list: {s:?} is not a CIDR"))
            })
            .collect()
    }

    /// Ok if `ip` is public or allow-listed.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), Refused> {
        let Some(class) = non_public_class(ip) else {
            return Ok(());
        };
        if self.allow.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        Err(Refused {
            host: host.to_string(),
            ip,
            class,
        })
    }

    /// Checks a URL whose host is an IP literal (the HTTP client connects to
    /// those without resolving); names are left to [`GuardedResolver`].
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Ok(()),
        };
        self.check(url.host_str().unwrap_or_default(), ip)
    }
}

/// Why `ip` is not a public unicast address, if it is not.
pub fn non_public_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b) {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private",
        (169, 254) => "link-local (cloud metadata)",
        (0, _) => "unspecified",
        (100, 64..=127) => "shared (carrier-grade NAT, cloud metadata)",
        (192, 0) if c == 0 => "IETF-reserved (cloud metadata)",
        (198, 18..=19) => "benchmarking",
        (224..=239, _) => "multicast",
        (240..=255, _) => "reserved",
        _ => return None,
    })
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_class(v4);
    }
    let seg = ip.segments();
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach the IPv4 address inside.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_class(Ipv4Addr::from(((seg[6] as u32) << 16) | seg[7] as u32));
    }
    if seg[0] == 0x2002 {
        return v4_class(Ipv4Addr::from(((seg[1] as u32) << 16) | seg[2] as u32));
    }
    Some(match seg[0] {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() => "unspecified",
        0xfc00..=0xfdff => "unique-local (cloud metadata)",
        0xfe80..=0xfebf => "link-local",
        0xfec0..=0xfeff => "site-local",
        0xff00..=0xffff => "multicast",
        _ => return None,
    })
}

/// DNS resolver for the callback client: resolves with the system resolver
/// and hands the client only the addresses the policy allows.
pub struct GuardedResolver {
    pub policy: Arc<AddressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| match policy.check(&host, a.ip()) {
                    Ok(()) => true,
                    Err(r) => {
                        refused.get_or_insert(r);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(r)) => Err(Box::new(r) as _),
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

/// The refusal inside an HTTP client error, if that is what the error is.
pub fn refusal_in<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<Refused>() {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(ip: &str) -> bool {
        AddressPolicy::default()
            .check("h", ip.parse().unwrap())
            .is_err()
    }

    #[test]
    fn non_public_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "192.0.0.192",
            "0.0.0.0",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            assert!(refused(ip), "{ip} should be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!refused(ip), "{ip} should pass");
        }
    }

    #[test]
    fn allow_list_opens_networks() {
        let policy = AddressPolicy {
            allow: AddressPolicy::parse_allow("127.0.0.0/8, ::1").unwrap(),
        };
        assert!(policy.check("h", "127.0.0.2".parse().unwrap()).is_ok());
        assert!(policy.check("h", "::1".parse().unwrap()).is_ok());
        assert!(policy.check("h", "10.0.0.1".parse().unwrap()).is_err());
        let err = AddressPolicy::parse_allow("127.0.0.0/8,nonsense").unwrap_err();
        assert!(err.to_string().contains("nonsense"), "{err}");
    }

    #[test]
    fn ip_literal_urls_are_checked() {
        let policy = AddressPolicy::default();
        let url = url::Url::parse("http://169.254.169.254/latest/meta-data").unwrap();
        let r = policy.check_url(&url).unwrap_err();
        assert!(r.to_string().contains("169.254.169.254"), "{r}");
        // The URL parser normalises odd spellings of addresses before the check.
        let url = url::Url::parse("http://2130706433:8080/").unwrap();
        assert!(policy.check_url(&url).is_err());
        let url = url::Url::parse("http://example.com/").unwrap();
        assert!(policy.check_url(&url).is_ok());
    }
}
