//! Open-loop load generator for `POST /event` on a loopback shim: sends `--count` events at
//! `--rate` per second (bounded by `--max-seconds`), each user's events with increasing times, and
//! reports the status counts and the latency percentiles measured from each request's scheduled
//! send time (so a slow server cannot hide its queueing: no coordinated omission).
//!
//! ```sh
//! cargo run --release --example load_http -- --url http://127.0.0.1:5000 --rate 200 --count 4000
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

struct Args {
    url: String,
    rate: f64,
    count: u64,
    users: u64,
    max_seconds: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: "http://127.0.0.1:5000".to_owned(),
        rate: 100.0,
        count: 2000,
        users: 1000,
        max_seconds: 120,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value()?,
            "--rate" => args.rate = value()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--count" => args.count = value()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--users" => args.users = value()?.parse().map_err(|e| format!("--users: {e}"))?,
            "--max-seconds" => {
                args.max_seconds = value()?
                    .parse()
                    .map_err(|e| format!("--max-seconds: {e}"))?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let authority = args
        .url
        .strip_prefix("http://")
        .ok_or("--url must be http://")?
        .split('/')
        .next()
        .unwrap_or_default();
    let loopback = ["127.0.0.1", "localhost", "[::1]"].iter().any(|host| {
        authority
            .strip_prefix(host)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'))
    });
    if !loopback {
        return Err(format!(
            "refusing non-loopback address {authority:?}: this tool is for local measurement only"
        ));
    }
    if args.rate.is_nan() || args.rate <= 0.0 || args.count == 0 || args.users == 0 {
        return Err("--rate, --count and --users must be positive".to_owned());
    }
    Ok(args)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("load_http: {e}");
            std::process::exit(2);
        }
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let url = format!("{}/event", args.url.trim_end_matches('/'));
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.count as usize);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for i in 0..args.count {
        let scheduled = start + interval.mul_f64(i as f64);
        if scheduled > deadline {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let user = 1 + x % args.users;
        let kind = if x & 1 == 0 { "deposit" } else { "withdraw" };
        let body = format!(
            r#"{{"type": "{kind}", "amount": "{}.{:02}", "user_id": {user}, "time": {i}}}"#,
            1 + (x >> 20) % 150,
            (x >> 8) % 100
        );
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let result = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let status = match result {
                Ok(response) => {
                    let status = response.status().as_u16().to_string();
                    let _ = response.bytes().await;
                    status
                }
                Err(e) if e.is_timeout() => "timeout".to_owned(),
                Err(_) => "error".to_owned(),
            };
            (status, scheduled.elapsed())
        }));
    }
    let sent = tasks.len();
    let send_phase = start.elapsed();
    let mut latencies = Vec::with_capacity(sent);
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    for task in tasks {
        let (status, latency) = task.await.expect("request task");
        *statuses.entry(status).or_default() += 1;
        latencies.push(latency);
    }
    let elapsed = start.elapsed();
    latencies.sort();
    println!(
        "sent {sent} requests in {:.2} s (target {} req/s, sent at {:.1} req/s), all answered after {:.2} s, {} users",
        send_phase.as_secs_f64(),
        args.rate,
        sent as f64 / send_phase.as_secs_f64().max(1e-9),
        elapsed.as_secs_f64(),
        args.users
    );
    println!("statuses: {statuses:?}");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "latency ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(percentile(&latencies, 100.0)),
    );
}
