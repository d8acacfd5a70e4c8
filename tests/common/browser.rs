//! A real browser for the console's tests: headless Chromium (the distribution's package)
//! driven over the DevTools protocol. Just what the tests need: open a page, run JavaScript in
//! it (to read what a person would see and to click and type as they would), wait for a
//! condition, take a screenshot.
//!
//! Chromium is found as `$USER_MONITOR_TEST_CHROMIUM`, else `chromium` or `chromium-browser` on
//! the PATH (the test script installs Debian's `chromium` under `CI=true`). Without one,
//! [`Browser::launch`] returns `None` and the tests say SKIPPED, as the PostgreSQL tests do.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The Chromium binary to use, if there is one.
pub fn chromium() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("USER_MONITOR_TEST_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Where a test's screenshots go: `target/console-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

/// One headless Chromium with one page.
pub struct Browser {
    child: Child,
    socket: Socket,
    session: String,
    next_id: AtomicU64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium with a fresh profile and opens a blank page; `None` without Chromium.
    pub async fn launch() -> Option<Browser> {
        let Some(binary) = chromium() else {
            eprintln!("SKIPPED: no Chromium (set USER_MONITOR_TEST_CHROMIUM or install chromium)");
            return None;
        };
        let profile = tempfile::tempdir().expect("profile directory");
        let mut child = Command::new(&binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=1300,950",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("Chromium printed its DevTools address");
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connects to Chromium");
        let mut browser = Browser {
            child,
            socket,
            session: String::new(),
            next_id: AtomicU64::new(1),
            _profile: profile,
        };
        let target = browser
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = browser
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser.page("Page.enable", json!({})).await;
        browser.page("Runtime.enable", json!({})).await;
        Some(browser)
    }

    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("sends to Chromium");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("Chromium did not answer {method}"))
                .expect("Chromium's socket stays open")
                .expect("reads from Chromium");
            let Message::Text(text) = next else { continue };
            let reply: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if reply["id"] == json!(id) {
                if let Some(error) = reply.get("error") {
                    panic!("{method}: {error}");
                }
                return reply["result"].clone();
            }
        }
    }

    /// A DevTools command to the page (e.g. `Profiler.start`); its result.
    pub async fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(Some(&session), method, params).await
    }

    /// Opens `url` and waits until its document and scripts have loaded.
    pub async fn open(&mut self, url: &str) {
        self.page("Page.navigate", json!({"url": url})).await;
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(20),
        )
        .await;
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .page(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `condition` (a JavaScript expression) is true; panics with the page's text
    /// after `within`.
    pub async fn wait_for(&mut self, condition: &str, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            // A page still rendering may not have the elements yet: not true yet.
            let check = format!(
                "(() => {{ try {{ return !!({condition}); }} catch (_) {{ return false; }} }})()"
            );
            if self.eval(&check).await == json!(true) {
                return started.elapsed();
            }
            if started.elapsed() > within {
                let text = self
                    .eval("document.body ? document.body.innerText : ''")
                    .await;
                panic!(
                    "not within {within:?}: {condition}\npage:\n{}",
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The visible text of the first element matching `selector` (empty when none).
    pub async fn text(&mut self, selector: &str) -> String {
        let expression = format!(
            "(document.querySelector({}) || {{innerText: ''}}).innerText",
            json!(selector)
        );
        self.eval(&expression)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Clicks the first element matching `selector`.
    pub async fn click(&mut self, selector: &str) {
        let expression = format!(
            "(() => {{ const el = document.querySelector({0}); if (!el) throw new Error('no ' + {0}); el.click(); return true; }})()",
            json!(selector)
        );
        self.eval(&expression).await;
    }

    /// Types `value` into the field `selector` as a person would (an `input` event follows).
    pub async fn fill(&mut self, selector: &str, value: &str) {
        let expression = format!(
            "(() => {{ const el = document.querySelector({0}); if (!el) throw new Error('no ' + {0}); el.focus(); el.value = {1}; el.dispatchEvent(new Event('input', {{bubbles: true}})); el.dispatchEvent(new Event('change', {{bubbles: true}})); return true; }})()",
            json!(selector),
            json!(value)
        );
        self.eval(&expression).await;
    }

    /// Saves a PNG of the page as it is now under [`screenshot_dir`].
    pub async fn screenshot(&mut self, name: &str) -> PathBuf {
        let shot = self
            .page(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": false}),
            )
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
