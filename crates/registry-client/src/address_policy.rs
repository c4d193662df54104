//! [`AddressPolicy`]: which IP addresses a client may connect to, so that a registry named
//! by someone else (a pull-through cache's upstream admitted by pattern) cannot point the
//! client at the host's own network (SSRF): loopback, private, link-local, shared (CGNAT),
//! unspecified, reserved and cloud-metadata addresses are refused unless a configured range
//! admits them.
//!
//! It is enforced where connections are made ([`ClientOptions::address_policy`]): the DNS
//! resolver drops refused addresses of every name it resolves, at every connection (a name
//! that resolves to a public address once and to a private one later is refused then);
//! hosts written as IP literals, which are never resolved, are checked before each request
//! and at each redirect hop. Such a client ignores forward proxies from the environment
//! (they would resolve names where the policy cannot see the addresses).
//!
//! [`ClientOptions::address_policy`]: crate::ClientOptions::address_policy

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use sealer_fs_abstraction::ErrorChain;

/// Why an address is not public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918 (`10/8`, `172.16/12`, `192.168/16`) and unique local IPv6 (`fc00::/7`).
    Private,
    /// `169.254/16`, `fe80::/10`.
    LinkLocal,
    /// Shared address space of carrier-grade NAT, `100.64/10`.
    SharedCgnat,
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// Cloud instance metadata services: `169.254.169.254`, `fd00:ec2::254`.
    CloudMetadata,
    /// Multicast and broadcast.
    Multicast,
    /// Documentation, benchmarking, IETF protocol and future-use ranges (`192.0.0/24`,
    /// `192.0.2/24`, `198.18/15`, `198.51.100/24`, `203.0.113/24`, `240/4`, `2001:db8::/32`).
    Reserved,
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link-local",
            Self::SharedCgnat => "shared (CGNAT)",
            Self::Unspecified => "unspecified",
            Self::CloudMetadata => "cloud metadata",
            Self::Multicast => "multicast",
            Self::Reserved => "reserved",
        })
    }
}

/// The class of a non-public address, `None` for a public one. IPv4 addresses embedded in
/// IPv6 (mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) are classified as that IPv4
/// address.
pub fn classify(address: IpAddr) -> Option<AddressClass> {
    match address {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(address: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, c, _] = address.octets();
    let class = if address == Ipv4Addr::new(169, 254, 169, 254) {
        AddressClass::CloudMetadata
    } else if a == 0 {
        AddressClass::Unspecified
    } else if address.is_loopback() {
        AddressClass::Loopback
    } else if address.is_private() {
        AddressClass::Private
    } else if address.is_link_local() {
        AddressClass::LinkLocal
    } else if a == 100 && (64..128).contains(&b) {
        AddressClass::SharedCgnat
    } else if address.is_multicast() || address.is_broadcast() {
        AddressClass::Multicast
    } else if address.is_documentation()
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240
    {
        AddressClass::Reserved
    } else {
        return None;
    };
    Some(class)
}

fn classify_v6(address: Ipv6Addr) -> Option<AddressClass> {
    if let Some(v4) = address.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let segments = address.segments();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [_, _, _, _, _, _, high, low] = segments;
        let v4 = Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
        return classify_v4(v4);
    }
    let class = if address == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        AddressClass::CloudMetadata
    } else if address.is_unspecified() {
        AddressClass::Unspecified
    } else if address.is_loopback() {
        AddressClass::Loopback
    } else if address.is_unique_local() {
        AddressClass::Private
    } else if address.is_unicast_link_local() {
        AddressClass::LinkLocal
    } else if address.is_multicast() {
        AddressClass::Multicast
    } else if segments[0] == 0x2001 && segments[1] == 0x0db8 {
        AddressClass::Reserved
    } else {
        return None;
    };
    Some(class)
}

/// A CIDR range (`10.0.0.0/8`, `127.0.0.1/32`, `fd00::/8`); a bare address is a range of
/// one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    network: IpAddr,
    prefix: u8,
}

/// A text that is no CIDR range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an address range: {reason} (expected e.g. 10.0.0.0/8 or fd00::/8)")]
pub struct InvalidRange {
    text: String,
    reason: &'static str,
}

impl FromStr for AddressRange {
    type Err = InvalidRange;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| InvalidRange {
            text: text.to_owned(),
            reason,
        };
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let network: IpAddr = address.parse().map_err(|_| invalid("not an IP address"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) if !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit()) => {
                prefix
                    .parse::<u8>()
                    .ok()
                    .filter(|prefix| *prefix <= bits)
                    .ok_or_else(|| invalid("the prefix length is too long"))?
            }
            Some(_) => return Err(invalid("the prefix length is not a number")),
        };
        let range = Self { network, prefix };
        if !range.contains(network) || range.masked(network) != network {
            return Err(invalid("bits are set beyond the prefix length"));
        }
        Ok(range)
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl AddressRange {
    /// Whether `address` is in the range (an IPv4-mapped IPv6 address counts as its IPv4
    /// address).
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        address.is_ipv4() == self.network.is_ipv4() && self.masked(address) == self.network
    }

    fn masked(&self, address: IpAddr) -> IpAddr {
        match address {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }
}

/// A connection the policy refused: which host, which address, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRefused {
    /// The host as the URL named it.
    pub host: String,
    /// The refused address.
    pub address: IpAddr,
    /// Why it is refused.
    pub class: AddressClass,
}

impl fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let literal = self.host.trim_start_matches('[').trim_end_matches(']');
        if literal == self.address.to_string() {
            write!(f, "{} is a {} address", self.address, self.class)?;
        } else {
            write!(
                f,
                "{} resolves to {}, a {} address",
                self.host, self.address, self.class
            )?;
        }
        f.write_str(", which this client may not connect to (admit its range to allow it)")
    }
}

impl std::error::Error for AddressRefused {}

/// Which addresses a client may connect to: every public address, and the non-public ones
/// inside the admitted ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allowed: Vec<AddressRange>,
}

impl AddressPolicy {
    /// Public addresses, and the non-public ones in `allowed`.
    pub fn public_and(allowed: Vec<AddressRange>) -> Self {
        Self { allowed }
    }

    /// Whether `host` (as named) may be reached at `address`.
    pub fn check(&self, host: &str, address: IpAddr) -> Result<(), AddressRefused> {
        match classify(address) {
            Some(class) if !self.allowed.iter().any(|range| range.contains(address)) => {
                Err(AddressRefused {
                    host: host.to_owned(),
                    address,
                    class,
                })
            }
            _ => Ok(()),
        }
    }

    /// Checks the host of `url` when it is an IP literal (names are checked when they are
    /// resolved).
    pub(crate) fn check_url(&self, url: &reqwest::Url) -> Result<(), AddressRefused> {
        // The URL parser wrote IPv4 literals dotted decimal and IPv6 ones in brackets.
        let Some(host) = url.host_str() else {
            return Ok(());
        };
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        match literal.parse::<IpAddr>() {
            Ok(address) => self.check(host, address),
            Err(_) => Ok(()),
        }
    }
}

/// The refusal somewhere in `error`'s chain of causes (a resolver's or a redirect policy's
/// error, wrapped by reqwest and hyper), if any.
pub(crate) fn refusal_in<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a AddressRefused> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(refused) = current.downcast_ref::<AddressRefused>() {
            return Some(refused);
        }
        // `io::Error::source` skips the error it wraps: look inside.
        if let Some(inner) = current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && let Some(refused) = refusal_in(inner)
        {
            return Some(refused);
        }
        cause = current.source();
    }
    None
}

/// The DNS resolver of a client with an [`AddressPolicy`]: the system's resolution, minus
/// the refused addresses; an error naming the first refused one when none is left.
#[derive(Debug)]
pub(crate) struct PolicyResolver {
    pub(crate) policy: Arc<AddressPolicy>,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let mut allowed = Vec::with_capacity(resolved.len());
            for address in resolved {
                match policy.check(&host, address.ip()) {
                    Ok(()) => allowed.push(address),
                    Err(error) => {
                        tracing::debug!(error = %ErrorChain(&error), "address refused by the policy");
                        refused.get_or_insert(error);
                    }
                }
            }
            match (allowed.is_empty(), refused) {
                (true, Some(refused)) => Err(Box::new(refused) as _),
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn every_non_public_class_is_recognised() {
        for (address, class) in [
            ("127.0.0.1", AddressClass::Loopback),
            ("127.255.0.9", AddressClass::Loopback),
            ("::1", AddressClass::Loopback),
            ("10.1.2.3", AddressClass::Private),
            ("172.16.0.1", AddressClass::Private),
            ("172.31.255.255", AddressClass::Private),
            ("192.168.1.1", AddressClass::Private),
            ("fc00::1", AddressClass::Private),
            ("fdff::1", AddressClass::Private),
            ("169.254.1.1", AddressClass::LinkLocal),
            ("fe80::1", AddressClass::LinkLocal),
            ("febf::1", AddressClass::LinkLocal),
            ("100.64.0.1", AddressClass::SharedCgnat),
            ("100.127.255.255", AddressClass::SharedCgnat),
            ("0.0.0.0", AddressClass::Unspecified),
            ("0.1.2.3", AddressClass::Unspecified),
            ("::", AddressClass::Unspecified),
            ("169.254.169.254", AddressClass::CloudMetadata),
            ("fd00:ec2::254", AddressClass::CloudMetadata),
            ("224.0.0.1", AddressClass::Multicast),
            ("255.255.255.255", AddressClass::Multicast),
            ("ff02::1", AddressClass::Multicast),
            ("192.0.2.1", AddressClass::Reserved),
            ("198.18.0.1", AddressClass::Reserved),
            ("240.0.0.1", AddressClass::Reserved),
            ("2001:db8::1", AddressClass::Reserved),
            // IPv4 inside IPv6 is the IPv4 address.
            ("::ffff:127.0.0.1", AddressClass::Loopback),
            ("::ffff:169.254.169.254", AddressClass::CloudMetadata),
            ("64:ff9b::10.0.0.1", AddressClass::Private),
        ] {
            assert_eq!(classify(ip(address)), Some(class), "{address}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
        ] {
            assert_eq!(classify(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn ranges_parse_and_contain() {
        let range: AddressRange = "127.0.0.0/8".parse().unwrap();
        assert!(range.contains(ip("127.0.0.1")));
        assert!(range.contains(ip("127.255.255.255")));
        assert!(range.contains(ip("::ffff:127.0.0.2")));
        assert!(!range.contains(ip("128.0.0.1")));
        assert!(!range.contains(ip("::1")));
        let one: AddressRange = "127.0.0.1".parse().unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!(one.contains(ip("127.0.0.1")));
        assert!(!one.contains(ip("127.0.0.2")));
        let v6: AddressRange = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fc00::1")));
        let all: AddressRange = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("10.0.0.1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.1/8",
            "10.0.0.0/x",
            "host/8",
            "::/129",
        ] {
            let error = bad.parse::<AddressRange>().unwrap_err();
            assert!(
                error.to_string().contains("not an address range"),
                "{error}"
            );
        }
    }

    #[test]
    fn the_policy_refuses_non_public_addresses_outside_its_ranges() {
        let strict = AddressPolicy::default();
        assert!(strict.check("quay.example", ip("8.8.8.8")).is_ok());
        let refused = strict.check("localhost", ip("127.0.0.1")).unwrap_err();
        assert_eq!(refused.class, AddressClass::Loopback);
        let message = refused.to_string();
        assert!(
            message.contains("localhost") && message.contains("127.0.0.1"),
            "{message}"
        );
        let loopback = AddressPolicy::public_and(vec!["127.0.0.1/32".parse().unwrap()]);
        assert!(loopback.check("a", ip("127.0.0.1")).is_ok());
        assert!(loopback.check("a", ip("127.0.0.2")).is_err());
        assert!(loopback.check("a", ip("169.254.169.254")).is_err());
        let url = reqwest::Url::parse("https://169.254.169.254/latest").unwrap();
        assert_eq!(
            loopback.check_url(&url).unwrap_err().class,
            AddressClass::CloudMetadata
        );
        let url = reqwest::Url::parse("https://[fd00:ec2::254]/").unwrap();
        assert!(loopback.check_url(&url).is_err());
        // Names are the resolver's to check.
        let url = reqwest::Url::parse("https://localhost:5000/").unwrap();
        assert!(loopback.check_url(&url).is_ok());
    }

    #[test]
    fn a_refusal_is_found_inside_wrapping_errors() {
        let refused = AddressPolicy::default()
            .check("h", ip("10.0.0.1"))
            .unwrap_err();
        let wrapped = std::io::Error::other(refused.clone());
        assert_eq!(refusal_in(&wrapped), Some(&refused));
        let plain = std::io::Error::other("no");
        assert_eq!(refusal_in(&plain), None);
    }
}
