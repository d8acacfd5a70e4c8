//! Engine benchmarks: decode alone, apply alone, and the whole `evaluate` loop in memory.
//! `cargo bench --bench engine`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use user_monitor::domain::event::decode;
use user_monitor::domain::Risk;
use user_monitor::evaluate::evaluate;
use user_monitor::profiles::Profiles;
use user_monitor::rule_set::{Bounds, RuleSet};
use user_monitor::state::{Fired, Users};

fn events(n: u64) -> Vec<String> {
    (0..n)
        .map(|i| {
            let kind = if i % 3 == 0 { "withdraw" } else { "deposit" };
            format!(
                "{{\"type\": \"{kind}\", \"amount\": \"{}.{:02}\", \"user_id\": {}, \"time\": {}}}",
                1 + (i * 7919) % 300,
                i % 100,
                i % 1000,
                i / 50
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let lines = events(100_000);
    let (set, bounds) = (RuleSet::default_set(), Bounds::default());
    let decoded: Vec<_> = lines
        .iter()
        .map(|l| decode(l.as_bytes()).unwrap())
        .collect();
    let input = lines.join("\n").into_bytes();

    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("decode", |b| {
        b.iter(|| {
            for line in &lines {
                black_box(decode(line.as_bytes()).unwrap());
            }
        })
    });
    group.bench_function("apply", |b| {
        b.iter(|| {
            let mut users = Users::default();
            let mut fired = Fired::default();
            for event in &decoded {
                let slot = users.slot(event.user_id.get());
                users
                    .apply_at(slot, event, Risk::Medium, &set, &bounds, &mut fired, false)
                    .unwrap();
                black_box(fired.codes.len());
            }
        })
    });
    group.bench_function("evaluate", |b| {
        let profiles = Profiles::default();
        let mut out = Vec::with_capacity(input.len());
        b.iter(|| {
            out.clear();
            evaluate(input.as_slice(), &mut out, &profiles, &set, &bounds).unwrap();
            black_box(out.len());
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
