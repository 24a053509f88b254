//! Which XDP program an interface already runs, asked of the kernel over rtnetlink (see
//! `netlink`), so that `guard run` refuses to replace a foreign program (a load balancer)
//! instead of taking it down, and joins libxdp's dispatcher where that runs.
use std::io;

/// The id of the XDP program attached to interface `ifindex` (in this network namespace), in
/// any mode; `None` if there is none.
///
/// # Errors
/// When the netlink socket or the request fails (no such interface: `ENODEV`).
pub fn xdp_prog_on(ifindex: u32) -> io::Result<Option<u32>> {
    Ok(super::netlink::query(ifindex)?.any())
}

/// The name the kernel holds for program `id` (its first 15 bytes), or a placeholder.
pub fn prog_name(id: u32) -> String {
    super::dispatcher::program_info(id)
        .ok()
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
}
