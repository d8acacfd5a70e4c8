//! Alerts-topic records made up for the read model's tests, and stores to put them in.

use user_monitor::config::Settings;
use user_monitor::store::Store;

/// The alerts record answering the event at (`partition`, `offset`): an alert with `codes` when
/// there are any, with the event's `time`.
pub fn alert_record(
    partition: i32,
    offset: i64,
    user_id: u64,
    codes: &[u32],
    time: u64,
) -> Vec<u8> {
    let event =
        format!(r#"{{"type": "deposit", "amount": "1.00", "user_id": {user_id}, "time": {time}}}"#);
    let alert_id = if codes.is_empty() {
        "null".to_owned()
    } else {
        format!("\"alert-{partition}-{offset}\"")
    };
    format!(
        r#"{{"event_id": "{partition}-{offset}", "user_id": {user_id}, "alert": {}, "alert_codes": {codes:?}, "alert_id": {alert_id}, "risk": "medium", "event": {event}}}"#,
        !codes.is_empty()
    )
    .into_bytes()
}

/// A fresh SQLite store in a directory of its own (kept as long as the returned guard).
pub async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Settings::defaults().store;
    config.data_dir = dir.path().to_owned();
    (Store::open(&config).await.expect("opens SQLite"), dir)
}

/// A fresh PostgreSQL store, or `None` (skipped, said why).
pub async fn postgres(test: &str) -> Option<Store> {
    let url = super::postgres::fresh_database(test).await?;
    let mut config = Settings::defaults().store;
    config.url = url;
    Some(Store::open(&config).await.expect("opens PostgreSQL"))
}
