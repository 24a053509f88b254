//! CIDR prefixes as operators type them (`203.0.113.0/24`, `2001:db8::/32`, or a bare address),
//! validated at the edge with errors that say what is accepted.
//!
//! The prefix arithmetic is ipnet's ([`IpNet`]); hand-written here only the parsing, which
//! takes a bare address as a host, refuses IPv4-mapped IPv6 sources, and names what is wrong.
use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;

/// An IPv4 or IPv6 prefix with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr(IpNet);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error("empty address: expected an IPv4 or IPv6 address or CIDR, such as 198.18.0.0/15")]
    Empty,
    #[error(
        "{input:?} is not an IP address: expected an IPv4 or IPv6 address or CIDR, such as 198.18.0.0/15 or fd00::/8"
    )]
    BadAddress { input: String },
    #[error(
        "{input:?} is an IPv4-mapped IPv6 address, which never appears as a source on the wire: write the IPv4 form ({v4})"
    )]
    V4Mapped { input: String, v4: String },
    #[error("{input:?}: prefix length {prefix:?} is out of range: {family} accepts /0 to /{max}")]
    BadPrefix {
        input: String,
        prefix: String,
        family: &'static str,
        max: u8,
    },
}

impl Cidr {
    /// Builds a prefix, clearing host bits (`198.18.1.7/24` becomes `198.18.1.0/24`).
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        IpNet::new(addr, prefix).ok().map(|n| Self(n.trunc()))
    }

    /// A single host: /32 or /128.
    pub fn host(addr: IpAddr) -> Self {
        Self(IpNet::from(addr))
    }

    pub fn addr(&self) -> IpAddr {
        self.0.network()
    }

    pub fn prefix(&self) -> u8 {
        self.0.prefix_len()
    }

    pub fn is_ipv4(&self) -> bool {
        matches!(self.0, IpNet::V4(_))
    }

    /// Does this prefix contain `ip`?
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }

    /// The prefix as ipnet's type.
    pub fn net(&self) -> IpNet {
        self.0
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let input = s.trim();
        if input.is_empty() {
            return Err(CidrError::Empty);
        }
        let (addr_text, prefix_text) = match input.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (input, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| CidrError::BadAddress {
            input: input.to_string(),
        })?;
        let (family, max) = if addr.is_ipv4() {
            ("IPv4", 32u8)
        } else {
            ("IPv6", 128u8)
        };
        let prefix = match prefix_text {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => {
                    return Err(CidrError::BadPrefix {
                        input: input.to_string(),
                        prefix: p.to_string(),
                        family,
                        max,
                    });
                }
            },
        };
        if let IpAddr::V6(a) = addr
            && let Some(v4) = a.to_ipv4_mapped()
            && prefix >= 96
        {
            return Err(CidrError::V4Mapped {
                input: input.to_string(),
                v4: format!("{v4}/{}", prefix - 96),
            });
        }
        Ok(Self::new(addr, prefix).expect("prefix checked against the family's maximum"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.prefix())
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_and_prefixes() {
        let c: Cidr = "198.18.0.0/15".parse().unwrap();
        assert_eq!(c.to_string(), "198.18.0.0/15");
        assert_eq!(
            "198.18.3.4".parse::<Cidr>().unwrap().to_string(),
            "198.18.3.4/32"
        );
        assert_eq!(
            "fd00::1".parse::<Cidr>().unwrap().to_string(),
            "fd00::1/128"
        );
        assert_eq!("::/0".parse::<Cidr>().unwrap().to_string(), "::/0");
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix(), 0);
    }

    #[test]
    fn host_bits_are_cleared() {
        assert_eq!(
            "198.18.1.7/24".parse::<Cidr>().unwrap().to_string(),
            "198.18.1.0/24"
        );
        assert_eq!(
            "fd00::ff:1/64".parse::<Cidr>().unwrap().to_string(),
            "fd00::/64"
        );
    }

    #[test]
    fn bad_input_names_what_is_accepted() {
        assert_eq!("".parse::<Cidr>(), Err(CidrError::Empty));
        let e = "300.1.2.3".parse::<Cidr>().unwrap_err();
        assert!(matches!(e, CidrError::BadAddress { .. }), "{e}");
        let e = "10.0.0.0/33".parse::<Cidr>().unwrap_err();
        assert!(e.to_string().contains("IPv4 accepts /0 to /32"), "{e}");
        let e = "::/129".parse::<Cidr>().unwrap_err();
        assert!(e.to_string().contains("IPv6 accepts /0 to /128"), "{e}");
        assert!("10.0.0.0/".parse::<Cidr>().is_err());
        assert!("10.0.0.0/+8".parse::<Cidr>().is_err());
        assert!("10.0.0.0/-1".parse::<Cidr>().is_err());
        let e = "::ffff:198.18.0.1".parse::<Cidr>().unwrap_err();
        assert!(e.to_string().contains("198.18.0.1/32"), "{e}");
    }

    #[test]
    fn contains_respects_the_prefix() {
        let c: Cidr = "198.18.0.0/15".parse().unwrap();
        assert!(c.contains("198.19.255.255".parse().unwrap()));
        assert!(!c.contains("198.20.0.0".parse().unwrap()));
        assert!(!c.contains("fd00::1".parse().unwrap()));
    }
}
