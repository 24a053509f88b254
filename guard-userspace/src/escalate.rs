//! "403, then block": the load balancer's verdicts enforced at the NIC. HAProxy counts requests
//! per source in a stick table and answers 403 or 429 above a limit; the guard polls that
//! table over HAProxy's runtime API (`show table NAME data.COLUMN gt N`) and bans in XDP, with
//! reason `l7:haproxy`, a source that stays over the condition for `for_secs`.
//!
//! Hand-written: no crate speaks HAProxy's runtime API, a line protocol of a few commands.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// How long a poll of the runtime API may take.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(2);

/// The most entries read from one poll (a table of a million sources over the condition is
/// an attack the guard's own limits see first).
pub const MAX_ENTRIES: usize = 100_000;

/// `[[escalate.haproxy]]`, validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaproxySettings {
    /// HAProxy's runtime API (a `stats socket` at level operator or admin).
    pub socket: PathBuf,
    /// The stick table (named after the frontend or backend that declares it).
    pub table: String,
    pub when: Condition,
    /// How long a source must stay over the condition.
    pub for_secs: u64,
    /// How long the ban that follows lasts.
    pub ban_secs: u64,
}

/// How often each table is polled.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// A comparison of a stick-table column, as HAProxy's `show table` filter has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Op {
    fn haproxy(self) -> &'static str {
        match self {
            Self::Gt => "gt",
            Self::Ge => "ge",
            Self::Lt => "lt",
            Self::Le => "le",
            Self::Eq => "eq",
            Self::Ne => "ne",
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Eq => "==",
            Self::Ne => "!=",
        }
    }
}

/// `when = "http_req_rate > 100"`: a column of the table, a comparison, a number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub column: String,
    pub op: Op,
    pub value: i64,
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.column, self.op.symbol(), self.value)
    }
}

impl std::str::FromStr for Condition {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const EXPECTED: &str =
            "expected COLUMN OP NUMBER, such as \"http_req_rate > 100\" (OP: > >= < <= == !=)";
        let words: Vec<&str> = s.split_whitespace().collect();
        let [column, op, value] = words[..] else {
            return Err(EXPECTED.to_string());
        };
        // A stick-table data type: letters, digits and underscores (gpc0, http_req_rate, ...).
        if column.is_empty()
            || !column
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || !column.starts_with(|c: char| c.is_ascii_alphabetic())
        {
            return Err(format!(
                "{column:?} is not a stick-table column: {EXPECTED}"
            ));
        }
        let op = match op {
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            _ => return Err(format!("{op:?} is not a comparison: {EXPECTED}")),
        };
        let value = value
            .parse()
            .map_err(|_| format!("{value:?} is not a whole number: {EXPECTED}"))?;
        Ok(Self {
            column: column.to_string(),
            op,
            value,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EscalateError {
    #[error("cannot reach HAProxy's runtime API at {}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("HAProxy's runtime API at {} did not answer in time", socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// HAProxy refused the command (an unknown table, a column it does not store).
    #[error("HAProxy refused `show table {table}` on {}: {message}", socket.display())]
    Refused {
        socket: PathBuf,
        table: String,
        message: String,
    },
}

/// Asks HAProxy for the entries of `table` that meet `cond`: their keys (IPv4 or IPv6
/// addresses; other key types are skipped) with the column's value.
///
/// # Errors
///
/// The socket cannot be reached or does not answer within [`POLL_TIMEOUT`], or HAProxy
/// refuses the command (its message is in the error).
pub fn poll(
    socket: &Path,
    table: &str,
    cond: &Condition,
) -> Result<Vec<(IpAddr, i64)>, EscalateError> {
    let io = |source| EscalateError::Io {
        socket: socket.to_path_buf(),
        source,
    };
    let mut s = UnixStream::connect(socket).map_err(|source| EscalateError::Connect {
        socket: socket.to_path_buf(),
        source,
    })?;
    s.set_read_timeout(Some(POLL_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(POLL_TIMEOUT)).map_err(io)?;
    let cmd = format!(
        "show table {table} data.{} {} {}\n",
        cond.column,
        cond.op.haproxy(),
        cond.value
    );
    s.write_all(cmd.as_bytes()).map_err(io)?;
    let reader = BufReader::new(s);
    let mut out = Vec::new();
    let mut refused = Vec::new();
    let mut header = false;
    for line in reader.lines() {
        let line = line.map_err(io)?;
        if line.starts_with("# table:") {
            header = true;
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        match parse_entry(&line, &cond.column) {
            Some(entry) if out.len() < MAX_ENTRIES => out.push(entry),
            Some(_) => {}
            None if !header => refused.push(line),
            None => {}
        }
    }
    if !header {
        return Err(EscalateError::Refused {
            socket: socket.to_path_buf(),
            table: table.to_string(),
            message: if refused.is_empty() {
                "no answer".to_string()
            } else {
                refused.join(" ")
            },
        });
    }
    Ok(out)
}

/// One entry line, `0x55d...: key=198.18.0.7 use=0 exp=29998 http_req_rate(10000)=150`: the
/// key and the value of `column` (whose name may carry a period in parentheses).
pub fn parse_entry(line: &str, column: &str) -> Option<(IpAddr, i64)> {
    let (_, rest) = line.split_once(": ")?;
    let mut key = None;
    let mut value = None;
    for field in rest.split_whitespace() {
        let (name, v) = field.split_once('=')?;
        if name == "key" {
            key = v.parse::<IpAddr>().ok();
        } else if name == column || name.split_once('(').is_some_and(|(n, _)| n == column) {
            value = v.parse::<i64>().ok();
        }
    }
    Some((key?, value?))
}

/// Which sources have stayed over the condition for long enough: each is remembered from the
/// first poll that found it until a poll does not (then its count starts again).
#[derive(Debug, Default)]
pub struct Tracker {
    over_since: HashMap<IpAddr, u64>,
}

impl Tracker {
    /// Takes one poll's sources over the condition at `now` (Unix seconds); returns those over
    /// it for `for_secs` or more, which are then forgotten (the ban takes over).
    pub fn observe(&mut self, now: u64, over: &[IpAddr], for_secs: u64) -> Vec<IpAddr> {
        let seen: std::collections::HashSet<IpAddr> = over.iter().copied().collect();
        self.over_since.retain(|ip, _| seen.contains(ip));
        let mut due = Vec::new();
        for ip in seen {
            let since = *self.over_since.entry(ip).or_insert(now);
            if now.saturating_sub(since) >= for_secs {
                due.push(ip);
            }
        }
        for ip in &due {
            self.over_since.remove(ip);
        }
        due.sort();
        due
    }

    /// Sources being watched now.
    pub fn watching(&self) -> usize {
        self.over_since.len()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn conditions_parse_and_bad_ones_say_what_is_accepted() {
        let c: Condition = "http_req_rate > 100".parse().unwrap();
        assert_eq!(
            c,
            Condition {
                column: "http_req_rate".into(),
                op: Op::Gt,
                value: 100
            }
        );
        assert_eq!(c.to_string(), "http_req_rate > 100");
        assert_eq!("gpc0 >= 1".parse::<Condition>().unwrap().op, Op::Ge);
        for bad in ["http_req_rate >", "rate ~ 3", "1x > 3", "a > b", "a > 1 2"] {
            let e = bad.parse::<Condition>().unwrap_err();
            assert!(e.contains("expected COLUMN OP NUMBER"), "{bad}: {e}");
        }
    }

    #[test]
    fn entry_lines_give_the_key_and_the_column() {
        let l = "0x18f907c: key=127.0.0.1 use=0 exp=3583771 http_req_rate(86400000)=3";
        assert_eq!(
            parse_entry(l, "http_req_rate"),
            Some(("127.0.0.1".parse().unwrap(), 3))
        );
        let l6 = "0x55: key=fd00::7 use=1 exp=100 shard=0 gpc0=12 http_req_rate(10000)=150";
        assert_eq!(
            parse_entry(l6, "gpc0"),
            Some(("fd00::7".parse().unwrap(), 12))
        );
        assert_eq!(parse_entry(l6, "http_err_rate"), None);
        assert_eq!(parse_entry("0x1: key=user42 use=0 gpc0=3", "gpc0"), None);
    }

    #[test]
    fn a_source_is_due_after_for_secs_over_and_starts_again_when_it_drops_below() {
        let a: IpAddr = "198.18.0.7".parse().unwrap();
        let b: IpAddr = "198.18.0.8".parse().unwrap();
        let mut t = Tracker::default();
        assert!(t.observe(100, &[a, b], 30).is_empty());
        assert!(t.observe(110, &[a], 30).is_empty());
        // b fell below at 110: it starts again.
        assert!(t.observe(125, &[a, b], 30).is_empty());
        assert_eq!(t.observe(130, &[a, b], 30), vec![a]);
        assert_eq!(t.watching(), 1);
        assert_eq!(t.observe(155, &[b], 30), vec![b]);
    }

    /// A stand-in for HAProxy's runtime API: answers one connection with `answer`.
    fn fake_haproxy(answer: &'static str) -> (PathBuf, std::thread::JoinHandle<String>) {
        let dir = std::env::temp_dir().join(format!(
            "guard-escalate-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admin.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            (&s).write_all(answer.as_bytes()).unwrap();
            line
        });
        (path, t)
    }

    #[test]
    fn a_poll_sends_the_filter_and_reads_the_entries() {
        let (path, t) = fake_haproxy(
            "# table: per_ip_rates, type: ip, size:102400, used:2\n\
             0x1: key=198.18.0.7 use=0 exp=9000 http_req_rate(10000)=150\n\
             0x2: key=198.18.0.9 use=0 exp=9000 http_req_rate(10000)=101\n\n",
        );
        let cond: Condition = "http_req_rate > 100".parse().unwrap();
        let got = poll(&path, "per_ip_rates", &cond).unwrap();
        assert_eq!(
            t.join().unwrap(),
            "show table per_ip_rates data.http_req_rate gt 100\n"
        );
        assert_eq!(
            got,
            vec![
                ("198.18.0.7".parse().unwrap(), 150),
                ("198.18.0.9".parse().unwrap(), 101)
            ]
        );
    }

    #[test]
    fn a_refused_command_is_an_error_with_haproxys_message() {
        let (path, t) = fake_haproxy("Data type not stored in this table\n");
        let cond: Condition = "gpc0 > 1".parse().unwrap();
        let e = poll(&path, "per_ip_rates", &cond).unwrap_err();
        t.join().unwrap();
        assert!(
            e.to_string().contains("Data type not stored in this table"),
            "{e}"
        );
        let e = poll(Path::new("/nonexistent/admin.sock"), "t", &cond).unwrap_err();
        assert!(e.to_string().contains("cannot reach"), "{e}");
    }
}
