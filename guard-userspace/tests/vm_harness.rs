//! Live: the test VM (tests/support/vm.rs) runs a test this kernel cannot. The test goes to the
//! VM whatever this kernel can do, and there proves it is elsewhere: another kernel release,
//! veth pairs in its own namespaces with traffic between them, and libxdp's dispatcher, which
//! needs freplace programs (the host's kernel refuses them, so libxdp falls back to one program).
mod support;

use support::{
    netns::{Testbed, live_or_skip, sh},
    vm::{self, Place, XdpFilter},
};

#[test]
fn test_vm_runs_libxdp_dispatcher_on_another_kernel() {
    const NAME: &str = "test_vm_runs_libxdp_dispatcher_on_another_kernel";
    if !live_or_skip(NAME) {
        return;
    }
    let forced = || Err("this test proves the VM: it always runs there".to_owned());
    if vm::here_or_in_vm(NAME, forced) != Place::Here {
        return;
    }

    // In the VM from here on.
    let host = std::env::var("GUARD_VM_HOST_RELEASE").expect("here_or_in_vm sets it");
    let here = vm::host_release();
    assert_ne!(here, host, "the VM runs the host's kernel release");

    let mut bed = Testbed::with_prefix("gm");
    let (a, b) = (bed.netns("a"), bed.netns("b"));
    let (a_dev, _) = bed.link(&a, "198.18.253.1/24", &b, "198.18.253.2/24");
    let net = format!("--net=/run/netns/{a}");
    sh(&[
        "nsenter",
        &net,
        "ping",
        "-c",
        "1",
        "-W",
        "5",
        "198.18.253.2",
    ]);

    let filter = XdpFilter::load(&a, &a_dev).expect("xdp-filter load");
    let status = filter.status().expect("xdp-loader status");
    assert!(
        status.contains("xdp_dispatcher"),
        "Linux {here}: libxdp attached no dispatcher (freplace refused?):\n{status}"
    );
    sh(&[
        "nsenter",
        &net,
        "ping",
        "-c",
        "1",
        "-W",
        "5",
        "198.18.253.2",
    ]);
    drop(filter);
    assert!(
        vm::xdp_dispatcher_works().is_ok(),
        "xdp_dispatcher_works says no where the dispatcher just worked"
    );
}
