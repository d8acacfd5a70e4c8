//! Inputs: event JSON lines, random event streams, the scenarios, keys by user.

use std::path::{Path, PathBuf};

/// The scenarios: event streams with their prescribed responses (`USER_MONITOR_SCENARIOS`, or
/// the repository's `tests/fixtures/scenarios`).
pub fn scenarios_dir() -> PathBuf {
    let dir = std::env::var_os("USER_MONITOR_SCENARIOS")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::process::repo().join("tests/fixtures/scenarios"));
    assert!(
        dir.join("seeds.jsonl").exists(),
        "scenarios not found in {} (set USER_MONITOR_SCENARIOS)",
        dir.display()
    );
    dir
}

/// The event id of the input at `coordinate` (`<partition>-<offset>`).
pub fn event_id(coordinate: (i32, i64)) -> String {
    format!("{}-{}", coordinate.0, coordinate.1)
}

/// Keys each JSONL line by its `user_id` when it has one.
pub fn keyed(lines: &[Vec<u8>]) -> Vec<(Option<String>, Vec<u8>)> {
    lines
        .iter()
        .map(|line| {
            let key = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("user_id").and_then(|u| u.as_u64()))
                .map(|u| u.to_string());
            (key, line.clone())
        })
        .collect()
}

pub fn read_lines(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read(path)
        .unwrap()
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// One JSON event line.
pub fn event(kind: &str, amount: &str, user: u64, time: u64) -> Vec<u8> {
    format!(r#"{{"type": "{kind}", "amount": "{amount}", "user_id": {user}, "time": {time}}}"#)
        .into_bytes()
}

/// Random valid events over `users` users (ids from 1000), times increasing per user with ~5%
/// out of order, amounts that raise every rule now and then.
pub fn random_events(n: usize, users: u64, seed: u64) -> Vec<Vec<u8>> {
    use rand::Rng;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut clocks = vec![0u64; users as usize];
    (0..n)
        .map(|_| {
            let user = rng.gen_range(0..users);
            let clock = &mut clocks[user as usize];
            let time = if rng.gen_bool(0.05) && *clock > 5 {
                *clock - 5
            } else {
                *clock += rng.gen_range(0..20);
                *clock
            };
            let kind = if rng.gen_bool(0.5) {
                "deposit"
            } else {
                "withdraw"
            };
            let amount = format!("{}.{:02}", rng.gen_range(1..250), rng.gen_range(0..100));
            event(kind, &amount, 1000 + user, time)
        })
        .collect()
}
