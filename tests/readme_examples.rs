//! Every `console` example of the README and of `docs/` is executed, and its shown output
//! checked, so that none can go stale.
//!
//! The convention (a fenced block whose info string is `console`):
//!
//! ```text
//! $ curl -s 127.0.0.1:5000/api/v1/users/3/risk
//! {"user_id": 3, "risk": "medium", "source": "default"}
//! ```
//!
//! - A line starting with `$ ` is a command; a trailing `\` continues it on the next line, and so
//!   do lines starting with `> ` right after it (the shell's secondary prompt: a quoted body over
//!   several lines, a loop). The lines after it, up to the next command, are its output.
//! - Each file's examples run in order, as one session, against a fresh all-in-one
//!   (`user-monitor run`, its embedded broker), with `127.0.0.1:5000` replaced by its address.
//! - When the shown output is JSON (one document, or one per line), the actual output must be the
//!   same JSON, where a string `"…"` stands for any value, `…` within a string for any text, and
//!   a key `"…"` in an object allows keys not shown. Otherwise the text must match line by line, `…` standing for any text.
//! - A command's exit status must be 0.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::{client, free_port, wait_ready};
use common::process::{repo, user_monitor_command};
use serde_json::Value;

/// One command and the output shown under it.
#[derive(Debug)]
struct Example {
    file: PathBuf,
    line: usize,
    command: String,
    shown: Vec<String>,
}

/// The `console` examples of one Markdown file, in order.
fn examples(file: &Path) -> Vec<Example> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out: Vec<Example> = Vec::new();
    let mut in_block = false;
    let mut continuing = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_end();
        if !in_block {
            in_block = trimmed.trim_start() == "```console";
            continue;
        }
        if trimmed.trim_start().starts_with("```") {
            in_block = false;
            continue;
        }
        let prompt2 = trimmed
            .strip_prefix("> ")
            .or((trimmed == ">").then_some(""));
        let open = out.last().is_some_and(|e| e.shown.is_empty());
        if continuing || (open && prompt2.is_some()) {
            let example = out.last_mut().unwrap();
            example.command.push('\n');
            example.command.push_str(if continuing {
                trimmed
            } else {
                prompt2.unwrap_or_default()
            });
            continuing = trimmed.ends_with('\\');
        } else if let Some(command) = trimmed.strip_prefix("$ ") {
            out.push(Example {
                file: file.to_owned(),
                line: i + 1,
                command: command.to_owned(),
                shown: Vec::new(),
            });
            continuing = trimmed.ends_with('\\');
        } else if let Some(example) = out.last_mut() {
            example.shown.push(trimmed.to_owned());
        } else {
            panic!(
                "{}:{}: output before any command in a console block",
                file.display(),
                i + 1
            );
        }
    }
    for example in &mut out {
        while example.shown.last().is_some_and(|l| l.is_empty()) {
            example.shown.pop();
        }
    }
    out
}

/// Whether `actual` is `shown`, `"…"` standing for any value and a `"…"` key for other keys.
fn json_matches(shown: &Value, actual: &Value) -> bool {
    match (shown, actual) {
        (Value::String(s), _) if s == "…" => true,
        (Value::String(s), Value::String(a)) if s.contains('…') => text_matches(s, a),
        (Value::Object(s), Value::Object(a)) => {
            let open = s.contains_key("…");
            s.iter()
                .filter(|(k, _)| k.as_str() != "…")
                .all(|(k, v)| a.get(k).is_some_and(|x| json_matches(v, x)))
                && (open || a.keys().all(|k| s.contains_key(k)))
        }
        (Value::Array(s), Value::Array(a)) => {
            s.len() == a.len() && s.iter().zip(a).all(|(x, y)| json_matches(x, y))
        }
        _ => shown == actual,
    }
}

/// Whether the text line `actual` is `shown`, `…` standing for any text.
fn text_matches(shown: &str, actual: &str) -> bool {
    let parts: Vec<&str> = shown.split('…').collect();
    if parts.len() == 1 {
        return shown == actual;
    }
    let mut rest = actual;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(at) = rest.find(part) else {
                return false;
            };
            rest = &rest[at + part.len()..];
        }
    }
    true
}

/// JSON documents, one per line or one in all, if the text is JSON.
fn json_documents(text: &str) -> Option<Vec<Value>> {
    if let Ok(one) = serde_json::from_str::<Value>(text) {
        return Some(vec![one]);
    }
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

fn check(example: &Example, actual: &str) -> Result<(), String> {
    let shown = example.shown.join("\n");
    if shown.trim().is_empty() {
        return Ok(());
    }
    let actual_trimmed = actual.trim_end();
    if let Some(want) = json_documents(&shown) {
        let got = json_documents(actual_trimmed)
            .ok_or_else(|| format!("shown JSON, got text:\n{actual_trimmed}"))?;
        if want.len() == got.len() && want.iter().zip(&got).all(|(w, g)| json_matches(w, g)) {
            return Ok(());
        }
        return Err(format!("shown:\n{shown}\ngot:\n{actual_trimmed}"));
    }
    let got: Vec<&str> = actual_trimmed.lines().collect();
    if got.len() == example.shown.len()
        && example
            .shown
            .iter()
            .zip(&got)
            .all(|(s, a)| text_matches(s, a))
    {
        return Ok(());
    }
    Err(format!("shown:\n{shown}\ngot:\n{actual_trimmed}"))
}

/// The documentation files with examples: the README and everything under `docs/`.
fn documents() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    if let Ok(dir) = std::fs::read_dir(repo().join("docs")) {
        let mut docs: Vec<PathBuf> = dir
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        docs.sort();
        files.extend(docs);
    }
    files
}

#[test]
fn the_example_convention_is_read_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.md");
    std::fs::write(
        &file,
        "text\n```console\n$ echo a \\\n  b\na b\n\n$ true\n```\n```sh\n$ not this\n```\n\
         ```console\n$ echo '{\n>   \"x\": 1}'\n{\"x\": 1}\n> not a continuation\n```\n",
    )
    .unwrap();
    let found = examples(&file);
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(found[0].command, "echo a \\\n  b");
    assert_eq!(found[0].shown, vec!["a b"]);
    assert!(found[1].shown.is_empty());
    assert_eq!(found[2].command, "echo '{\n  \"x\": 1}'");
    assert_eq!(found[2].shown, vec!["{\"x\": 1}", "> not a continuation"]);
    let shown: Value = serde_json::from_str(r#"{"a": "…", "b": [1], "…": "…"}"#).unwrap();
    assert!(json_matches(
        &shown,
        &serde_json::json!({"a": {"x": 1}, "b": [1], "c": 2})
    ));
    assert!(!json_matches(
        &shown,
        &serde_json::json!({"a": 1, "b": [2]})
    ));
    let partly: Value =
        serde_json::from_str(r#"{"error": "published at … by anonymous"}"#).unwrap();
    assert!(json_matches(
        &partly,
        &serde_json::json!({"error": "published at 2026-12-07T23:44:08.528Z by anonymous"})
    ));
    assert!(!json_matches(
        &partly,
        &serde_json::json!({"error": "published at noon by root"})
    ));
    let closed: Value = serde_json::from_str(r#"{"a": 1}"#).unwrap();
    assert!(!json_matches(&closed, &serde_json::json!({"a": 1, "b": 2})));
    assert!(text_matches("HTTP/1.1 201 …", "HTTP/1.1 201 Created"));
    assert!(text_matches("a…c…e", "abcde"));
    assert!(!text_matches("a…c", "abd"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_console_example_in_the_readme_and_docs_gives_the_output_shown() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in documents() {
        let found = examples(&file);
        if found.is_empty() {
            continue;
        }
        let port = free_port();
        let data = tempfile::tempdir().unwrap();
        let mut service = user_monitor_command()
            .arg("run")
            .current_dir(repo())
            .env("USER_MONITOR__STORE__DATA_DIR", data.path())
            .env("USER_MONITOR__HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env_remove("USER_MONITOR__KAFKA__BOOTSTRAP_SERVERS")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("runs user-monitor");
        wait_ready(
            &client(),
            &format!("http://127.0.0.1:{port}/readyz"),
            Duration::from_secs(90),
        )
        .await;
        for example in &found {
            let command = example
                .command
                .replace("127.0.0.1:5000", &format!("127.0.0.1:{port}"))
                .replace("localhost:5000", &format!("127.0.0.1:{port}"));
            let output = Command::new("bash")
                .arg("-c")
                .arg(format!("set -o pipefail\n{command}"))
                .current_dir(repo())
                .env("USER_MONITOR_BIN", env!("CARGO_BIN_EXE_user-monitor"))
                .output()
                .expect("runs bash");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let place = format!("{}:{}", example.file.display(), example.line);
            if !output.status.success() {
                failures.push(format!(
                    "{place}: `{}` exited {}: {}",
                    example.command,
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                ));
                continue;
            }
            if let Err(why) = check(example, &stdout) {
                failures.push(format!("{place}: `{}`: {why}", example.command));
            }
            checked += 1;
        }
        let _ = service.kill();
        let _ = service.wait();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(checked > 0, "no console example found");
    eprintln!("{checked} examples checked");
}
