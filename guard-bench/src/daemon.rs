//! The real `guard` daemon in a namespace, as an operator runs it: `guard run --config FILE`
//! with the embedded default limits, its pins, control socket and state private to the run,
//! driven through the real CLI, and detached (`guard detach`) and stopped on drop.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use guard_common::reason;

/// A service on the protected host, for the daemon's config.
pub struct Service {
    pub name: &'static str,
    /// "udp" or "tcp".
    pub protocol: &'static str,
    pub port: u16,
    /// `syn_cookies` (tcp only); `None` keeps the default ("auto").
    pub syn_cookies: Option<&'static str>,
}

/// Where the daemon serves its health outputs; `None` keeps the config's defaults (loopback of
/// the daemon's own namespace).
#[derive(Default)]
pub struct HealthListen<'a> {
    pub http: Option<&'a str>,
    pub agent: Option<&'a str>,
}

/// What the daemon of one run keeps apart from every other run and from an installed guard.
struct Private {
    pin_dir: PathBuf,
    socket: PathBuf,
    state_dir: PathBuf,
}

/// The config file for a run: the embedded defaults (`guard config default`; no limit is set
/// here) with the pins, control socket and state private to the run.
fn config_toml(private: &Private, health: &HealthListen, services: &[Service]) -> String {
    let Private {
        pin_dir,
        socket,
        state_dir,
    } = private;
    let mut toml = format!(
        "# Written by guard-bench for one run; every key not set here is the embedded default.\n\
         [datapath]\n\
         pin_dir = {pin:?}\n\n\
         [control]\n\
         socket = {socket:?}\n\n\
         [state]\n\
         dir = {state:?}\n",
        pin = pin_dir.display().to_string(),
        socket = socket.display().to_string(),
        state = state_dir.display().to_string(),
    );
    let HealthListen { http, agent } = health;
    if http.is_some() || agent.is_some() {
        toml += "\n[health]\n";
        if let Some(a) = http {
            toml += &format!("listen = {a:?}\n");
        }
        if let Some(a) = agent {
            toml += &format!("agent_listen = {a:?}\n");
        }
    }
    // The services under protection, by name, protocol and port only: their ceilings are
    // learned, as on the defaults.
    for s in services {
        toml += &format!(
            "\n[[services]]\nname = {:?}\nprotocol = {:?}\nport = {}\n",
            s.name, s.protocol, s.port
        );
        if let Some(c) = s.syn_cookies {
            toml += &format!("syn_cookies = {c:?}\n");
        }
    }
    toml
}

/// The daemon in a namespace; detached, stopped and its files removed on drop.
pub struct Daemon {
    child: Child,
    guard: PathBuf,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub tmp: PathBuf,
}

impl Daemon {
    /// Starts `guard run` in `ns`'s network namespace on `ifaces` and waits until its control
    /// socket answers. `tag` makes its paths unique.
    ///
    /// # Errors
    /// When the daemon cannot start, exits, or does not answer within 20 s (its log is quoted).
    pub fn start(
        guard: &Path,
        ns: &str,
        ifaces: &[&str],
        tag: &str,
        health: &HealthListen,
        services: &[Service],
    ) -> Result<Self> {
        let tmp = std::env::temp_dir().join(format!("guard-bench-{tag}"));
        fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        let private = Private {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/guard-bench-{tag}")),
            socket: tmp.join("guard.sock"),
            state_dir: tmp.join("state"),
        };
        let config = tmp.join("guard.toml");
        fs::write(&config, config_toml(&private, health, services))
            .with_context(|| format!("write {}", config.display()))?;
        let log = File::create(tmp.join("guard.log"))?;
        // nsenter switches the network namespace only: `ip netns exec` would also give the
        // daemon a /sys of its own, where its pins under /sys/fs/bpf would not be the host's.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(guard)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(ifaces.iter().flat_map(|i| ["--iface", i]))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {} run", guard.display()))?;
        let mut d = Self {
            child,
            guard: guard.to_owned(),
            socket: private.socket,
            pin_dir: private.pin_dir,
            tmp,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !d.cli(&["status"])?.status.success() {
            if let Some(st) = d.child.try_wait()? {
                bail!("guard run exited ({st}): {}", d.log());
            }
            if Instant::now() > deadline {
                bail!("guard run was not ready after 20 s: {}", d.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.tmp.join("guard.log")).unwrap_or_default()
    }

    /// Runs `guard ARGS` against this daemon's socket.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Command::new(&self.guard)
            .args(args)
            .env("GUARD_SOCKET", &self.socket)
            .output()
            .context("run the guard CLI")
    }

    /// Like `cli`, failing with the CLI's output if it fails.
    pub fn cli_ok(&self, args: &[&str]) -> Result<()> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!(
                "`guard {}` failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Packets the data plane dropped so far (denied, banned and over a limit), from
    /// `guard stats --json`.
    ///
    /// # Errors
    /// When the CLI fails or prints something else than the stats report.
    pub fn dropped(&self) -> Result<u64> {
        let out = self.cli(&["stats", "--json"])?;
        if !out.status.success() {
            bail!("guard stats: {}", String::from_utf8_lossy(&out.stderr));
        }
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("guard stats --json printed no JSON")?;
        let reasons = json
            .pointer("/total/reasons")
            .and_then(serde_json::Value::as_array)
            .context("no total.reasons in guard stats --json")?;
        Ok(reasons
            .iter()
            .filter(|r| {
                let name = r["reason"].as_str().unwrap_or("");
                reason::NAMES
                    .iter()
                    .position(|n| *n == name)
                    .is_some_and(reason::drops)
            })
            .filter_map(|r| r["packets"].as_u64())
            .sum())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // `guard detach` asks the daemon to detach, remove its pins and stop; with no daemon
        // answering it detaches from the pins itself.
        let pin_dir = self.pin_dir.display().to_string();
        if let Err(e) = self.cli_ok(&["detach", "--pin-dir", &pin_dir]) {
            eprintln!("guard-bench: {e:#}");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill with our own child's pid, which has not been reaped yet.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_millis(500));
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if self.pin_dir.exists() {
            // The daemon died before detaching: detach from the pins, without it.
            if let Err(e) = self.cli_ok(&["detach", "--pin-dir", &pin_dir]) {
                eprintln!("guard-bench: {e:#}");
            }
        }
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_sets_only_private_paths_and_the_services() {
        let p = Private {
            pin_dir: "/sys/fs/bpf/guard-bench-1".into(),
            socket: "/tmp/guard-bench-1/guard.sock".into(),
            state_dir: "/tmp/guard-bench-1/state".into(),
        };
        let services = [Service {
            name: "udp-hash",
            protocol: "udp",
            port: 7001,
            syn_cookies: None,
        }];
        let toml = config_toml(&p, &HealthListen::default(), &services);
        assert!(toml.contains("pin_dir = \"/sys/fs/bpf/guard-bench-1\""));
        assert!(toml.contains("socket = \"/tmp/guard-bench-1/guard.sock\""));
        assert!(!toml.contains("[limits]"), "the limits stay the defaults");
        assert!(!toml.contains("[health]"));
        assert!(
            toml.contains("[[services]]\nname = \"udp-hash\"\nprotocol = \"udp\"\nport = 7001\n")
        );
        // What guard itself reads from it.
        let s = guard::config::Settings::parse(
            &toml,
            guard::config::ConfigSource::File("/tmp/x.toml".into()),
        )
        .expect("the daemon accepts the config");
        assert_eq!(s.services.len(), 1);
        assert_eq!(s.services[0].port, 7001);
        assert_eq!(s.limits, guard::config::Settings::builtin().limits);
    }
}
