//! Telling systemd how we are (`READY=1`, `WATCHDOG=1`, `STOPPING=1`) through the sd-notify
//! crate, which reads `NOTIFY_SOCKET` and `WATCHDOG_*`.
//!
//! Hand-written here: the send to an abstract-namespace socket (`NOTIFY_SOCKET=@name`, which
//! systemd uses in containers), which sd-notify 0.5 does not reach (it connects to a path).
use std::{
    fmt::Write as _,
    os::{linux::net::SocketAddrExt, unix::ffi::OsStrExt, unix::net::SocketAddr as UnixAddr},
    time::Duration,
};

use sd_notify::NotifyState;

/// Sends `state` to systemd if `NOTIFY_SOCKET` is set; false if it is not.
///
/// # Errors
///
/// The socket cannot be reached.
pub fn sd_notify(state: &[NotifyState<'_>]) -> std::io::Result<bool> {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()) else {
        return Ok(false);
    };
    if let Some(name) = socket.as_bytes().strip_prefix(b"@") {
        let mut msg = String::new();
        for s in state {
            let _ = writeln!(msg, "{s}");
        }
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        sock.send_to_addr(msg.as_bytes(), &UnixAddr::from_abstract_name(name)?)?;
        return Ok(true);
    }
    sd_notify::notify(state).map(|()| true)
}

/// The watchdog interval systemd asked of this process (`WATCHDOG_USEC`, for this process if
/// `WATCHDOG_PID` is set; see sd_watchdog_enabled(3)); `None` when not armed.
pub fn watchdog() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use std::{
        os::{linux::net::SocketAddrExt, unix::net::SocketAddr, unix::net::UnixDatagram},
        process::Command,
    };

    use super::*;

    /// Runs the test `name` of this binary again in a child with `env` set (the environment
    /// is the process's: changing it in a threaded test binary is unsound), returning whether
    /// the child passed. In the child, `GUARD_TEST_CHILD` is set.
    fn in_child(name: &str, env: &[(&str, &str)]) -> bool {
        let exe = std::env::current_exe().expect("test binary");
        let mut c = Command::new(exe);
        c.args([name, "--exact", "--test-threads=1", "--quiet"])
            .env("GUARD_TEST_CHILD", "1")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        for (k, v) in env {
            c.env(k, v);
        }
        c.status().expect("run the child").success()
    }

    fn child() -> bool {
        std::env::var_os("GUARD_TEST_CHILD").is_some()
    }

    #[test]
    fn watchdog_is_wanted_only_when_systemd_arms_it_for_this_process() {
        const NAME: &str =
            "daemon::notify::tests::watchdog_is_wanted_only_when_systemd_arms_it_for_this_process";
        if child() {
            let want = std::env::var("WANT").expect("WANT") == "yes";
            assert_eq!(watchdog().is_some(), want);
            return;
        }
        // (The child's own pid is not known before it starts, so "armed for this process by
        // WATCHDOG_PID" is the unset case; another process's pid is tested.)
        for (usec, pid, want) in [
            (Some("30000000"), None, "yes"),
            (Some("30000000"), Some("1"), "no"),
            (None, None, "no"),
            (Some("0"), None, "no"),
            (Some("soon"), None, "no"),
        ] {
            let mut env = vec![("WANT", want)];
            if let Some(u) = usec {
                env.push(("WATCHDOG_USEC", u));
            }
            if let Some(p) = pid {
                env.push(("WATCHDOG_PID", p));
            }
            assert!(in_child(NAME, &env), "{usec:?} {pid:?}");
        }
    }

    #[test]
    fn sd_notify_reaches_a_path_socket() {
        const NAME: &str = "daemon::notify::tests::sd_notify_reaches_a_path_socket";
        if child() {
            assert!(sd_notify(&[NotifyState::Ready]).expect("notify"));
            return;
        }
        let dir = std::env::temp_dir().join(format!("guard-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        assert!(in_child(NAME, &[("NOTIFY_SOCKET", path.to_str().unwrap())]));
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sd_notify_reaches_an_abstract_socket() {
        const NAME: &str = "daemon::notify::tests::sd_notify_reaches_an_abstract_socket";
        if child() {
            assert!(sd_notify(&[NotifyState::Ready]).expect("notify"));
            return;
        }
        let name = format!("guard-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        assert!(in_child(NAME, &[("NOTIFY_SOCKET", &format!("@{name}"))]));
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
    }

    #[test]
    fn sd_notify_to_a_missing_socket_is_an_error() {
        const NAME: &str = "daemon::notify::tests::sd_notify_to_a_missing_socket_is_an_error";
        if child() {
            assert!(sd_notify(&[NotifyState::Ready]).is_err());
            return;
        }
        assert!(in_child(NAME, &[("NOTIFY_SOCKET", "/nonexistent/notify")]));
        // Without NOTIFY_SOCKET there is nobody to tell, and that is no error.
        assert!(!sd_notify(&[NotifyState::Ready]).expect("no socket set"));
    }
}
