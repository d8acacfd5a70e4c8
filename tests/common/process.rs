//! Processes: the `user-monitor` binary and the repository it is built from, `evaluate` runs,
//! waiting for, stopping and killing processes, and the times in their logs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A command running the `user-monitor` binary under test.
pub fn user_monitor_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_user-monitor"))
}

/// The repository's root (the crate's manifest directory).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A file of the repository, by its path from the root.
pub fn repo_path(name: &str) -> PathBuf {
    repo().join(name)
}

/// `user-monitor evaluate` with `args`, fed `stdin` (or nothing): its output lines as JSON, its
/// stderr and its exit code.
pub fn evaluate(args: &[&str], stdin: Option<&[u8]>) -> (Vec<serde_json::Value>, String, i32) {
    let mut child = user_monitor_command()
        .arg("evaluate")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs user-monitor");
    {
        use std::io::Write;
        let mut pipe = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            pipe.write_all(bytes).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    (
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// Waits until `child` exits or `timeout` passes; kills it then.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// SIGTERM (graceful shutdown).
pub fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
}

/// SIGSTOP, then SIGCONT after `pause`: the process stands still as in a long GC pause or a
/// stalled VM (its Kafka clients too), then goes on as if nothing happened.
pub fn freeze_for(child: &Child, pause: Duration) {
    let signal = |name: &str| {
        let _ = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(child.id().to_string())
            .status();
    };
    signal("STOP");
    std::thread::sleep(pause);
    signal("CONT");
}

/// SIGKILL: no chance to clean up.
pub fn kill9(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

/// The time of a processor log line (`2025-01-31T12:00:00.123456Z  INFO ...`).
pub fn log_line_time(line: &str) -> Option<std::time::SystemTime> {
    let stamp = line.split_whitespace().next()?;
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut ymd = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, d) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut parts = hms.split(':').map(|p| p.parse::<i64>());
    let (hh, mm, ss) = (
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    );
    let nanos = format!("{fraction:0<9}").get(..9)?.parse::<u64>().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_nanos(nanos))
}
