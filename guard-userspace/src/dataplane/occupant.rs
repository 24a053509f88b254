//! Which XDP program an interface already runs, asked of the kernel over rtnetlink
//! (`RTM_GETLINK`, its `IFLA_XDP` attribute), so that `guard run` refuses to replace a foreign
//! program (a load balancer, libxdp's dispatcher) instead of taking it down.
//!
//! Hand-written here: aya 0.14's netlink code is private. The attribute numbers are from
//! `<linux/if_link.h>`; the message layout from `<linux/netlink.h>` and `<linux/rtnetlink.h>`.
use std::{io, os::fd::AsRawFd, os::fd::FromRawFd, os::fd::OwnedFd};

const RTM_GETLINK: u16 = 18;
const RTM_NEWLINK: u16 = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
/// `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`, masked off an attribute's type.
const NLA_TYPE_MASK: u16 = !(3 << 14);
/// `sizeof(struct nlmsghdr)` and `sizeof(struct ifinfomsg)`.
const NLMSG_HDR: usize = 16;
const IFINFO: usize = 16;

/// The id of the XDP program attached to interface `ifindex` (in this network namespace), in
/// any mode; `None` if there is none.
///
/// # Errors
/// When the netlink socket or the request fails (no such interface: `ENODEV`).
pub fn xdp_prog_on(ifindex: u32) -> io::Result<Option<u32>> {
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = [0u8; NLMSG_HDR + IFINFO];
    req[0..4].copy_from_slice(&((NLMSG_HDR + IFINFO) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // ifinfomsg: family (AF_UNSPEC), pad, type, then the index.
    req[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    // SAFETY: a valid socket and a buffer of the length passed.
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: a valid socket and a writable buffer of the length passed.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_reply(&buf[..n as usize])
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes (`struct rtattr`: length, type, then the payload, 4-aligned) in `b`:
/// (type, payload).
fn attrs(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, at)?);
        let ty = u16_at(b, at + 2)? & NLA_TYPE_MASK;
        if len < 4 || at + len > b.len() {
            return None;
        }
        let payload = &b[at + 4..at + len];
        at += (len + 3) & !3;
        Some((ty, payload))
    })
}

fn parse_reply(b: &[u8]) -> io::Result<Option<u32>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "short rtnetlink reply");
    let len = u32_at(b, 0).ok_or_else(bad)? as usize;
    let ty = u16_at(b, 4).ok_or_else(bad)?;
    let msg = b.get(..len).ok_or_else(bad)?;
    if ty == NLMSG_ERROR {
        let errno = u32_at(msg, NLMSG_HDR).ok_or_else(bad)? as i32;
        return Err(io::Error::from_raw_os_error(-errno));
    }
    if ty != RTM_NEWLINK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected rtnetlink message type {ty}"),
        ));
    }
    let Some((_, xdp)) =
        attrs(msg.get(NLMSG_HDR + IFINFO..).ok_or_else(bad)?).find(|(t, _)| *t == IFLA_XDP)
    else {
        return Ok(None);
    };
    // One program: IFLA_XDP_PROG_ID. Native and generic at once ("multi"): one id per mode.
    let ids: Vec<(u16, u32)> = attrs(xdp)
        .filter_map(|(t, p)| Some((t, u32_at(p, 0)?)))
        .collect();
    Ok(
        [IFLA_XDP_PROG_ID, IFLA_XDP_DRV_PROG_ID, IFLA_XDP_SKB_PROG_ID]
            .iter()
            .find_map(|want| ids.iter().find(|(t, id)| t == want && *id != 0))
            .map(|(_, id)| *id),
    )
}

/// The name the kernel holds for program `id` (its first 15 bytes), or a placeholder.
pub fn prog_name(id: u32) -> String {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
        .filter(|n| !n.is_empty())
        .map_or_else(|| "an unnamed program".to_string(), |n| format!("{n:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_runs_no_xdp_program_and_a_missing_interface_is_an_error() {
        // Index 1 is loopback in every network namespace; nothing in the tests attaches there.
        assert_eq!(xdp_prog_on(1).unwrap(), None);
        assert!(xdp_prog_on(u32::MAX >> 1).is_err());
    }

    #[test]
    fn a_reply_with_a_program_id_names_it() {
        // nlmsghdr, ifinfomsg, then IFLA_XDP { IFLA_XDP_ATTACHED = 1, IFLA_XDP_PROG_ID = 42 }.
        let mut m = vec![0u8; NLMSG_HDR + IFINFO];
        m[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        let mut nested = Vec::new();
        for (t, v) in [(2u16, 1u32), (IFLA_XDP_PROG_ID, 42)] {
            nested.extend_from_slice(&8u16.to_ne_bytes());
            nested.extend_from_slice(&t.to_ne_bytes());
            nested.extend_from_slice(&v.to_ne_bytes());
        }
        m.extend_from_slice(&((4 + nested.len()) as u16).to_ne_bytes());
        m.extend_from_slice(&(IFLA_XDP | 1 << 15).to_ne_bytes());
        m.extend_from_slice(&nested);
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(parse_reply(&m).unwrap(), Some(42));
    }
}
