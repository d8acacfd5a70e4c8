//! Writes N pseudo-random valid events as JSONL to stdout, for benchmarks and load tests.
//! `cargo run --release --example gen_events -- 1000000 [users] > events.jsonl`

use std::io::{BufWriter, Write};

fn main() {
    let mut args = std::env::args().skip(1);
    let count: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let users: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let mut out = BufWriter::new(std::io::stdout().lock());
    // xorshift: deterministic, dependency-free.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..count {
        let r = next();
        let kind = if r & 1 == 0 { "deposit" } else { "withdraw" };
        let user = 1 + (r >> 8) % users;
        let cents = 1 + (r >> 24) % 30_000;
        writeln!(
            out,
            "{{\"type\": \"{kind}\", \"amount\": \"{}.{:02}\", \"user_id\": {user}, \"time\": {}}}",
            cents / 100,
            cents % 100,
            i / 100
        )
        .unwrap();
    }
}
