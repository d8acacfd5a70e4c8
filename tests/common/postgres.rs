//! The PostgreSQL server of the suite (`scripts/postgres-local.sh`, started by `scripts/test.sh`),
//! named by `USER_MONITOR_TEST_POSTGRES_URL`. Each test gets a database of its own.

use sqlx::Connection;

/// The server's URL, or `None` after printing why the test is skipped.
pub fn server(test: &str) -> Option<String> {
    match std::env::var("USER_MONITOR_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "SKIPPED {test}: USER_MONITOR_TEST_POSTGRES_URL is not set (PostgreSQL could not be \
                 installed or started; `make test` starts one with scripts/postgres-local.sh)"
            );
            None
        }
    }
}

/// A fresh, empty database on the suite's server: its URL, or `None` (skipped, said why).
pub async fn fresh_database(test: &str) -> Option<String> {
    let server = server(test)?;
    let name = format!(
        "um_{}",
        uuid::Uuid::new_v4().simple().to_string().get(..12).unwrap()
    );
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {server}: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("creates a database");
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    Some(format!("{base}/{name}"))
}
