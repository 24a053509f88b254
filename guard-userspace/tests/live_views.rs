//! The live views under tmux: `guard stats --watch` and `guard top --watch` against a real
//! daemon in a namespace, typed at and read back the way an operator sees them (tmux
//! send-keys, capture-pane); their plain output when stdout is not a terminal; and a control
//! client that sends an endless line, cut off while the daemon keeps answering.
mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    process::{Command, Stdio},
    time::Duration,
};

use support::{
    WAIT,
    netns::{Testbed, live_or_skip},
    wait_for,
};

/// A daemon on a veth in a fresh namespace, its health listeners off.
fn bed(net: u8) -> Testbed {
    let mut tb = Testbed::new();
    let srv = tb.netns("s");
    let peer = tb.netns("c");
    let (iface, _) = tb.link(
        &srv,
        &format!("198.18.{net}.1/24"),
        &peer,
        &format!("198.18.{net}.2/24"),
    );
    tb.start_guard(
        &srv,
        &[
            "--iface",
            &iface,
            "--health-listen",
            "",
            "--agent-listen",
            "",
        ],
    );
    tb
}

/// A tmux server of its own (its own socket), killed on drop.
struct Tmux {
    socket: String,
    /// Where the command's exit status is written once it exits: tmux 3.3 at times leaves an
    /// exited pane's process unreaped (a zombie, `pane_dead_status` empty) for good, so the
    /// status comes from a shell that waits for the command instead.
    status_file: std::path::PathBuf,
}

impl Tmux {
    fn new(tag: &str) -> Self {
        let status_file = std::env::temp_dir().join(format!("guard-test-tmux-{tag}.status"));
        let _ = std::fs::remove_file(&status_file);
        Self {
            socket: format!("guard-test-{tag}"),
            status_file,
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux runs (Debian package tmux; `cargo xtask test` installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `command` in a detached 120x40 window that stays once the command exits.
    fn start(&self, command: &str) {
        self.run(&[
            "new-session",
            "-d",
            "-s",
            "v",
            "-x",
            "120",
            "-y",
            "40",
            &format!("{command}; echo $? > {}", self.status_file.display()),
        ]);
        self.run(&["set-option", "-t", "v", "remain-on-exit", "on"]);
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "v"])
    }

    /// `Some(status)` once the command has exited: its exit code, or `None` inside when a
    /// signal killed it (the shell reports 128 + the signal).
    fn exited(&self) -> Option<Option<i32>> {
        let text = std::fs::read_to_string(&self.status_file).ok()?;
        let code: i32 = text.trim().parse().ok()?;
        Some((code < 128).then_some(code))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.status_file);
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// The timestamp on a frame's title line.
fn stamp(screen: &str) -> Option<String> {
    screen
        .lines()
        .find(|l| l.starts_with("guard "))
        .and_then(|l| l.split_whitespace().last().map(str::to_string))
}

/// Waits for a frame, then for a later one (its title's time moves on), and checks that it
/// replaced the first in place: one title and one header on the screen, not two.
fn two_frames_in_place(t: &Tmux, header: &str) -> String {
    let first = wait_for(WAIT, || {
        let s = t.screen();
        (s.contains(header) && stamp(&s).is_some()).then_some(s)
    })
    .unwrap_or_else(|| panic!("no first frame with {header:?}:\n{}", t.screen()));
    let first_stamp = stamp(&first);
    let later = wait_for(WAIT, || {
        let s = t.screen();
        (s.contains(header) && stamp(&s).is_some() && stamp(&s) != first_stamp).then_some(s)
    })
    .unwrap_or_else(|| panic!("the view never refreshed:\n{}", t.screen()));
    assert_eq!(later.matches("(q or Ctrl-C quits)").count(), 1, "{later}");
    assert_eq!(
        later.matches(header).count(),
        1,
        "redrawn in place:\n{later}"
    );
    later
}

#[test]
fn stats_and_top_watch_refresh_in_place_and_quit_on_q_and_ctrl_c() {
    if !live_or_skip("stats_and_top_watch_refresh_in_place_and_quit_on_q_and_ctrl_c") {
        return;
    }
    let tb = bed(61);
    let guard = env!("CARGO_BIN_EXE_guard");
    let socket = tb.socket().display().to_string();

    let t = Tmux::new(&format!("{}s", tb.tag));
    t.start(&format!("{guard} stats --watch --socket {socket}"));
    let frame = two_frames_in_place(&t, "INTERFACE");
    assert!(frame.contains("PKT/S"), "{frame}");
    assert!(
        frame.contains("no bans") || frame.contains("BANNED"),
        "{frame}"
    );
    t.run(&["send-keys", "-t", "v", "q"]);
    let status = wait_for(WAIT, || t.exited())
        .unwrap_or_else(|| panic!("q did not end the view:\n{}", t.screen()));
    assert_eq!(status, Some(0), "{}", t.screen());
    drop(t);

    let t = Tmux::new(&format!("{}t", tb.tag));
    t.start(&format!("{guard} top --watch -n 5 --socket {socket}"));
    two_frames_in_place(&t, "guard top, 5 sources");
    t.run(&["send-keys", "-t", "v", "C-c"]);
    let status = wait_for(WAIT, || t.exited())
        .unwrap_or_else(|| panic!("Ctrl-C did not end the view:\n{}", t.screen()));
    assert_eq!(
        status,
        Some(0),
        "Ctrl-C is a quit key, not a kill: {}",
        t.screen()
    );
}

#[test]
fn stats_watch_into_a_pipe_prints_plain_frames_one_after_another() {
    if !live_or_skip("stats_watch_into_a_pipe_prints_plain_frames_one_after_another") {
        return;
    }
    let tb = bed(62);
    let mut child = Command::new(env!("CARGO_BIN_EXE_guard"))
        .args(["stats", "--watch", "--socket"])
        .arg(tb.socket())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("guard stats --watch");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = String::new();
    let mut line = String::new();
    // Bounded: two frames' worth of lines, each within the wait.
    for _ in 0..200 {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        seen.push_str(&line);
        if seen.matches("INTERFACE").count() == 2 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen.matches("INTERFACE").count(), 2, "two frames:\n{seen}");
    assert!(
        !seen.contains('\x1b'),
        "no terminal codes into a pipe:\n{seen:?}"
    );
}

#[test]
fn a_control_client_sending_an_endless_line_is_cut_off_and_the_daemon_keeps_answering() {
    if !live_or_skip(
        "a_control_client_sending_an_endless_line_is_cut_off_and_the_daemon_keeps_answering",
    ) {
        return;
    }
    let tb = bed(63);
    let mut s = UnixStream::connect(tb.socket()).expect("connect to the control socket");
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let chunk = vec![b'x'; 1 << 20];
    let limit = 2 * guard::rpc::MAX_REQUEST;
    let mut sent = 0;
    // Bounded: twice the longest request, or until the daemon cuts the line off.
    while sent < limit && s.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    assert!(sent < limit, "the daemon took {sent} bytes of one line");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    drop(s);
    // Still answering, as before.
    let status = tb.guard_ok(&["status"]);
    assert!(!status.is_empty());
}
