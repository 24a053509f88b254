//! The container check's `[[watchdog]]` step, in unit mode against the container's systemd
//! over D-Bus: a unit systemd does not have, or a `max_memory` whose cgroup cannot be read,
//! stops the start naming the field; a service failing its check is drained, restarted by
//! systemd (`RestartUnit`), readmitted once its check passes, and, failing again, drained and
//! held there by `min_interval`.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::Container;

/// The watched service: busybox's httpd on the container's loopback, serving a file its
/// start writes (in its RuntimeDirectory, which systemd removes at stop): the check fails once
/// the file is deleted, and passes again after a restart.
const APP_UNIT: &str = "guard-app.service";
const APP_URL: &str = "http://127.0.0.1:8080/healthz";
const APP_HEALTHZ: &str = "/run/guard-app/healthz";
const APP_SERVICE: &str = "[Unit]
Description=guard dist --check: the watchdog's service

[Service]
RuntimeDirectory=guard-app
ExecStartPre=/bin/sh -c 'echo ok > /run/guard-app/healthz'
ExecStart=/bin/busybox httpd -f -p 127.0.0.1:8080 -h /run/guard-app
";
const MAX_MEMORY: &str = "4MiB";
/// What the watchdog is given: few bad samples, a short drain, and a `min_interval` that
/// allows the one restart of the check only.
const FAIL_AFTER: u32 = 2;
const DRAIN_SECS: u64 = 2;
/// The whole sequence (2 bad samples, the drain, the restart, two fresh rounds of checks, 2 bad
/// samples again) takes about 10 s.
const SEQUENCE_TIMEOUT: Duration = Duration::from_secs(60);
const CONFIG: &str = "/etc/guard/guard.toml";

/// The config the package installed, with a named check on the service and a watchdog on
/// `unit` (with `max_memory`, if given) in place of `checks = []`.
fn with_watchdog(installed: &str, unit: &str, max_memory: Option<&str>) -> Result<String> {
    ensure!(
        installed.lines().any(|l| l == "checks = []"),
        "the installed config has no `checks = []` line to put the check in place of"
    );
    let body: Vec<&str> = installed.lines().filter(|l| *l != "checks = []").collect();
    let memory = max_memory
        .map(|m| format!("max_memory = \"{m}\"\n"))
        .unwrap_or_default();
    Ok(format!(
        "{}\n\n[[health.checks]]\nname = \"app-http\"\ntype = \"http\"\ntarget = \"{APP_URL}\"\ntimeout_ms = 500\n\n\
         [[watchdog]]\nname = \"app\"\ncheck = \"app-http\"\nunit = \"{unit}\"\n{memory}\
         fail_after = {FAIL_AFTER}\ndrain_secs = {DRAIN_SECS}\nmin_interval = \"1h\"\n",
        body.join("\n")
    ))
}

/// A property of `unit` (`systemctl show -p NAME --value`).
fn show(c: &Container, unit: &str, name: &str) -> Result<String> {
    Ok(c.exec(&["systemctl", "show", "-p", name, "--value", unit])?
        .trim()
        .to_string())
}

/// The one watchdog `guard watchdog status --json` reports; `None` before the reload (a
/// signal: `systemctl reload` returns before the daemon has read the config) has taken.
fn status(c: &Container) -> Result<Option<Value>> {
    let out = c.exec(&["guard", "watchdog", "status", "--json"])?;
    let all: Value = serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))?;
    Ok(all.get(0).cloned())
}

/// `guard health --json` (whose exit code says the state: drain is not 0).
fn health(c: &Container) -> Result<Value> {
    let out = c.exec(&["sh", "-c", "guard health --json || true"])?;
    serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))
}

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The history's entries, oldest first.
fn history(w: &Value) -> Vec<String> {
    w.get("history")
        .and_then(Value::as_array)
        .map(|h| {
            h.iter()
                .filter_map(|e| e.get(1).and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Starts the service the watchdog watches and waits until it answers.
pub(super) fn start_app(c: &Container) -> Result<String> {
    c.write(&format!("/etc/systemd/system/{APP_UNIT}"), APP_SERVICE)?;
    c.exec(&["systemctl", "daemon-reload"])?;
    c.exec(&["systemctl", "start", APP_UNIT])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c.exec(&["busybox", "wget", "-q", "-O", "-", APP_URL]) {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                return Err(e.context("the service never answered"));
            }
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
    let cgroup = show(c, APP_UNIT, "ControlGroup")?;
    Ok(format!("{APP_UNIT} answers {APP_URL} (cgroup {cgroup})"))
}

/// Whether the container gives the service a memory cgroup of its own (cgroup v2's
/// memory.current, or a v1 memory controller it may write): on a v1 or hybrid host
/// systemd-nspawn mounts the controllers read-only, and every unit is in the container's root.
fn app_has_memory_cgroup(c: &Container) -> Result<bool> {
    let cg = show(c, APP_UNIT, "ControlGroup")?;
    Ok([
        format!("/sys/fs/cgroup{cg}/memory.current"),
        format!("/sys/fs/cgroup/memory{cg}/memory.usage_in_bytes"),
    ]
    .iter()
    .any(|f| c.path(f).is_ok_and(|p| p.is_file())))
}

/// `systemctl start guard` under `config` fails, and the journal has a line with `needle`;
/// the installed config is put back and the service started again.
fn refused_at_start(c: &Container, config: &str, needle: &str) -> Result<String> {
    let installed = c.read(CONFIG)?;
    c.exec(&["systemctl", "stop", "guard"])?;
    c.write(CONFIG, config)?;
    let started = c.exec(&["systemctl", "start", "guard"]);
    // Restart=on-failure would try again every RestartSec: stop that before anything else.
    let _ = c.exec(&["systemctl", "stop", "guard"]);
    let _ = c.exec(&["systemctl", "reset-failed", "guard"]);
    c.write(CONFIG, &installed)?;
    c.exec(&["systemctl", "start", "guard"])?;
    ensure!(started.is_err(), "the daemon started under:\n{config}");
    // The needle names this step's own value: no earlier line can match.
    let journal = c.exec(&["journalctl", "-u", "guard", "--no-pager"])?;
    let line = journal
        .lines()
        .find(|l| l.contains(needle))
        .with_context(|| format!("no line has {needle}:\n{journal}"))?;
    Ok(line
        .split_once("guard: ")
        .map_or(line, |(_, l)| l)
        .to_string())
}

/// A `[[watchdog]]` whose unit systemd does not have stops the start, naming the field.
pub(super) fn unknown_unit_refused(c: &Container) -> Result<String> {
    let installed = c.read(CONFIG)?;
    refused_at_start(
        c,
        &with_watchdog(&installed, "guard-no-such.service", None)?,
        "watchdog[0].unit = \"guard-no-such.service\"",
    )
}

/// `max_memory` on a unit: where the container gives it a memory cgroup, the watchdog reads
/// it; where not (this check's usual host: cgroup v1 controllers, read-only in the container),
/// the start is refused naming the field rather than the limit never applying.
pub(super) fn max_memory_read_or_refused(c: &Container) -> Result<String> {
    let installed = c.read(CONFIG)?;
    let config = with_watchdog(&installed, APP_UNIT, Some(MAX_MEMORY))?;
    if !app_has_memory_cgroup(c)? {
        let line = refused_at_start(c, &config, "watchdog[0].max_memory = ")?;
        return Ok(format!("no memory cgroup for {APP_UNIT} here: {line}"));
    }
    c.write(CONFIG, &config)?;
    let read = (|| {
        c.exec(&["systemctl", "reload", "guard"])?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(w) = status(c)?
                && let Some(m) = w.get("memory").and_then(Value::as_u64)
            {
                return Ok(format!("{APP_UNIT}'s memory cgroup is read: {m} bytes"));
            }
            ensure!(Instant::now() < deadline, "the watchdog reads no memory");
            thread::sleep(Duration::from_millis(300));
        }
    })();
    c.write(CONFIG, &installed)?;
    c.exec(&["systemctl", "reload", "guard"])?;
    read
}

/// What the sequence showed, for the report.
pub(super) struct Seen {
    /// The drain's reason in `guard health`, while the watchdog drained for the restart.
    pub drained: String,
    /// The unit's InvocationID before and after.
    pub invocations: (String, String),
    /// `guard health`'s reason once held by min_interval.
    pub held: String,
}

/// The watchdog on `guard-app.service`, whose check is made to fail: drained with a
/// `watchdog:` reason, restarted by systemd over D-Bus (a new InvocationID and main pid),
/// readmitted once its check passes; made to fail again, drained and held there by
/// min_interval (no second restart), saying why. The installed config is put back after.
pub(super) fn unit_mode_sequence(c: &Container) -> Result<Seen> {
    let installed = c.read(CONFIG)?;
    let before = (
        show(c, APP_UNIT, "InvocationID")?,
        show(c, APP_UNIT, "ExecMainPID")?,
    );
    c.write(CONFIG, &with_watchdog(&installed, APP_UNIT, None)?)?;
    let seen = (|| {
        c.exec(&["systemctl", "reload", "guard"])?;
        follow(c, &before)
    })();
    c.write(CONFIG, &installed)?;
    c.exec(&["systemctl", "reload", "guard"])?;
    seen
}

fn follow(c: &Container, before: &(String, String)) -> Result<Seen> {
    let deadline = Instant::now() + SEQUENCE_TIMEOUT;
    let mut phases: Vec<String> = Vec::new();
    let mut drained = None;
    // How many times the check was made to fail: once for the restart, once for the hold.
    let mut broken = 0;
    let held = loop {
        ensure!(
            Instant::now() < deadline,
            "no held phase within {}s (phases {phases:?})",
            SEQUENCE_TIMEOUT.as_secs()
        );
        let Some(w) = status(c)? else {
            thread::sleep(Duration::from_millis(300));
            continue;
        };
        let phase = w.get("phase").cloned().unwrap_or(Value::Null);
        let name = text(&phase, "phase");
        if phases.last() != Some(&name) {
            phases.push(name.clone());
        }
        let history = history(&w);
        let readmitted = history.iter().any(|h| h == "recovered: readmit");
        if name == "watching" && (broken == 0 || (broken == 1 && readmitted)) {
            c.exec(&["rm", "-f", APP_HEALTHZ])?;
            broken += 1;
        }
        // Health is evaluated each second: it says drain from the next evaluation on, and
        // keeps saying it through the restart until the readmit.
        if ["draining", "restarting", "recovering"].contains(&name.as_str()) && drained.is_none() {
            let h = health(c)?;
            if text(&h, "status") == "drain" && text(&h, "reason").starts_with("watchdog: ") {
                drained = Some(text(&h, "reason"));
            }
        }
        if name == "held" {
            ensure!(
                readmitted,
                "held before it readmitted (phases {phases:?}): {w}"
            );
            break w;
        }
        thread::sleep(Duration::from_millis(300));
    };
    let drained = drained.with_context(|| {
        format!("guard health never said drain with a watchdog: reason (phases {phases:?})")
    })?;
    let after = (
        show(c, APP_UNIT, "InvocationID")?,
        show(c, APP_UNIT, "ExecMainPID")?,
    );
    ensure!(
        after.0 != before.0 && after.1 != before.1,
        "{APP_UNIT} was not restarted: InvocationID {} -> {}, ExecMainPID {} -> {}",
        before.0,
        after.0,
        before.1,
        after.1
    );
    let reason = text(&held["phase"], "reason");
    ensure!(
        reason.contains("min_interval") && !held["phase"]["retry_at"].is_null(),
        "held, but not by min_interval: {held}"
    );
    // Held: no second restart, and every health output keeps saying why.
    thread::sleep(Duration::from_secs(3));
    let h = health(c)?;
    let still = show(c, APP_UNIT, "InvocationID")?;
    ensure!(
        still == after.0,
        "restarted again while held: InvocationID {} -> {still}",
        after.0
    );
    let says = text(&h, "reason");
    ensure!(
        text(&h, "status") == "drain"
            && says.starts_with("watchdog: ")
            && says.contains("min_interval"),
        "held, but guard health says: {h}"
    );
    let journal = c.exec(&["journalctl", "-u", "guard", "--no-pager", "-n", "200"])?;
    ensure!(
        journal.contains(&format!("restarting the service by systemd ({APP_UNIT})")),
        "no D-Bus restart in the journal:\n{journal}"
    );
    if phases.first().map(String::as_str) != Some("watching") {
        bail!("the sequence did not start from watching: {phases:?}");
    }
    Ok(Seen {
        drained,
        invocations: (before.0.clone(), after.0),
        held: says,
    })
}

impl Container {
    /// A file of the running container (through its PID 1's root).
    fn path(&self, path: &str) -> Result<std::path::PathBuf> {
        let leader = self.leader.context("the container is not running")?;
        Ok(std::path::PathBuf::from(format!(
            "/proc/{leader}/root{path}"
        )))
    }
    fn read(&self, path: &str) -> Result<String> {
        let p = self.path(path)?;
        fs::read_to_string(&p).with_context(|| format!("read {path} in the container"))
    }
    fn write(&self, path: &str, contents: &str) -> Result<()> {
        let p = self.path(path)?;
        if let Some(dir) = p.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(&p, contents).with_context(|| format!("write {path} in the container"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_config_takes_the_place_of_the_empty_checks() {
        let installed = "[health]\nlisten = \"127.0.0.1:9301\"\nchecks = []\n\n[control]\n";
        let c = with_watchdog(installed, APP_UNIT, Some(MAX_MEMORY)).unwrap();
        assert!(!c.contains("checks = []"), "{c}");
        assert!(c.contains("[[health.checks]]\nname = \"app-http\""), "{c}");
        assert!(
            c.contains("unit = \"guard-app.service\"\nmax_memory = \"4MiB\"\nfail_after"),
            "{c}"
        );
        assert!(
            !with_watchdog(installed, APP_UNIT, None)
                .unwrap()
                .contains("max_memory")
        );
        assert!(with_watchdog("[health]\n", APP_UNIT, None).is_err());
    }
}
