//! Which addresses outgoing requests may reach: the classification of special-purpose
//! addresses and the operator's allow-list.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

/// The kind of an IP address, as far as reaching it from the server is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// Globally routable; always reachable.
    Public,
    /// 127.0.0.0/8 or ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, fc00::/7 (unique local) or fec0::/10 (site local).
    Private,
    /// 169.254/16 (where cloud metadata services live) or fe80::/10.
    LinkLocal,
    /// 100.64/10, the shared address space of carrier-grade NAT.
    CarrierGradeNat,
    /// 0.0.0.0 or ::.
    Unspecified,
    /// 224/4 or ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32 or 3fff::/20.
    Documentation,
    /// 198.18/15 or 2001:2::/48.
    Benchmarking,
    /// Any other special-purpose or unassigned space (0/8, 240/4, IPv6 outside 2000::/3, ...).
    Reserved,
}

impl AddressClass {
    /// Whether addresses of this class may be reached without an allow-list entry.
    pub fn is_public(self) -> bool {
        self == AddressClass::Public
    }

    /// A stable lower-case name for logs and API answers.
    pub fn label(self) -> &'static str {
        match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::LinkLocal => "link-local",
            AddressClass::CarrierGradeNat => "carrier-grade NAT",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Multicast => "multicast",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Documentation => "documentation",
            AddressClass::Benchmarking => "benchmarking",
            AddressClass::Reserved => "reserved",
        }
    }

    /// The label with its indefinite article, for use inside sentences.
    pub(crate) fn with_article(self) -> String {
        let article = if self == AddressClass::Unspecified {
            "an"
        } else {
            "a"
        };
        format!("{article} {}", self.label())
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Classifies an address; IPv4-mapped IPv6 addresses are judged by the IPv4 address inside.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    mask_v4(u32::from(ip), prefix) == mask_v4(u32::from(Ipv4Addr::from(net)), prefix)
}

fn in_v6(ip: Ipv6Addr, net: u128, prefix: u8) -> bool {
    mask_v6(u128::from(ip), prefix) == mask_v6(net, prefix)
}

fn mask_v4(bits: u32, prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p if p >= 32 => bits,
        p => bits & (u32::MAX << (32 - p)),
    }
}

fn mask_v6(bits: u128, prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p if p >= 128 => bits,
        p => bits & (u128::MAX << (128 - p)),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_broadcast() {
        AddressClass::Broadcast
    } else if in_v4(ip, [127, 0, 0, 0], 8) {
        AddressClass::Loopback
    } else if in_v4(ip, [10, 0, 0, 0], 8)
        || in_v4(ip, [172, 16, 0, 0], 12)
        || in_v4(ip, [192, 168, 0, 0], 16)
    {
        AddressClass::Private
    } else if in_v4(ip, [169, 254, 0, 0], 16) {
        AddressClass::LinkLocal
    } else if in_v4(ip, [100, 64, 0, 0], 10) {
        AddressClass::CarrierGradeNat
    } else if in_v4(ip, [224, 0, 0, 0], 4) {
        AddressClass::Multicast
    } else if in_v4(ip, [192, 0, 2, 0], 24)
        || in_v4(ip, [198, 51, 100, 0], 24)
        || in_v4(ip, [203, 0, 113, 0], 24)
    {
        AddressClass::Documentation
    } else if in_v4(ip, [198, 18, 0, 0], 15) {
        AddressClass::Benchmarking
    } else if in_v4(ip, [0, 0, 0, 0], 8)
        || in_v4(ip, [240, 0, 0, 0], 4)
        || in_v4(ip, [192, 0, 0, 0], 24)
        || in_v4(ip, [192, 88, 99, 0], 24)
    {
        // "This network", the old class E, IETF protocol assignments and the retired 6to4
        // relay anycast block: none of them is a legitimate webhook destination.
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let bits = u128::from(ip);
    if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if in_v6(ip, 0xff00 << 112, 8) {
        AddressClass::Multicast
    } else if in_v6(ip, 0xfe80 << 112, 10) {
        AddressClass::LinkLocal
    } else if in_v6(ip, 0xfc00 << 112, 7) || in_v6(ip, 0xfec0 << 112, 10) {
        AddressClass::Private
    } else if in_v6(ip, 0x0064_ff9b << 96, 96) {
        // A NAT64 gateway forwards these to the IPv4 address in the low 32 bits, so the
        // verdict is that address's.
        classify_v4(Ipv4Addr::from((bits & 0xffff_ffff) as u32))
    } else if in_v6(ip, 0x2002 << 112, 16) {
        // 6to4 addresses reach the IPv4 address embedded after the prefix.
        classify_v4(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32))
    } else if in_v6(ip, 0x2001_0db8 << 96, 32) || in_v6(ip, 0x3fff << 112, 20) {
        AddressClass::Documentation
    } else if in_v6(ip, 0x2001_0002 << 96, 48) {
        AddressClass::Benchmarking
    } else if in_v6(ip, 0x2001 << 112, 23)
        || in_v6(ip, 0x0064_ff9b_0001 << 80, 48)
        || in_v6(ip, 0x5f00 << 112, 16)
        || !in_v6(ip, 0x2000 << 112, 3)
    {
        // Teredo and the other IETF assignments, local-use NAT64, SRv6 segment identifiers,
        // and everything outside global unicast space (IPv4-compatible, discard, ...).
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

/// Rewrites IPv4-mapped IPv6 addresses to plain IPv4 so that one rule covers both spellings.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// An IP network: an address with its host bits cleared and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNetwork {
    addr: IpAddr,
    prefix_len: u8,
}

impl IpNetwork {
    /// Builds a network, clearing host bits; `None` when the prefix is too long for the family.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<Self> {
        match addr {
            IpAddr::V4(v4) if prefix_len <= 32 => Some(IpNetwork {
                addr: IpAddr::V4(Ipv4Addr::from(mask_v4(u32::from(v4), prefix_len))),
                prefix_len,
            }),
            IpAddr::V6(v6) if prefix_len <= 128 => match v6.to_ipv4_mapped() {
                // Stored as IPv4 so that matching does not depend on which form the
                // resolver returned.
                Some(v4) if prefix_len >= 96 => IpNetwork::new(IpAddr::V4(v4), prefix_len - 96),
                _ => Some(IpNetwork {
                    addr: IpAddr::V6(Ipv6Addr::from(mask_v6(u128::from(v6), prefix_len))),
                    prefix_len,
                }),
            },
            _ => None,
        }
    }

    /// The network holding exactly one address.
    pub fn host(addr: IpAddr) -> Self {
        let prefix_len = match canonical(addr) {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        IpNetwork {
            addr: canonical(addr),
            prefix_len,
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` (in either IPv4 or IPv4-mapped IPv6 form) lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_v4(u32::from(ip), self.prefix_len) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_v6(u128::from(ip), self.prefix_len) == u128::from(net)
            }
            (IpAddr::V6(net), IpAddr::V4(ip)) => {
                mask_v6(u128::from(ip.to_ipv6_mapped()), self.prefix_len) == u128::from(net)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// One allow-list entry: a network, optionally narrowed to a single port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllowRule {
    /// The addresses the rule opens.
    pub network: IpNetwork,
    /// The only port the rule opens, or every port when `None`.
    pub port: Option<u16>,
}

impl AllowRule {
    /// Whether this rule lets a request connect to `ip` on `port`.
    pub fn permits(&self, ip: IpAddr, port: u16) -> bool {
        self.network.contains(ip) && self.port.is_none_or(|p| p == port)
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = matches!(
            (self.network.addr, self.network.prefix_len),
            (IpAddr::V4(_), 32) | (IpAddr::V6(_), 128)
        );
        let net = if full {
            self.network.addr.to_string()
        } else {
            self.network.to_string()
        };
        match (self.port, self.network.addr) {
            (None, _) => f.write_str(&net),
            (Some(port), IpAddr::V4(_)) => write!(f, "{net}:{port}"),
            (Some(port), IpAddr::V6(_)) => write!(f, "[{net}]:{port}"),
        }
    }
}

impl FromStr for AllowRule {
    type Err = String;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let entry = entry.trim();
        let invalid = || {
            format!(
                "outgoing_allow entry {entry:?} is not an IP address or network \
                 (like 10.0.0.0/8, 127.0.0.1:8080 or [::1]:8080); host names are not accepted"
            )
        };
        let (net, port) = if let Some(rest) = entry.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or_else(invalid)?;
            match after {
                "" => (inside, None),
                _ => (inside, Some(after.strip_prefix(':').ok_or_else(invalid)?)),
            }
        } else if entry.matches(':').count() == 1 {
            let (net, port) = entry.split_once(':').ok_or_else(invalid)?;
            (net, Some(port))
        } else {
            // Two or more colons can only be a bare IPv6 address, which cannot carry a port
            // without brackets.
            (entry, None)
        };
        let network = match net.split_once('/') {
            Some((addr, len)) => {
                let addr: IpAddr = addr.parse().map_err(|_| invalid())?;
                let len: u8 = len.parse().map_err(|_| invalid())?;
                IpNetwork::new(addr, len).ok_or_else(|| {
                    format!("outgoing_allow entry {entry:?} has a prefix longer than the address")
                })?
            }
            None => IpNetwork::host(net.parse().map_err(|_| invalid())?),
        };
        let port = match port {
            None => None,
            Some(port) => match port.parse::<u16>() {
                Ok(p) if p != 0 => Some(p),
                _ => {
                    return Err(format!(
                        "outgoing_allow entry {entry:?} has an invalid port (expected 1-65535)"
                    ))
                }
            },
        };
        Ok(AllowRule { network, port })
    }
}

/// The limits every outgoing request is held to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingPolicy {
    /// Non-public addresses (and ports) that requests may nevertheless reach.
    pub allow: Vec<AllowRule>,
    /// The longest a request may take, whatever its own timeout asks for.
    pub timeout_max: Duration,
    /// The largest response body accepted.
    pub max_response_bytes: usize,
    /// How many redirects one request may follow.
    pub max_redirects: usize,
}

impl Default for OutgoingPolicy {
    fn default() -> Self {
        OutgoingPolicy {
            allow: Vec::new(),
            timeout_max: Duration::from_secs(30),
            max_response_bytes: 1024 * 1024,
            max_redirects: 3,
        }
    }
}

impl OutgoingPolicy {
    /// Parses an allow-list setting: comma- or space-separated IPs and networks, each with an optional port.
    pub fn parse_allow(setting: &str) -> Result<Vec<AllowRule>, String> {
        setting
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|entry| !entry.is_empty())
            .map(str::parse)
            .collect()
    }

    /// Whether a request may connect to `ip` on `port`; on refusal, the address's class.
    pub fn check(&self, ip: IpAddr, port: u16) -> Result<(), AddressClass> {
        let class = classify(ip);
        if class.is_public() || self.allow.iter().any(|rule| rule.permits(ip, port)) {
            Ok(())
        } else {
            Err(class)
        }
    }
}
