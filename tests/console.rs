//! The web console in a real browser (headless Chromium over the DevTools protocol), as a risk
//! analyst, a rule author and an operator use it, against the all-in-one (`user-monitor run`, its
//! embedded broker) and against `shim` + `process` on the real Kafka broker of the test script.
//! Every test saves a screenshot of each page it visits under `target/console-screenshots/`.
//! Without Chromium the tests say SKIPPED (the test script installs it under `CI=true`).

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::browser::Browser;
use common::http::{client, free_port, get_json, post_json, wait_ready};
use common::kafka::{shim_addr, World};
use common::process::user_monitor_command;
use serde_json::{json, Value};
use user_monitor::http::auth::sha256_hex;

/// One `user-monitor` process serving the console (and what it needs around it).
struct Service {
    children: Vec<Child>,
    base: String,
    _dirs: Vec<tempfile::TempDir>,
    /// The topics and processes of a Kafka-backed service.
    _world: Option<World>,
}

impl Service {
    /// `user-monitor run` with no Kafka: the embedded broker, the processor and the shim.
    async fn all_in_one(tokens: Option<&str>) -> Service {
        let port = free_port();
        let data = tempfile::tempdir().unwrap();
        let mut command = user_monitor_command();
        command
            .arg("run")
            .current_dir(std::env::temp_dir())
            .env("USER_MONITOR__STORE__DATA_DIR", data.path())
            .env("USER_MONITOR__HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env_remove("USER_MONITOR__KAFKA__BOOTSTRAP_SERVERS")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut dirs = vec![data];
        if let Some(tokens) = tokens {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("tokens.toml");
            std::fs::write(&file, tokens).unwrap();
            command
                .env("USER_MONITOR__HTTP__AUTH__MODE", "tokens")
                .env("USER_MONITOR__HTTP__AUTH__TOKENS_FILE", &file);
            dirs.push(dir);
        }
        let child = command.spawn().expect("runs user-monitor");
        let service = Service {
            children: vec![child],
            base: format!("http://127.0.0.1:{port}"),
            _dirs: dirs,
            _world: None,
        };
        wait_ready(&client(), &service.url("/readyz"), Duration::from_secs(90)).await;
        service
    }

    /// `user-monitor process` and `user-monitor shim` side by side on the real broker of the
    /// test script (`KAFKA_BOOTSTRAP_SERVERS`), each a process of its own.
    async fn on_kafka(name: &str, tokens: Option<&str>) -> Service {
        let mut world = World::new(&format!("console-{name}"), 3);
        world.set("USER_MONITOR__TOPICS__AUDIT", &world.topic("audit"));
        world.set("USER_MONITOR__HTTP__LISTEN", "127.0.0.1:0");
        // The shim is ready before the processor has joined its group: the first answers may
        // take that long (a 202 would not be the behaviour under test).
        world.set("USER_MONITOR__HTTP__RESPONSE_TIMEOUT", "15s");
        let mut dirs = Vec::new();
        if let Some(tokens) = tokens {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("tokens.toml");
            std::fs::write(&file, tokens).unwrap();
            world.set("USER_MONITOR__HTTP__AUTH__MODE", "tokens");
            world.set(
                "USER_MONITOR__HTTP__AUTH__TOKENS_FILE",
                file.to_str().unwrap(),
            );
            dirs.push(dir);
        }
        world.create_topics();
        let processor = world.spawn_processor(0);
        let shim = world.spawn(&["shim"], 1);
        let addr = shim_addr(&world, 1, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("the shim did not listen:\n{}", world.log(1)));
        let service = Service {
            children: vec![shim, processor],
            base: format!("http://{addr}"),
            _dirs: dirs,
            _world: Some(world),
        };
        wait_ready(&client(), &service.url("/readyz"), Duration::from_secs(90)).await;
        service
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A tokens file: `(name, secret, scopes)` each.
fn tokens(entries: &[(&str, &str, &[&str])]) -> String {
    entries
        .iter()
        .map(|(name, secret, scopes)| {
            format!(
                "[[tokens]]\nname = {name:?}\nsha256 = {:?}\nscopes = {}\n\n",
                sha256_hex(secret),
                json!(scopes)
            )
        })
        .collect()
}

fn deposit(user: u64, amount: &str, time: u64) -> String {
    json!({"type": "deposit", "amount": amount, "user_id": user, "time": time}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_console_asks_for_one_and_a_read_only_token_is_offered_no_changes() {
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let service = Service::all_in_one(Some(&tokens(&[
        ("ana", "ana-secret", &["read"]),
        (
            "lead",
            "lead-secret",
            &[
                "read",
                "alerts:write",
                "rules:write",
                "profiles:write",
                "events:write",
            ],
        ),
    ])))
    .await;
    // Something to look at: an alert on user 5.
    let http = client();
    for (i, amount) in ["90", "100", "110"].iter().enumerate() {
        let request = http
            .post(service.url("/event"))
            .bearer_auth("lead-secret")
            .header("Content-Type", "application/json")
            .body(deposit(5, amount, i as u64 + 1));
        assert!(request.send().await.unwrap().status().is_success());
    }

    browser.open(&service.url("/#/alerts")).await;
    browser
        .wait_for(
            "document.getElementById('token-dialog').open",
            Duration::from_secs(10),
        )
        .await;
    browser.screenshot("sign-in").await;
    browser.fill("#token-input", "wrong").await;
    browser.click("#token-form button[type=submit]").await;
    browser
        .wait_for(
            "document.getElementById('token-dialog').open && document.getElementById('token-error').innerText.includes('not accepted')",
            Duration::from_secs(10),
        )
        .await;
    browser.fill("#token-input", "ana-secret").await;
    browser.click("#token-form button[type=submit]").await;
    browser
        .wait_for(
            "document.querySelector('tr[data-alert=\"alert-5-2\"], tr[data-alert]')",
            Duration::from_secs(10),
        )
        .await;
    assert!(browser.text("#who").await.starts_with("ana"));
    // Read-only: no triage controls, no publishing, no risk change.
    assert_eq!(
        browser
            .eval("document.querySelectorAll('.triage button').length")
            .await,
        json!(0),
        "a read-only token is offered no triage"
    );
    browser.screenshot("alerts-read-only").await;
    browser.open(&service.url("/#/rules")).await;
    browser
        .wait_for(
            "document.getElementById('rule-editor')",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        browser
            .eval("!!document.getElementById('publish-shadow')")
            .await,
        json!(false),
        "a read-only token is offered no publishing"
    );
    browser.open(&service.url("/#/user/5")).await;
    browser
        .wait_for(
            "document.getElementById('user-risk')",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        browser
            .eval("!!document.getElementById('risk-select')")
            .await,
        json!(false),
        "a read-only token is offered no risk change"
    );
    // And the API refuses the read-only token anyway.
    let refused = http
        .put(service.url("/api/v1/rules/shadow"))
        .bearer_auth("ana-secret")
        .header("Content-Type", "application/json")
        .body(r#"{"version":"x","time_unit":"seconds","rule":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    // The token is kept for the session: another page asks for nothing.
    browser.open(&service.url("/#/audit")).await;
    browser
        .wait_for(
            "document.getElementById('audit-rows')",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        browser
            .eval("document.getElementById('token-dialog').open")
            .await,
        json!(false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_alert_appears_live_with_its_evidence_in_words_all_in_one() {
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let service = Service::all_in_one(None).await;
    alert_appears_live_with_its_evidence(&mut browser, &service, "all-in-one").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_alert_appears_live_with_its_evidence_in_words_on_kafka() {
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let service = Service::on_kafka("live", None).await;
    alert_appears_live_with_its_evidence(&mut browser, &service, "kafka").await;
}

/// Posts three deposits while the live page is open: the alert of the third is on the page
/// within 2 s of its answer, its evidence in words.
async fn alert_appears_live_with_its_evidence(browser: &mut Browser, service: &Service, run: &str) {
    browser.open(&service.url("/#/alerts")).await;
    browser
        .wait_for(
            "document.getElementById('live-state').classList.contains('on')",
            Duration::from_secs(10),
        )
        .await;
    let http = client();
    let mut last = Value::Null;
    for (i, amount) in ["90", "100", "110"].iter().enumerate() {
        let (status, body) = post_json(
            &http,
            &service.url("/api/v1/events"),
            &deposit(42, amount, i as u64 + 1),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        last = body;
    }
    assert_eq!(last["alert_codes"], json!([123, 300]), "{last}");
    // The alert of the third deposit, in words, within 2 s of its answer.
    let alert_id = last["alert_id"].as_str().unwrap().to_owned();
    let waited = browser
        .wait_for(
            &format!("document.querySelector('tr[data-alert=\"{alert_id}\"]')"),
            Duration::from_secs(2),
        )
        .await;
    let row = browser
        .text(&format!("tr[data-alert=\"{alert_id}\"]"))
        .await;
    assert!(
        row.contains("deposits of 300 within 30s, over 200 at medium risk"),
        "{row}"
    );
    assert!(row.contains("3 increasing deposits in a row"), "{row}");
    eprintln!("alert shown {waited:?} after its answer");
    browser.screenshot(&format!("alerts-live-{run}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_alert_leaves_the_open_filter_and_the_audit_names_who_all_in_one() {
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let service = Service::all_in_one(Some(&lead_token())).await;
    resolve_leaves_the_open_filter_and_the_audit_names_who(&mut browser, &service, "all-in-one")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_alert_leaves_the_open_filter_and_the_audit_names_who_on_kafka() {
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let service = Service::on_kafka("triage", Some(&lead_token())).await;
    resolve_leaves_the_open_filter_and_the_audit_names_who(&mut browser, &service, "kafka").await;
}

fn lead_token() -> String {
    tokens(&[(
        "lead",
        "lead-secret",
        &[
            "read",
            "alerts:write",
            "rules:write",
            "profiles:write",
            "events:write",
        ],
    )])
}

/// Posts events for `user` with the lead's token until its third deposit raises an alert;
/// returns that alert's id.
async fn raise_alert(service: &Service, user: u64) -> String {
    let http = client();
    let mut last = Value::Null;
    for (i, amount) in ["90", "100", "110"].iter().enumerate() {
        let response = http
            .post(service.url("/api/v1/events"))
            .bearer_auth("lead-secret")
            .header("Content-Type", "application/json")
            .body(deposit(user, amount, i as u64 + 1))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        last = response.json().await.unwrap();
    }
    last["alert_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no alert: {last}"))
        .to_owned()
}

async fn sign_in(browser: &mut Browser, secret: &str) {
    browser
        .wait_for(
            "document.getElementById('token-dialog').open",
            Duration::from_secs(10),
        )
        .await;
    browser.fill("#token-input", secret).await;
    browser.click("#token-form button[type=submit]").await;
}

/// Resolves an alert from the open alerts page: it leaves the page in place, the API no longer
/// lists it as open, and the audit page names the token that resolved it.
async fn resolve_leaves_the_open_filter_and_the_audit_names_who(
    browser: &mut Browser,
    service: &Service,
    run: &str,
) {
    let alert_id = raise_alert(service, 8).await;
    let row = format!("tr[data-alert=\"{alert_id}\"]");
    browser.open(&service.url("/#/alerts?status=open")).await;
    sign_in(browser, "lead-secret").await;
    browser
        .wait_for(
            &format!("document.querySelector('{row}')"),
            Duration::from_secs(10),
        )
        .await;
    browser
        .click(&format!("{row} button[data-action=resolve]"))
        .await;
    browser
        .fill(&format!("{row} form[data-form=resolve] select"), "fraud")
        .await;
    browser
        .fill(
            &format!("{row} form[data-form=resolve] input[name=note]"),
            "card stolen",
        )
        .await;
    browser.screenshot(&format!("alerts-resolving-{run}")).await;
    browser
        .click(&format!(
            "{row} form[data-form=resolve] button[type=submit]"
        ))
        .await;
    browser
        .wait_for(
            &format!("!document.querySelector('{row}')"),
            Duration::from_secs(10),
        )
        .await;
    let http = client();
    let open = http
        .get(service.url("/api/v1/alerts?status=open"))
        .bearer_auth("lead-secret")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert!(
        !open["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["alert_id"] == alert_id.as_str()),
        "{open}"
    );
    let alert = http
        .get(service.url(&format!("/api/v1/alerts/{alert_id}")))
        .bearer_auth("lead-secret")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(alert["triage"]["status"], "resolved", "{alert}");
    assert_eq!(alert["triage"]["resolution"], "fraud", "{alert}");
    assert_eq!(alert["triage"]["triaged_by"], "lead", "{alert}");
    browser
        .open(&service.url("/#/audit?action=alert.triage"))
        .await;
    browser
        .wait_for(
            "[...document.querySelectorAll('#audit-rows tr')].some(r => r.innerText.includes('lead') && r.innerText.includes('resolved (fraud)'))",
            Duration::from_secs(10),
        )
        .await;
    browser.screenshot(&format!("audit-{run}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_page_shows_the_engines_state_and_timeline_as_the_api_does() {
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let service = Service::all_in_one(None).await;
    let http = client();
    for (i, (kind, amount)) in [
        ("deposit", "90"),
        ("deposit", "100"),
        ("withdraw", "30"),
        ("deposit", "120"),
    ]
    .iter()
    .enumerate()
    {
        let event = json!({"type": kind, "amount": amount, "user_id": 9, "time": i + 1});
        let (status, body) = post_json(&http, &service.url("/event"), &event.to_string()).await;
        assert_eq!(status, 200, "{body}");
    }
    // The view once the read model holds all four.
    let view = loop {
        let (status, view) = get_json(&http, &service.url("/api/v1/users/9")).await;
        if status == 200 && view["events"] == 4 {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    browser.open(&service.url("/#/user/9")).await;
    browser
        .wait_for(
            "document.querySelector('#user-state table[data-set=active] tbody tr')",
            Duration::from_secs(10),
        )
        .await;
    for rule in view["active"]["rules"].as_array().unwrap() {
        let code = &rule["code"];
        let cell =
            |what: &str| format!("table[data-set=active] tr[data-code=\"{code}\"] td[data-{what}]");
        let shown_observed = browser.text(&cell("observed")).await;
        let want = match &rule["observed"] {
            Value::Null => "–".to_owned(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(shown_observed, want, "code {code}: {rule}");
        let threshold = match &rule["threshold"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(browser.text(&cell("threshold")).await, threshold, "{rule}");
    }
    assert_eq!(
        browser.text("#user-counts").await,
        format!("{} events, {} alerts", view["events"], view["alerts"])
    );
    assert_eq!(browser.text("#user-risk-level").await, "medium");
    // The timeline: the user's events, newest first, as the API lists them.
    let (_, events) = get_json(&http, &service.url("/api/v1/users/9/events?limit=200")).await;
    let ids: Vec<String> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    let shown = browser
        .eval("[...document.querySelectorAll('#user-body .scroll tbody tr td:first-child')].map(td => td.innerText)")
        .await;
    assert_eq!(shown, json!(ids));
    assert_eq!(
        browser
            .eval("document.querySelectorAll('svg.chart circle.dot').length")
            .await,
        json!(4)
    );
    browser.screenshot("user").await;
}

/// A candidate set for the rules page: the default set with a lower large-withdrawal amount.
fn candidate(version: &str) -> Value {
    let text = std::fs::read_to_string(common::process::repo_path("rules/default.toml")).unwrap();
    let mut set: Value = toml::from_str::<Value>(&text).unwrap();
    set["version"] = json!(version);
    for rule in set["rule"].as_array_mut().unwrap() {
        if rule["code"] == 1100 {
            rule["amount"] = json!("50");
        }
    }
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_author_validates_backtests_shadows_and_promotes_a_candidate_in_the_console() {
    let Some(mut browser) = Browser::launch().await else {
        return;
    };
    let service = Service::all_in_one(None).await;
    let http = client();
    // Stored history: withdrawals of 60 and 120 for several users.
    let mut lines = Vec::new();
    for user in 30..36u64 {
        for (time, amount) in [(1, "60"), (2, "120"), (3, "70")] {
            let event =
                json!({"type": "withdraw", "amount": amount, "user_id": user, "time": time});
            let (status, body) = post_json(&http, &service.url("/event"), &event.to_string()).await;
            assert_eq!(status, 200, "{body}");
            lines.push(event.to_string());
        }
    }
    browser.open(&service.url("/#/rules")).await;
    browser
        .wait_for(
            "document.getElementById('rule-editor')",
            Duration::from_secs(10),
        )
        .await;
    // An invalid candidate: the problem is shown, naming the rule.
    let mut invalid = candidate("broken");
    invalid["rule"][0]["kind"] = json!("amounts");
    browser
        .fill(
            "#rule-editor",
            &serde_json::to_string_pretty(&invalid).unwrap(),
        )
        .await;
    browser
        .wait_for(
            "document.querySelector('#rule-problems .problems li')",
            Duration::from_secs(5),
        )
        .await;
    let problem = browser.text("#rule-problems").await;
    assert!(problem.contains("amounts"), "{problem}");
    browser.screenshot("rules-invalid").await;
    // A valid one: its backtest over the stored events gives the CLI's numbers.
    let valid = candidate("cand-1");
    browser
        .fill(
            "#rule-editor",
            &serde_json::to_string_pretty(&valid).unwrap(),
        )
        .await;
    browser
        .wait_for(
            "document.getElementById('rule-problems').innerText.includes('valid: 5 rules')",
            Duration::from_secs(5),
        )
        .await;
    browser.click("#backtest").await;
    browser
        .wait_for(
            "document.querySelector('#backtest-report')",
            Duration::from_secs(20),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    let set = dir.path().join("cand-1.json");
    std::fs::write(&set, valid.to_string()).unwrap();
    let cli = user_monitor_command()
        .args(["backtest", "--baseline"])
        .arg(common::process::repo_path("rules/default.toml"))
        .arg("--candidate")
        .arg(&set)
        .arg(&events)
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let cli: Value = serde_json::from_slice(&cli.stdout).unwrap();
    let codes = cli["codes"].as_object().unwrap();
    assert!(codes["1100"]["added"].as_u64().unwrap() > 0, "{cli}");
    for (code, counts) in codes {
        for what in ["baseline", "candidate", "added", "removed"] {
            let shown = browser
                .text(&format!(
                    "#backtest-report tr[data-code=\"{code}\"] td[data-{what}]"
                ))
                .await;
            assert_eq!(shown, counts[what].to_string(), "code {code} {what}: {cli}");
        }
    }
    browser.screenshot("rules-backtest").await;
    // Published as shadow: new events disagree, and the page shows it.
    browser.click("#publish-shadow").await;
    browser
        .wait_for(
            "document.getElementById('promote')",
            Duration::from_secs(10),
        )
        .await;
    for user in 40..43u64 {
        let event = json!({"type": "withdraw", "amount": "60", "user_id": user, "time": 1});
        let (status, body) = post_json(&http, &service.url("/event"), &event.to_string()).await;
        assert_eq!(status, 200, "{body}");
    }
    browser
        .wait_for(
            "/^[1-9]/.test(document.getElementById('disagreements-total').innerText)",
            Duration::from_secs(15),
        )
        .await;
    browser.screenshot("rules-shadow").await;
    // Promoted: new events carry the new version.
    browser.click("#promote").await;
    browser
        .wait_for(
            "[...document.querySelectorAll('#rules-history tr[data-version=\"cand-1\"] .chip')].some(c => c.innerText === 'active')",
            Duration::from_secs(10),
        )
        .await;
    let event = json!({"type": "withdraw", "amount": "60", "user_id": 50, "time": 1});
    let response = http
        .post(service.url("/api/v1/events"))
        .header("Content-Type", "application/json")
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["alert_codes"], json!([1100]), "{body}");
    let (_, judged) = get_json(
        &http,
        &service.url(&format!(
            "/api/v1/events/{}",
            body["event_id"].as_str().unwrap()
        )),
    )
    .await;
    assert_eq!(judged["rules_version"], "cand-1", "{judged}");
    // A diff between the two versions.
    browser.click("#diff").await;
    browser
        .wait_for(
            "document.querySelector('#diff-out .add')",
            Duration::from_secs(5),
        )
        .await;
    browser.screenshot("rules-promoted").await;
}
