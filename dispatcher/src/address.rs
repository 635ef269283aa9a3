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
    /// Networks allowed even though they are not public (`CHIME_CALLBACK_ALLOW`).
    pub allow: Vec<IpNet>,
    /// Networks refused even though they are public (`CHIME_CALLBACK_DENY`);
    /// `0.0.0.0/0,::/0` with an allow-list confines callbacks to that list.
    /// The allow-list wins where both match.
    pub deny: Vec<IpNet>,
}

impl AddressPolicy {
    /// Parses a comma-separated allow-list of CIDRs (`127.0.0.0/8, fd00::/8`);
    /// a bare address means just that address.
    pub fn parse_allow(list: &str) -> anyhow::Result<Vec<IpNet>> {
        parse_networks(list, "callback allow-list")
    }

    /// Parses a comma-separated deny-list of CIDRs, like [`Self::parse_allow`].
    pub fn parse_deny(list: &str) -> anyhow::Result<Vec<IpNet>> {
        parse_networks(list, "callback deny-list")
    }

    /// Ok if `ip` is public (or allow-listed) and not deny-listed. An IPv6
    /// address that carries an IPv4 address (IPv4-mapped, IPv4-compatible,
    /// NAT64, 6to4) is judged by the IPv4 address it reaches.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), Refused> {
        let reached = embedded_ipv4(ip).map(IpAddr::V4);
        let listed = |nets: &[IpNet]| {
            nets.iter()
                .any(|net| net.contains(&ip) || reached.is_some_and(|v4| net.contains(&v4)))
        };
        if listed(&self.allow) {
            return Ok(());
        }
        let class = match non_public_class(ip) {
            Some(class) => class,
            None if listed(&self.deny) => "deny-listed (CHIME_CALLBACK_DENY)",
            None => return Ok(()),
        };
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

fn parse_networks(list: &str, what: &str) -> anyhow::Result<Vec<IpNet>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| anyhow::anyhow!("{what}: {s:?} is not a CIDR"))
        })
        .collect()
}

/// Why `ip` is not a public unicast address, if it is not: the name of its
/// most specific entry in the special-purpose registries below (or the
/// multicast / site-local blocks) that is not globally reachable. An IPv6
/// address carrying an IPv4 address is judged by that IPv4 address.
pub fn non_public_class(ip: IpAddr) -> Option<&'static str> {
    if let Some(v4) = embedded_ipv4(ip) {
        return v4_class(v4);
    }
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

/// The IPv4 address an IPv6 address reaches, for the forms that carry one:
/// IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` (deprecated,
/// but still routed by some stacks), NAT64 `64:ff9b::a.b.c.d` (the
/// well-known prefix, RFC 6052) and 6to4 `2002:AABB:CCDD::/48` (RFC 3056).
pub fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let seg = v6.segments();
    let low32 = Ipv4Addr::from(((seg[6] as u32) << 16) | seg[7] as u32);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    // `::` and `::1` are the IPv6 unspecified and loopback addresses, not
    // IPv4-compatible spellings of 0.0.0.0 and 0.0.0.1.
    if seg[..6] == [0; 6] && !v6.is_unspecified() && !v6.is_loopback() {
        return Some(low32);
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low32);
    }
    if seg[0] == 0x2002 {
        return Some(Ipv4Addr::from(((seg[1] as u32) << 16) | seg[2] as u32));
    }
    None
}

/// One entry of a special-purpose address registry.
struct Special<A> {
    /// First address of the block, as bits.
    base: A,
    prefix: u32,
    name: &'static str,
    /// The registry's "Globally Reachable" column; `N/A` entries count as not.
    globally_reachable: bool,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u32, name: &'static str, g: bool) -> Special<u32> {
    Special {
        base: Ipv4Addr::new(a, b, c, d).to_bits(),
        prefix,
        name,
        globally_reachable: g,
    }
}

#[allow(clippy::too_many_arguments)]
const fn v6(s: [u16; 8], prefix: u32, name: &'static str, g: bool) -> Special<u128> {
    Special {
        base: Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]).to_bits(),
        prefix,
        name,
        globally_reachable: g,
    }
}

/// The IANA "IPv4 Special-Purpose Address Registry", every entry, with its
/// "Globally Reachable" column (`N/A` as false), plus the multicast block of
/// the IANA "IPv4 Address Space Registry" (224.0.0.0/4), which the
/// special-purpose registry does not list.
const IPV4_SPECIAL: &[Special<u32>] = &[
    v4(0, 0, 0, 0, 8, "\"this network\"", false),
    v4(0, 0, 0, 0, 32, "\"this host on this network\"", false),
    v4(10, 0, 0, 0, 8, "private-use", false),
    v4(100, 64, 0, 0, 10, "shared (carrier-grade NAT)", false),
    v4(127, 0, 0, 0, 8, "loopback", false),
    v4(169, 254, 0, 0, 16, "link-local (cloud metadata)", false),
    v4(172, 16, 0, 0, 12, "private-use", false),
    v4(
        192,
        0,
        0,
        0,
        24,
        "IETF protocol assignments (cloud metadata)",
        false,
    ),
    v4(192, 0, 0, 0, 29, "IPv4 service continuity prefix", false),
    v4(192, 0, 0, 8, 32, "IPv4 dummy address", false),
    v4(192, 0, 0, 9, 32, "Port Control Protocol anycast", true),
    v4(192, 0, 0, 10, 32, "TURN anycast", true),
    v4(192, 0, 0, 170, 32, "NAT64/DNS64 discovery", false),
    v4(192, 0, 0, 171, 32, "NAT64/DNS64 discovery", false),
    v4(192, 0, 2, 0, 24, "documentation (TEST-NET-1)", false),
    v4(192, 31, 196, 0, 24, "AS112-v4", true),
    v4(192, 52, 193, 0, 24, "AMT", true),
    v4(192, 88, 99, 0, 24, "deprecated (6to4 relay anycast)", false),
    v4(192, 168, 0, 0, 16, "private-use", false),
    v4(192, 175, 48, 0, 24, "direct delegation AS112 service", true),
    v4(198, 18, 0, 0, 15, "benchmarking", false),
    v4(198, 51, 100, 0, 24, "documentation (TEST-NET-2)", false),
    v4(203, 0, 113, 0, 24, "documentation (TEST-NET-3)", false),
    v4(224, 0, 0, 0, 4, "multicast", false),
    v4(240, 0, 0, 0, 4, "reserved", false),
    v4(255, 255, 255, 255, 32, "limited broadcast", false),
];

/// The IANA "IPv6 Special-Purpose Address Registry", every entry, with its
/// "Globally Reachable" column (`N/A` as false), plus from the IANA "IPv6
/// Address Space" registry the blocks that are not global unicast:
/// multicast (ff00::/8) and the deprecated site-local block (fec0::/10).
/// IPv4-mapped, IPv4-compatible, NAT64 and 6to4 addresses never get here:
/// they are judged by the IPv4 address they carry ([`embedded_ipv4`]).
const IPV6_SPECIAL: &[Special<u128>] = &[
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback", false),
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128, "unspecified", false),
    v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96, "IPv4-mapped", false),
    v6(
        [0x64, 0xff9b, 0, 0, 0, 0, 0, 0],
        96,
        "IPv4-IPv6 translation",
        true,
    ),
    v6(
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        "IPv4-IPv6 translation (local use)",
        false,
    ),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only", false),
    v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64, "dummy IPv6 prefix", false),
    v6(
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        23,
        "IETF protocol assignments",
        false,
    ),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "TEREDO", false),
    v6(
        [0x2001, 1, 0, 0, 0, 0, 0, 1],
        128,
        "Port Control Protocol anycast",
        true,
    ),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 2], 128, "TURN anycast", true),
    v6(
        [0x2001, 1, 0, 0, 0, 0, 0, 3],
        128,
        "DNS-SD service registration protocol anycast",
        true,
    ),
    v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48, "benchmarking", false),
    v6([0x2001, 3, 0, 0, 0, 0, 0, 0], 32, "AMT", true),
    v6([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48, "AS112-v6", true),
    v6(
        [0x2001, 0x10, 0, 0, 0, 0, 0, 0],
        28,
        "deprecated (ORCHID)",
        false,
    ),
    v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28, "ORCHIDv2", true),
    v6(
        [0x2001, 0x30, 0, 0, 0, 0, 0, 0],
        28,
        "drone remote ID entity tags",
        true,
    ),
    v6(
        [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
        32,
        "documentation",
        false,
    ),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "6to4", false),
    v6(
        [0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0],
        48,
        "direct delegation AS112 service",
        true,
    ),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation", false),
    v6(
        [0x5f00, 0, 0, 0, 0, 0, 0, 0],
        16,
        "segment routing (SRv6) SIDs",
        false,
    ),
    v6(
        [0xfc00, 0, 0, 0, 0, 0, 0, 0],
        7,
        "unique-local (cloud metadata)",
        false,
    ),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local", false),
    v6(
        [0xfec0, 0, 0, 0, 0, 0, 0, 0],
        10,
        "site-local (deprecated)",
        false,
    ),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast", false),
];

/// The most specific entry containing `bits`, judged by its reachability.
macro_rules! most_specific {
    ($table:expr, $bits:expr, $width:expr) => {{
        let bits = $bits;
        $table
            .iter()
            .filter(|e| {
                let shift = $width - e.prefix;
                shift >= $width || (bits >> shift) == (e.base >> shift)
            })
            .max_by_key(|e| e.prefix)
            .filter(|e| !e.globally_reachable)
            .map(|e| e.name)
    }};
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    most_specific!(IPV4_SPECIAL, ip.to_bits(), 32)
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    most_specific!(IPV6_SPECIAL, ip.to_bits(), 128)
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
            "0.1.2.3",
            "192.0.2.2",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "198.19.255.255",
            "192.88.99.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "::192.0.2.2",
            "::a9fe:a9fe",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2002:c000:202::1",
            "2001:db8::1",
            "3fff::1",
            "2001:2::1",
            "2001::1",
            "100::1",
            "5f00::1",
        ] {
            assert!(refused(ip), "{ip} should be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "192.0.0.9",
            "192.0.3.1",
            "198.20.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:4860:4860::8888",
            "2001:1::1",
        ] {
            assert!(!refused(ip), "{ip} should pass");
        }
    }

    #[test]
    fn the_class_names_the_registry_entry() {
        let class = |ip: &str| non_public_class(ip.parse().unwrap());
        assert_eq!(class("192.0.2.2"), Some("documentation (TEST-NET-1)"));
        assert_eq!(class("198.18.0.1"), Some("benchmarking"));
        assert_eq!(class("::127.0.0.1"), Some("loopback"));
        assert_eq!(class("192.0.0.8"), Some("IPv4 dummy address"));
        assert_eq!(class("8.8.8.8"), None);
    }

    #[test]
    fn allow_list_opens_networks() {
        let policy = AddressPolicy {
            allow: AddressPolicy::parse_allow("127.0.0.0/8, ::1").unwrap(),
            ..Default::default()
        };
        assert!(policy.check("h", "127.0.0.2".parse().unwrap()).is_ok());
        assert!(policy.check("h", "::1".parse().unwrap()).is_ok());
        assert!(policy
            .check("h", "::ffff:127.0.0.1".parse().unwrap())
            .is_ok());
        assert!(policy.check("h", "10.0.0.1".parse().unwrap()).is_err());
        let err = AddressPolicy::parse_allow("127.0.0.0/8,nonsense").unwrap_err();
        assert!(err.to_string().contains("nonsense"), "{err}");
    }

    #[test]
    fn deny_list_confines_callbacks() {
        let policy = AddressPolicy {
            allow: AddressPolicy::parse_allow("127.0.0.0/8").unwrap(),
            deny: AddressPolicy::parse_deny("0.0.0.0/0, ::/0").unwrap(),
        };
        assert!(policy.check("h", "127.0.0.1".parse().unwrap()).is_ok());
        let r = policy.check("h", "8.8.8.8".parse().unwrap()).unwrap_err();
        assert!(r.to_string().contains("CHIME_CALLBACK_DENY"), "{r}");
        assert!(policy
            .check("h", "2606:4700::1111".parse().unwrap())
            .is_err());
        assert!(policy.check("h", "10.0.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn ip_literal_urls_are_checked() {
        let policy = AddressPolicy::default();
        let url = url::Url::parse("http://169.254.169.254/latest/meta-data").unwrap();
        let r = policy.check_url(&url).unwrap_err();
        assert!(r.to_string().contains("169.254.169.254"), "{r}");
        // The URL parser normalises odd spellings of addresses before the check.
        for odd in [
            "http://2130706433:8080/",
            "http://127.1/",
            "http://0x7f.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::127.0.0.1]/",
            "http://192.0.2.2/",
        ] {
            let url = url::Url::parse(odd).unwrap();
            assert!(policy.check_url(&url).is_err(), "{odd}");
        }
        let url = url::Url::parse("http://example.com/").unwrap();
        assert!(policy.check_url(&url).is_ok());
    }
}
