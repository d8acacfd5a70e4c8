//! Processes: waiting for, stopping and killing them, and reading the times in their logs.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

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
