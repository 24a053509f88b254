//! Live loopback tests of the HAProxy agent-check server: one valid line per connection,
//! whatever the client sends, and no pile-up of slow clients.
mod support;

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use guard::{
    health::{HealthReport, Status},
    serve::agent::{AgentServer, MAX_CONNECTIONS},
};
use support::{WAIT, tcp_accepted, wait_for};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("loopback address")
}

fn server(status: Status, reason: &str) -> (AgentServer, Arc<Mutex<HealthReport>>) {
    let mut report = HealthReport::starting(0);
    report.status = status;
    report.reason = reason.into();
    let shared = Arc::new(Mutex::new(report));
    let for_agent = Arc::clone(&shared);
    let srv = AgentServer::bind(
        loopback(),
        Arc::new(move || for_agent.lock().expect("lock").clone()),
    )
    .expect("bind loopback");
    (srv, shared)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    s
}

fn read_all(mut s: TcpStream) -> String {
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .expect("read until the server closes");
    String::from_utf8(out).expect("ascii")
}

#[test]
fn silent_client_gets_one_line_and_the_connection_closes() {
    let (srv, _) = server(Status::Warn { weight: 62 }, "cpu 78%");
    let start = Instant::now();
    assert_eq!(
        read_all(connect(srv.local_addr())),
        "up ready 62% #cpu 78%\n"
    );
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "no waiting for the client"
    );
}

#[test]
fn agent_send_string_is_not_waited_for_or_parsed() {
    let (srv, _) = server(Status::Drain, "operator: deploy");
    let mut s = connect(srv.local_addr());
    s.write_all(b"be_web/srv1\n").expect("send");
    assert_eq!(read_all(s), "up drain #operator: deploy\n");
}

#[test]
fn garbage_from_the_client_still_gets_one_valid_line() {
    let (srv, _) = server(Status::Fail, "http check failed");
    let mut s = connect(srv.local_addr());
    let _ = s.write_all(&[0xff, 0x00, b'\r', b'\n', 0x1b, b'[', b'2', b'J']);
    let _ = s.write_all(&vec![b'x'; 64 * 1024]);
    let _ = s.shutdown(Shutdown::Write);
    let reply = read_all(s);
    assert_eq!(reply, "down #http check failed\n");
}

#[test]
fn each_connection_sees_the_current_state() {
    let (srv, report) = server(Status::Pass, "healthy");
    assert_eq!(
        read_all(connect(srv.local_addr())),
        "up ready 100% #healthy\n"
    );
    {
        let mut r = report.lock().expect("lock");
        r.status = Status::Maint;
        r.reason = "operator: kernel upgrade\nline two".into();
    }
    assert_eq!(
        read_all(connect(srv.local_addr())),
        "maint #operator: kernel upgrade line two\n"
    );
}

#[test]
fn slow_clients_cannot_pile_up() {
    let (srv, _) = server(Status::Pass, "healthy");
    let addr = srv.local_addr();
    // Twice the bound of clients that have not read yet and never close, all taken in.
    let hogs: Vec<TcpStream> = (0..2 * MAX_CONNECTIONS).map(|_| connect(addr)).collect();
    wait_for(WAIT, || tcp_accepted(addr, hogs.len()).then_some(()))
        .expect("the server never accepted every hog");
    let start = Instant::now();
    assert_eq!(read_all(connect(addr)), "up ready 100% #healthy\n");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // Every hog got its line too, and was closed: those a worker served and those answered
    // inline over the bound.
    for (i, hog) in hogs.into_iter().enumerate() {
        assert_eq!(read_all(hog), "up ready 100% #healthy\n", "hog {i}");
    }
}

#[test]
fn bind_failure_names_the_address() {
    let taken = TcpListener::bind(loopback()).expect("bind loopback");
    let addr = taken.local_addr().expect("addr");
    let Err(err) = AgentServer::bind(addr, Arc::new(|| HealthReport::starting(0))) else {
        panic!("bound an address in use");
    };
    assert_eq!(
        err.to_string(),
        format!("cannot listen on {addr} for the HAProxy agent-check server")
    );
}

#[test]
fn shutdown_stops_accepting() {
    let (srv, _) = server(Status::Pass, "healthy");
    let addr = srv.local_addr();
    srv.shutdown();
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
}
