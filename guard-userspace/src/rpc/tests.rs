//! Tests of the control socket: round trips, refusals, framing and bounds, over the fake data plane.
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::{
        fs::PermissionsExt,
        net::{UnixListener, UnixStream},
    },
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use futures_util::future::BoxFuture;

use super::*;
use crate::{
    cidr::Cidr,
    config::Settings,
    control::testing::{FakeClock, FakeDatapath},
    control::{AddOutcome, Control},
    dataplane::List,
};

struct Fixture {
    dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn fixture() -> Fixture {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "guard-api-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&dir);
    Fixture { dir }
}

struct TestHandler(Arc<Mutex<Control<FakeDatapath>>>);

impl Handler for TestHandler {
    fn handle(&self, request: Request) -> BoxFuture<'_, Result<Reply, String>> {
        Box::pin(dispatch(&self.0, request))
    }
}

fn start(f: &Fixture) -> PathBuf {
    let clock = FakeClock::new(1_000_000_000_000, 1_700_000_000);
    let mut settings = Settings::builtin();
    settings.state.dir = f.dir.join("state");
    let control = Control::new(FakeDatapath::new(clock.clone()), settings, vec![])
        .with_wall_clock(clock.wall());
    let socket = f.dir.join("run/guard.sock");
    let listener = bind(&socket).unwrap();
    serve(
        listener,
        Arc::new(TestHandler(Arc::new(Mutex::new(control)))),
    );
    socket
}

#[test]
fn requests_round_trip_over_the_socket() {
    let f = fixture();
    let socket = start(&f);
    let cidr: Cidr = "203.0.113.0/24".parse().unwrap();
    let reply = call(
        &socket,
        &Request::ListAdd {
            list: List::Deny,
            cidr,
            ttl_secs: Some(600),
            reason: Some("abuse".into()),
        },
    )
    .unwrap();
    assert_eq!(reply, Reply::Added(AddOutcome { replaced: false }));
    let Reply::Entries(entries) = call(&socket, &Request::ListShow { list: List::Deny }).unwrap()
    else {
        panic!("wrong reply")
    };
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].cidr, cidr);
    assert_eq!(entries[0].expires, Some(1_700_000_000 + 600));
    assert!(matches!(
        call(&socket, &Request::Status).unwrap(),
        Reply::Status(_)
    ));
}

#[test]
fn a_refused_request_carries_the_daemons_message() {
    let f = fixture();
    let socket = start(&f);
    let e = call(
        &socket,
        &Request::Unban {
            cidr: "192.0.2.1".parse().unwrap(),
        },
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "no ban matches 192.0.2.1/32");
    let e = call(&socket, &Request::Reload).unwrap_err();
    assert!(matches!(e, ApiError::Refused { .. }), "{e}");
}

#[test]
fn a_malformed_request_gets_an_error_line() {
    let f = fixture();
    let socket = start(&f);
    let mut s = UnixStream::connect(&socket).unwrap();
    s.write_all(b"{\"cmd\":\"list_add\",\"list\":\"deny\",\"cidr\":\"300.1.2.3\"}\n")
        .unwrap();
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).unwrap();
    let Response::Error { message } = serde_json::from_str(&answer).unwrap() else {
        panic!("{answer}")
    };
    assert!(message.contains("300.1.2.3"), "{message}");
}

#[test]
fn socket_is_mode_0600() {
    let f = fixture();
    let socket = start(&f);
    let mode = fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn no_daemon_is_a_clear_error() {
    let f = fixture();
    let socket = f.dir.join("nothing.sock");
    let e = call(&socket, &Request::Status).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "cannot reach the guard daemon at {}: is `guard run` running? (",
            socket.display()
        )),
        "{msg}"
    );
    assert!(msg.contains("No such file"), "{msg}");
}

#[test]
fn stale_socket_is_replaced_but_a_live_one_is_not() {
    let f = fixture();
    fs::create_dir_all(&f.dir).unwrap();
    let socket = f.dir.join("guard.sock");
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let live = bind(&socket).unwrap();
    let e = bind(&socket).unwrap_err();
    assert!(matches!(e, ApiError::InUse { .. }), "{e}");
    drop(live);
    let file = f.dir.join("plain");
    fs::write(&file, b"").unwrap();
    assert!(matches!(
        bind(&file).unwrap_err(),
        ApiError::NotASocket { .. }
    ));
}

#[test]
fn requests_have_a_stable_wire_form() {
    let r = Request::ListAdd {
        list: List::Deny,
        cidr: "10.0.0.0/8".parse().unwrap(),
        ttl_secs: None,
        reason: None,
    };
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        r#"{"cmd":"list_add","list":"deny","cidr":"10.0.0.0/8"}"#
    );
    assert_eq!(
        serde_json::to_string(&Request::Bans).unwrap(),
        r#"{"cmd":"bans"}"#
    );
    assert_eq!(
        serde_json::to_string(&Response::Ok(Reply::Deleted)).unwrap(),
        r#"{"ok":"deleted"}"#
    );
    assert_eq!(
        serde_json::to_string(&Response::Error {
            message: "x".into()
        })
        .unwrap(),
        r#"{"error":{"message":"x"}}"#
    );
}

#[test]
fn a_client_sending_an_endless_line_is_cut_off_and_the_server_keeps_answering() {
    let f = fixture();
    let socket = start(&f);
    let mut s = UnixStream::connect(&socket).unwrap();
    s.set_write_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    // Bounded: twice the longest request, in 1 MiB writes, or until the server cuts us off.
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0usize;
    let cut_off = loop {
        if sent >= 2 * MAX_REQUEST {
            break false;
        }
        match s.write_all(&chunk) {
            Ok(()) => sent += chunk.len(),
            Err(_) => break true,
        }
    };
    assert!(
        cut_off,
        "the server took {sent} bytes of one line without cutting it off"
    );
    assert!(
        sent <= MAX_REQUEST + (8 << 20),
        "cut off late, after {sent} bytes"
    );
    // It said why before closing, if the answer made it through the reset.
    let mut answer = String::new();
    if BufReader::new(&s).read_line(&mut answer).is_ok() && !answer.is_empty() {
        let Response::Error { message } = serde_json::from_str(&answer).unwrap() else {
            panic!("{answer}")
        };
        assert!(message.contains("not one complete line"), "{message}");
    }
    drop(s);
    // And the next client is answered as usual.
    assert!(matches!(
        call(&socket, &Request::Status).unwrap(),
        Reply::Status(_)
    ));
}
