//! Route discovery: the interfaces that carry a default route, from the kernel's routing
//! tables, when the config names none.
//!
//! Hand-written here: the two table parsers, because procfs reads only the IPv4 table and a
//! host is protected on both families.
use super::*;

/// The interfaces that carry a default route, IPv4 first, each ordered by metric, without
/// duplicates. A host with its IPv4 and IPv6 default routes on different interfaces gets both,
/// so neither path is left unprotected.
///
/// # Errors
///
/// [`ConfigError::Routes`] if `/proc/net/route` cannot be read, [`ConfigError::NoDefaultRoute`]
/// if no interface carries one. A missing `/proc/net/ipv6_route` (IPv6 disabled) is not an error.
pub fn default_route_interfaces() -> Result<Vec<String>, ConfigError> {
    const V4: &str = "/proc/net/route";
    const V6: &str = "/proc/net/ipv6_route";
    let v4 = fs::read_to_string(V4).map_err(|source| ConfigError::Routes { path: V4, source })?;
    let v6 = match fs::read_to_string(V6) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(ConfigError::Routes { path: V6, source }),
    };
    let mut out: Vec<String> = Vec::new();
    for name in parse_route_v4(&v4).into_iter().chain(parse_route_v6(&v6)) {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    if out.is_empty() {
        return Err(ConfigError::NoDefaultRoute);
    }
    Ok(out)
}

/// `RTF_UP` from `<linux/route.h>`.
const RTF_UP: u32 = 0x0001;

/// Interfaces of the up IPv4 default routes (destination and mask 0) in `/proc/net/route`
/// text, by metric.
pub(super) fn parse_route_v4(text: &str) -> Vec<String> {
    let mut routes: Vec<(u32, String)> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT
            if f.len() < 8 {
                return None;
            }
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            let metric: u32 = f[6].parse().ok()?;
            (f[1] == "00000000" && f[7] == "00000000" && flags & RTF_UP != 0)
                .then(|| (metric, f[0].to_string()))
        })
        .collect();
    routes.sort();
    routes.into_iter().map(|(_, name)| name).collect()
}

/// Interfaces of the up IPv6 default routes (`::/0`) in `/proc/net/ipv6_route` text, by
/// metric. The kernel's placeholder `::/0` unreachable route on `lo` is skipped.
pub(super) fn parse_route_v6(text: &str) -> Vec<String> {
    let mut routes: Vec<(u32, String)> = text
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // dest dest_plen src src_plen nexthop metric refcnt use flags iface
            if f.len() < 10 {
                return None;
            }
            let zero = "0".repeat(32);
            let metric = u32::from_str_radix(f[5], 16).ok()?;
            let flags = u32::from_str_radix(f[8], 16).ok()?;
            (f[0] == zero && f[1] == "00" && flags & RTF_UP != 0 && f[9] != "lo")
                .then(|| (metric, f[9].to_string()))
        })
        .collect();
    routes.sort();
    routes.into_iter().map(|(_, name)| name).collect()
}
