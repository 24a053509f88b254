//! Just enough rtnetlink for XDP: which program an interface runs and in which mode
//! (`RTM_GETLINK`, its `IFLA_XDP` attribute), and the netlink attach that libxdp's dispatcher
//! protocol needs (`RTM_SETLINK` with `XDP_FLAGS_REPLACE` and `IFLA_XDP_EXPECTED_FD`, or
//! `XDP_FLAGS_UPDATE_IF_NOEXIST`).
//!
//! Hand-written here: aya 0.14's netlink code is private, and its `Xdp::attach` prefers a
//! bpf_link, which can neither replace nor be replaced by the netlink-attached dispatcher that
//! libxdp (xdp-loader, xdp-filter) uses. The attribute numbers are from `<linux/if_link.h>`;
//! the message layout from `<linux/netlink.h>` and `<linux/rtnetlink.h>`.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_EXPECTED_FD: u16 = 8;
const NLA_F_NESTED: u16 = 1 << 15;
/// `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`, masked off an attribute's type.
const NLA_TYPE_MASK: u16 = !(3 << 14);
/// `NLMSGERR_ATTR_MSG`: the extended ACK's text ("Active program does not match expected").
const NLMSGERR_ATTR_MSG: u16 = 1;
/// `NLM_F_CAPPED` and `NLM_F_ACK_TLVS` on an error message.
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `sizeof(struct nlmsghdr)` and `sizeof(struct ifinfomsg)`.
const NLMSG_HDR: usize = 16;
const IFINFO: usize = 16;

pub const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1 << 0;
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
pub const XDP_FLAGS_REPLACE: u32 = 1 << 4;

/// How the program on an interface is attached (`IFLA_XDP_ATTACHED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    Native,
    Generic,
}

impl XdpMode {
    pub fn flag(self) -> u32 {
        match self {
            Self::Native => XDP_FLAGS_DRV_MODE,
            Self::Generic => XDP_FLAGS_SKB_MODE,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }
}

/// An interface's XDP attributes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpState {
    /// `XDP_ATTACHED_*`: 0 none, 1 driver, 2 skb, 3 hardware, 4 several.
    pub attached: u8,
    pub prog_id: u32,
    pub drv_prog_id: u32,
    pub skb_prog_id: u32,
}

impl XdpState {
    /// The program that sees the packets and its mode, as libxdp picks it (native before
    /// generic when there are several); an offloaded program alone counts as none.
    pub fn main(&self) -> Option<(u32, XdpMode)> {
        match self.attached {
            1 => Some((self.drv_prog_id.max(self.prog_id), XdpMode::Native)),
            2 => Some((self.skb_prog_id.max(self.prog_id), XdpMode::Generic)),
            4 if self.drv_prog_id != 0 => Some((self.drv_prog_id, XdpMode::Native)),
            4 if self.skb_prog_id != 0 => Some((self.skb_prog_id, XdpMode::Generic)),
            _ => None,
        }
    }

    /// Any program id, whatever its mode (an offloaded one too).
    pub fn any(&self) -> Option<u32> {
        [self.prog_id, self.drv_prog_id, self.skb_prog_id]
            .into_iter()
            .find(|id| *id != 0)
    }
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

fn put_attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    buf.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// A route netlink socket, bound, with extended ACKs on.
struct Socket(OwnedFd);

impl Socket {
    fn open() -> io::Result<Self> {
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
        let sock = Self(unsafe { OwnedFd::from_raw_fd(fd) });
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a valid int; failure only loses the kernel's error text.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_NETLINK,
                libc::NETLINK_EXT_ACK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Ok(sock)
    }

    /// Sends one request (`ty`, `flags`, an ifinfomsg for `ifindex`, then `attrs`) and returns
    /// the answers' payloads (after their nlmsghdr), up to the ACK or the first answer.
    fn request(&self, ty: u16, flags: u16, ifindex: u32, attrs: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let mut msg = vec![0u8; NLMSG_HDR + IFINFO];
        // ifinfomsg: family (AF_UNSPEC), pad, type, then the index, flags and change.
        msg[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
        msg.extend_from_slice(attrs);
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..6].copy_from_slice(&ty.to_ne_bytes());
        msg[6..8].copy_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
        msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
        let fd = self.0.as_raw_fd();
        // SAFETY: a valid socket and a buffer of the length passed.
        if unsafe { libc::send(fd, msg.as_ptr().cast(), msg.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let wants_ack = flags & libc::NLM_F_ACK as u16 != 0;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: a valid socket and a writable buffer of the length passed.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(done) = parse_answers(&buf[..n as usize], &mut out)? {
                return Ok(done);
            }
            if !wants_ack && !out.is_empty() {
                return Ok(out);
            }
        }
    }
}

/// Parses one datagram of answers into `out`; `Some` once the request is answered in full
/// (its ACK), an error for a refusal (with the kernel's text, if it sent one).
fn parse_answers(mut b: &[u8], out: &mut Vec<Vec<u8>>) -> io::Result<Option<Vec<Vec<u8>>>> {
    let short = || io::Error::new(io::ErrorKind::InvalidData, "short rtnetlink reply");
    while b.len() >= NLMSG_HDR {
        let len = u32_at(b, 0).ok_or_else(short)? as usize;
        let ty = u16_at(b, 4).ok_or_else(short)?;
        let flags = u16_at(b, 6).ok_or_else(short)?;
        if len < NLMSG_HDR || len > b.len() {
            return Err(short());
        }
        let payload = &b[NLMSG_HDR..len];
        if ty == libc::NLMSG_ERROR as u16 {
            let err = u32_at(payload, 0).ok_or_else(short)? as i32;
            if err == 0 {
                return Ok(Some(std::mem::take(out)));
            }
            let e = io::Error::from_raw_os_error(-err);
            let mut text = None;
            if flags & NLM_F_ACK_TLVS != 0 {
                // The TLVs follow the echoed request: only its header when capped.
                let echoed = if flags & NLM_F_CAPPED != 0 {
                    NLMSG_HDR
                } else {
                    u32_at(payload, 4).unwrap_or(0) as usize
                };
                if let Some(tlvs) = payload.get(4 + echoed..) {
                    text = attrs(tlvs)
                        .find(|(t, _)| *t == NLMSGERR_ATTR_MSG)
                        .map(|(_, p)| {
                            String::from_utf8_lossy(p)
                                .trim_end_matches('\0')
                                .to_string()
                        });
                }
            }
            return Err(match text {
                Some(t) if !t.is_empty() => io::Error::new(e.kind(), format!("{e}: {t}")),
                _ => e,
            });
        }
        if ty == libc::NLMSG_DONE as u16 {
            return Ok(Some(std::mem::take(out)));
        }
        out.push(payload.to_vec());
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    Ok(None)
}

/// The XDP attributes in one `RTM_NEWLINK` payload (after its nlmsghdr).
fn xdp_state_of(link: &[u8]) -> XdpState {
    let mut st = XdpState::default();
    let Some((_, xdp)) =
        attrs(link.get(IFINFO..).unwrap_or_default()).find(|(t, _)| *t == IFLA_XDP)
    else {
        return st;
    };
    for (t, p) in attrs(xdp) {
        let word = u32_at(p, 0).unwrap_or(0);
        match t {
            IFLA_XDP_ATTACHED => st.attached = p.first().copied().unwrap_or(0),
            IFLA_XDP_PROG_ID => st.prog_id = word,
            IFLA_XDP_DRV_PROG_ID => st.drv_prog_id = word,
            IFLA_XDP_SKB_PROG_ID => st.skb_prog_id = word,
            _ => {}
        }
    }
    st
}

/// The XDP state of interface `ifindex` (in this network namespace).
///
/// # Errors
/// When the netlink socket or the request fails (no such interface: `ENODEV`).
pub fn query(ifindex: u32) -> io::Result<XdpState> {
    let answers = Socket::open()?.request(libc::RTM_GETLINK, 0, ifindex, &[])?;
    Ok(answers.first().map(|a| xdp_state_of(a)).unwrap_or_default())
}

/// `RTM_SETLINK` with `IFLA_XDP`: program `fd` (-1 detaches) with `flags` (a mode, and
/// `XDP_FLAGS_REPLACE` or `XDP_FLAGS_UPDATE_IF_NOEXIST`); with `expected`, the swap happens
/// only if that program is still the one attached (`EEXIST` otherwise).
///
/// # Errors
/// The kernel's refusal, with its text.
pub fn set_xdp(ifindex: u32, fd: RawFd, flags: u32, expected: Option<RawFd>) -> io::Result<()> {
    let mut nested = Vec::new();
    put_attr(&mut nested, IFLA_XDP_FD, &fd.to_ne_bytes());
    if flags != 0 {
        put_attr(&mut nested, IFLA_XDP_FLAGS, &flags.to_ne_bytes());
    }
    if let Some(e) = expected {
        put_attr(&mut nested, IFLA_XDP_EXPECTED_FD, &e.to_ne_bytes());
    }
    let mut a = Vec::new();
    put_attr(&mut a, IFLA_XDP | NLA_F_NESTED, &nested);
    Socket::open()?.request(libc::RTM_SETLINK, libc::NLM_F_ACK as u16, ifindex, &a)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_names_the_program_and_its_mode() {
        // ifinfomsg, then IFLA_XDP { IFLA_XDP_ATTACHED = 2 (skb), IFLA_XDP_PROG_ID = 42 }.
        let mut link = vec![0u8; IFINFO];
        let mut nested = Vec::new();
        put_attr(&mut nested, IFLA_XDP_ATTACHED, &[2]);
        put_attr(&mut nested, IFLA_XDP_PROG_ID, &42u32.to_ne_bytes());
        put_attr(&mut link, IFLA_XDP | NLA_F_NESTED, &nested);
        let st = xdp_state_of(&link);
        assert_eq!(st.main(), Some((42, XdpMode::Generic)));
        assert_eq!(st.any(), Some(42));
        assert_eq!(xdp_state_of(&[0u8; IFINFO]).main(), None);
    }

    #[test]
    fn a_refusal_carries_the_kernels_text() {
        // nlmsgerr: error -EEXIST, the echoed request's header (capped), then the message TLV.
        let mut payload = (-libc::EEXIST).to_ne_bytes().to_vec();
        let mut echoed = vec![0u8; NLMSG_HDR];
        echoed[0..4].copy_from_slice(&(NLMSG_HDR as u32).to_ne_bytes());
        payload.extend_from_slice(&echoed);
        put_attr(
            &mut payload,
            NLMSGERR_ATTR_MSG,
            b"Active program does not match expected\0",
        );
        let mut msg = vec![0u8; NLMSG_HDR];
        msg.extend_from_slice(&payload);
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        msg[6..8].copy_from_slice(&(NLM_F_CAPPED | NLM_F_ACK_TLVS).to_ne_bytes());
        let e = parse_answers(&msg, &mut Vec::new()).unwrap_err();
        assert_eq!(e.raw_os_error(), None);
        assert!(e.to_string().contains("does not match expected"), "{e}");
        assert_eq!(e.kind(), io::Error::from_raw_os_error(libc::EEXIST).kind());
    }
}
