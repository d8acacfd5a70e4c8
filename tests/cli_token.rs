//! `user-monitor token new`: a fresh secret, and the configuration entry holding only its hash.

mod common;

use common::process::user_monitor_command;
use user_monitor::http::auth::{sha256_hex, Scope, Tokens};

#[test]
fn token_new_prints_a_secret_and_an_entry_that_authorizes_exactly_it() {
    let run = || {
        let output = user_monitor_command()
            .args([
                "token",
                "new",
                "payments-api",
                "--scopes",
                "events:write,read",
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let text = run();
    #[derive(serde::Deserialize)]
    struct Printed {
        secret: String,
        http: Http,
    }
    #[derive(serde::Deserialize)]
    struct Http {
        auth: Auth,
    }
    #[derive(serde::Deserialize)]
    struct Auth {
        tokens: Vec<user_monitor::http::auth::TokenConfig>,
    }
    let printed: Printed = toml::from_str(&text).expect("the output is TOML");
    let entry = &printed.http.auth.tokens[0];
    assert_eq!(entry.name, "payments-api");
    assert_eq!(entry.scopes, vec![Scope::EventsWrite, Scope::Read]);
    assert_eq!(entry.sha256, sha256_hex(&printed.secret));
    assert!(!text.contains(&format!("sha256 = \"{}\"", printed.secret)));
    let tokens = Tokens::new(&printed.http.auth.tokens, None).unwrap();
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {}", printed.secret).parse().unwrap(),
    );
    assert_eq!(
        tokens.authorize(&headers, Scope::Read).unwrap().name,
        "payments-api"
    );
    assert!(tokens.authorize(&headers, Scope::ProfilesWrite).is_err());
    // Every call makes a new secret.
    let again: Printed = toml::from_str(&run()).unwrap();
    assert_ne!(again.secret, printed.secret);

    let bad = user_monitor_command()
        .args(["token", "new", "x", "--scopes", "admin"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown scope"));
}
