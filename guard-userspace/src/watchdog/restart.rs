//! Restarting a service: a systemd unit through D-Bus (`org.freedesktop.systemd1.Manager`
//! `RestartUnit`, then the job followed until the unit is active again), or any command, for
//! hosts without systemd. Both run under the watchdog's `restart_timeout`; a command that
//! overruns it is killed.
use std::{process::Stdio, time::Duration};

use zbus::{OwnedObjectPath, OwnedVariant as OwnedValue};

use super::Restart;

const SYSTEMD: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

/// How often a restart's progress is looked at (the unit's state).
const POLL: Duration = Duration::from_millis(200);

/// Restarts the service `how` names, within `timeout`.
///
/// # Errors
///
/// What went wrong, for the health reason and the log: the command failed or overran its
/// timeout (and was killed), or systemd refused, or the unit did not come back active.
pub async fn restart(how: &Restart, timeout: Duration) -> Result<(), String> {
    match how {
        Restart::Command(argv) => run_command(argv, timeout).await,
        Restart::Unit(unit) => tokio::time::timeout(timeout, restart_unit(unit))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the restart of {unit} did not finish within {}",
                    crate::duration::Human(timeout)
                ))
            }),
    }
}

/// Runs `argv` in a process group of its own, its output going to the daemon's (the
/// journal); if it overruns `timeout`, the whole group is killed (a hung script's children
/// with it).
async fn run_command(argv: &[String], timeout: Duration) -> Result<(), String> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| "an empty restart_command".to_string())?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run the restart command {program}: {e}"))?;
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => {
            status.map_err(|e| format!("waiting for the restart command {program}: {e}"))?
        }
        Err(_) => {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) on the process group this child leads (process_group(0)).
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            let _ = child.wait().await;
            return Err(format!(
                "the restart command {program} did not finish within {} (killed)",
                crate::duration::Human(timeout)
            ));
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(format!("the restart command {program} failed ({status})"))
    }
}

/// A connection to the system bus.
async fn system_bus() -> Result<zbus::Connection, String> {
    zbus::Connection::system()
        .await
        .map_err(|e| format!("cannot reach systemd on the system bus: {e}"))
}

async fn call<B, R>(
    bus: &zbus::Connection,
    path: &str,
    iface: &str,
    method: &str,
    body: &B,
) -> Result<R, String>
where
    B: serde::Serialize + zbus::DynamicType,
    R: for<'d> zbus::wire::DynamicDeserialize<'d>,
{
    let reply = bus
        .call_method(Some(SYSTEMD), path, Some(iface), method, body)
        .await
        .map_err(|e| format!("systemd {method}: {e}"))?;
    reply
        .body()
        .deserialize::<R>()
        .map_err(|e| format!("systemd {method}: unexpected answer: {e}"))
}

async fn property(
    bus: &zbus::Connection,
    path: &str,
    iface: &str,
    name: &str,
) -> Result<String, String> {
    let v: OwnedValue = call(bus, path, PROPERTIES, "Get", &(iface, name)).await?;
    String::try_from(v).map_err(|e| format!("systemd property {name}: {e}"))
}

/// The unit's object path, loading it if needed; `Err` if systemd does not know it.
async fn unit_path(bus: &zbus::Connection, unit: &str) -> Result<OwnedObjectPath, String> {
    let path: OwnedObjectPath = call(bus, MANAGER_PATH, MANAGER, "LoadUnit", &(unit,)).await?;
    let load = property(bus, path.as_str(), UNIT, "LoadState").await?;
    if load != "loaded" {
        return Err(format!("systemd has no unit {unit} (load state {load})"));
    }
    Ok(path)
}

/// Checks at start (and reload) that `unit` exists; returns its cgroup (systemd's
/// `ControlGroup`, such as `/system.slice/app.service`), if it has one (it is running).
///
/// # Errors
///
/// No system bus, or no such unit.
pub async fn preflight_unit(unit: &str) -> Result<Option<String>, String> {
    let bus = system_bus().await?;
    let path = unit_path(&bus, unit).await?;
    // ControlGroup is on the unit type's interface (Service, Scope, ...): ask for the service's.
    let cgroup = property(
        &bus,
        path.as_str(),
        "org.freedesktop.systemd1.Service",
        "ControlGroup",
    )
    .await
    .ok()
    .filter(|c| !c.is_empty());
    Ok(cgroup)
}

/// `RestartUnit(unit, "replace")`, then waits until the job is done and the unit active.
async fn restart_unit(unit: &str) -> Result<(), String> {
    let bus = system_bus().await?;
    let path = unit_path(&bus, unit).await?;
    let _job: OwnedObjectPath = call(
        &bus,
        MANAGER_PATH,
        MANAGER,
        "RestartUnit",
        &(unit, "replace"),
    )
    .await?;
    loop {
        tokio::time::sleep(POLL).await;
        let active = property(&bus, path.as_str(), UNIT, "ActiveState").await?;
        match active.as_str() {
            "active" => {
                let job: (u32, OwnedObjectPath) =
                    call(&bus, path.as_str(), PROPERTIES, "Get", &(UNIT, "Job"))
                        .await
                        .and_then(|v: OwnedValue| {
                            <(u32, OwnedObjectPath)>::try_from(v).map_err(|e| e.to_string())
                        })
                        .unwrap_or((0, OwnedObjectPath::default()));
                // No job pending on the unit any more: the restart is through.
                if job.0 == 0 {
                    return Ok(());
                }
            }
            "failed" => return Err(format!("the unit {unit} failed after the restart")),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_command_that_fails_or_hangs_is_an_error_and_a_hung_one_is_killed() {
        let ok = Restart::Command(vec!["/bin/true".into()]);
        assert_eq!(restart(&ok, Duration::from_secs(5)).await, Ok(()));
        let fails = Restart::Command(vec!["/bin/false".into()]);
        let e = restart(&fails, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.contains("failed (exit status: 1)"), "{e}");
        let dir = std::env::temp_dir().join(format!("guard-restart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("survived");
        let hangs = Restart::Command(vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("sleep 2 && touch {}", marker.display()),
        ]);
        let e = restart(&hangs, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(e.contains("did not finish within"), "{e}");
        assert!(e.contains("killed"), "{e}");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "the hung command was not killed");
        let missing = Restart::Command(vec!["/nonexistent/restart-app".into()]);
        let e = restart(&missing, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.contains("cannot run the restart command"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
