//! The address classifier: CIDR blocks, the default deny list, and the verdict on one resolved
//! address. Pure: no IO.
//!
//! An IPv6 address that carries an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, the deprecated
//! IPv4-compatible `::a.b.c.d`, NAT64's well-known `64:ff9b::a.b.c.d`) is judged as that IPv4
//! address, so `::ffff:127.0.0.1` is loopback however it is written.

use std::net::{IpAddr, Ipv4Addr};

use crate::Error;

/// What the operator's deny list holds unless configured otherwise.
pub const DEFAULT_DENY: &[&str] = &[
    "0.0.0.0/8",      // "this network", including the unspecified 0.0.0.0
    "127.0.0.0/8",    // loopback
    "10.0.0.0/8",     // private
    "172.16.0.0/12",  // private
    "192.168.0.0/16", // private
    "100.64.0.0/10",  // carrier-grade NAT
    "169.254.0.0/16", // link-local (cloud metadata services live here)
    "192.0.0.0/24",   // IETF protocol assignments
    "198.18.0.0/15",  // benchmarking
    "224.0.0.0/4",    // multicast
    "240.0.0.0/4",    // reserved, and the broadcast address
    "::/128",         // unspecified
    "::1/128",        // loopback
    "fe80::/10",      // link-local
    "fc00::/7",       // unique local
    "fec0::/10",      // site-local (deprecated)
    "ff00::/8",       // multicast
    "2002::/16",      // 6to4: carries any IPv4 address, private ones included
    "2001::/32",      // Teredo: carries an (obfuscated) IPv4 address
    "64:ff9b:1::/48", // local-use NAT64 (RFC 8215): the IPv4 address is not at a fixed place
    "100::/64",       // discard-only
];

/// A CIDR block (`10.0.0.0/8`, `fc00::/7`; a bare address is a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `address/prefix` or a bare address. Bits set past the prefix are refused, so a
    /// typo (`10.0.0.1/8`) does not silently mean something else.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let bad = || Error::Cidr(text.to_owned());
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.trim().parse().map_err(|_| bad())?;
        let width = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.trim().parse::<u8>().map_err(|_| bad())?,
            None => width,
        };
        if prefix > width {
            return Err(bad());
        }
        let cidr = Cidr { network, prefix };
        if !cidr.contains_exact(network) || bits(network) & !mask(prefix, width) != 0 {
            return Err(bad());
        }
        Ok(cidr)
    }

    /// Whether `address` (taken as it is, not canonicalized) is inside the block.
    fn contains_exact(&self, address: IpAddr) -> bool {
        if self.network.is_ipv4() != address.is_ipv4() {
            return false;
        }
        let width = if address.is_ipv4() { 32 } else { 128 };
        let mask = mask(self.prefix, width);
        bits(address) & mask == bits(self.network) & mask
    }

    /// Whether `address` is inside the block, judging an IPv6 form of an IPv4 address by its
    /// IPv4 address too.
    pub fn contains(&self, address: IpAddr) -> bool {
        self.contains_exact(address) || self.contains_exact(canonical(address))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn bits(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn mask(prefix: u8, width: u8) -> u128 {
    let all = if width == 32 { u128::from(u32::MAX) } else { u128::MAX };
    all & !all.checked_shr(u32::from(prefix)).unwrap_or(0)
}

/// The IPv4 address an IPv6 address carries (mapped, compatible, NAT64), or the address itself.
pub fn canonical(address: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = address else { return address };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let segments = v6.segments();
    let embedded = Ipv4Addr::from((u32::from(segments[6]) << 16) | u32::from(segments[7]));
    // IPv4-compatible (::a.b.c.d), but not :: and ::1, which are IPv6's own.
    if segments[..6] == [0; 6] && u32::from(embedded) > 1 {
        return IpAddr::V4(embedded);
    }
    // NAT64's well-known prefix 64:ff9b::/96.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return IpAddr::V4(embedded);
    }
    address
}

/// The verdict on one resolved address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not on the deny list.
    Allowed,
    /// On the operator's allow list (which wins over the deny list).
    AllowListed(Cidr),
    /// On the deny list.
    Denied(Cidr),
}

impl Verdict {
    pub fn permits(self) -> bool {
        match self {
            Verdict::Allowed | Verdict::AllowListed(_) => true,
            Verdict::Denied(_) => false,
        }
    }
}

/// Judges `address` against the allow list first, then the deny list.
pub fn classify(address: IpAddr, allow: &[Cidr], deny: &[Cidr]) -> Verdict {
    if let Some(block) = allow.iter().find(|block| block.contains(address)) {
        return Verdict::AllowListed(*block);
    }
    match deny.iter().find(|block| block.contains(address)) {
        Some(block) => Verdict::Denied(*block),
        None => Verdict::Allowed,
    }
}

/// The default deny list, parsed.
pub fn default_deny() -> Vec<Cidr> {
    DEFAULT_DENY.iter().map(|text| Cidr::parse(text).expect("the built-in deny list parses")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(address: &str, allow: &[&str], expected_denied_by: Option<&str>) {
        let allow: Vec<Cidr> = allow.iter().map(|text| Cidr::parse(text).unwrap()).collect();
        let address: IpAddr = address.parse().unwrap();
        let verdict = classify(address, &allow, &default_deny());
        match expected_denied_by {
            Some(block) => assert_eq!(verdict, Verdict::Denied(Cidr::parse(block).unwrap()), "{address}"),
            None => assert!(verdict.permits(), "{address}: {verdict:?}"),
        }
    }

    #[test]
    fn the_default_deny_list() {
        for (address, block) in [
            ("127.0.0.1", "127.0.0.0/8"),
            ("127.255.255.254", "127.0.0.0/8"),
            ("0.0.0.0", "0.0.0.0/8"),
            ("10.1.2.3", "10.0.0.0/8"),
            ("172.16.0.1", "172.16.0.0/12"),
            ("172.31.255.255", "172.16.0.0/12"),
            ("192.168.1.1", "192.168.0.0/16"),
            ("100.64.0.1", "100.64.0.0/10"),
            ("100.127.255.255", "100.64.0.0/10"),
            ("169.254.169.254", "169.254.0.0/16"),
            ("224.0.0.1", "224.0.0.0/4"),
            ("239.255.255.250", "224.0.0.0/4"),
            ("255.255.255.255", "240.0.0.0/4"),
            ("::", "::/128"),
            ("::1", "::1/128"),
            ("fe80::1", "fe80::/10"),
            ("febf::1", "fe80::/10"),
            ("fc00::1", "fc00::/7"),
            ("fd12:3456::1", "fc00::/7"),
            ("ff02::1", "ff00::/8"),
            // IPv4 addresses written as IPv6.
            ("::ffff:127.0.0.1", "127.0.0.0/8"),
            ("::ffff:7f00:1", "127.0.0.0/8"),
            ("::ffff:10.0.0.1", "10.0.0.0/8"),
            ("::ffff:169.254.169.254", "169.254.0.0/16"),
            ("::ffff:0.0.0.0", "0.0.0.0/8"),
            ("::ffff:192.168.0.1", "192.168.0.0/16"),
            ("::ffff:100.64.0.1", "100.64.0.0/10"),
            ("::127.0.0.1", "127.0.0.0/8"),
            ("::10.0.0.1", "10.0.0.0/8"),
            ("64:ff9b::127.0.0.1", "127.0.0.0/8"),
            ("64:ff9b::a9fe:a9fe", "169.254.0.0/16"),
            // Tunnels that carry an IPv4 address are refused whole: 6to4 of 127.0.0.1 and of
            // 10.0.0.1, Teredo, local-use NAT64.
            ("2002:7f00:1::1", "2002::/16"),
            ("2002:a00:1::", "2002::/16"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001::/32"),
            ("64:ff9b:1::7f00:1", "64:ff9b:1::/48"),
        ] {
            check(address, &[], Some(block));
        }
    }

    #[test]
    fn public_addresses_pass() {
        for address in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "11.0.0.1",
            "2001:4860:4860::8888",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2a00::1",
        ] {
            check(address, &[], None);
        }
    }

    #[test]
    fn the_allow_list_wins() {
        check("127.0.0.1", &["127.0.0.1/32"], None);
        check("::ffff:127.0.0.1", &["127.0.0.1"], None);
        check("127.0.0.2", &["127.0.0.1/32"], Some("127.0.0.0/8"));
        check("::1", &["127.0.0.0/8"], Some("::1/128"));
    }

    #[test]
    fn cidr_parsing() {
        for good in ["10.0.0.0/8", "0.0.0.0/0", "::/0", "fc00::/7", "127.0.0.1", "::1", " 10.0.0.0 / 8 "] {
            assert!(Cidr::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "10.0.0.1/8", "10.0.0.0/33", "::/129", "fc00::1/7", "host/8", "10.0.0.0/x", "10/8"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("203.0.113.9".parse().unwrap()));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains("2001:db8::1".parse().unwrap()));
    }
}
