//! Model-based test: the incremental engine against a naive reference that recomputes every rule
//! from the user's full history, over random histories with random risk changes, in both time units.

use proptest::prelude::*;
use rust_decimal::Decimal;
use user_monitor::domain::event::{Amount, Event, Kind, UserId};
use user_monitor::domain::Risk;
use user_monitor::rule_set::{Bounds, RuleSet};
use user_monitor::rules::{FixedRules, FixedRulesConfig, TimeUnit};
use user_monitor::state::Users;

/// The rules exactly as CONTRACT §3 words them, over the whole accepted history.
struct Reference {
    config: FixedRulesConfig,
    unit: TimeUnit,
    histories: std::collections::HashMap<u64, Vec<Event>>,
}

fn dec(text: &str) -> Decimal {
    text.parse().unwrap()
}

impl Reference {
    fn amount_threshold(&self, text: &str, risk: Risk) -> Decimal {
        let a = dec(text);
        match risk {
            Risk::Low => a * Decimal::TWO,
            Risk::Medium => a,
            Risk::High => a / Decimal::TWO,
        }
    }

    fn count_threshold(count: u64, risk: Risk) -> usize {
        (match risk {
            Risk::Low => count * 2,
            Risk::Medium => count,
            Risk::High => count / 2 + 1,
        }) as usize
    }

    fn window(&self, seconds: u64) -> u64 {
        match self.unit {
            TimeUnit::Seconds => seconds,
            TimeUnit::Milliseconds => seconds * 1000,
        }
    }

    fn apply(&mut self, e: Event, risk: Risk) -> Result<Vec<u32>, ()> {
        let history = self.histories.entry(e.user_id.get()).or_default();
        if history.last().is_some_and(|last| e.time < last.time) {
            return Err(());
        }
        history.push(e);
        let history = self.histories[&e.user_id.get()].clone();
        let c = &self.config;
        let mut codes = Vec::new();

        if e.kind == Kind::Withdraw
            && e.amount.decimal() > self.amount_threshold(&c.large_withdrawal.amount, risk)
        {
            codes.push(c.large_withdrawal.code);
        }
        let n = Self::count_threshold(c.consecutive_withdrawals.count, risk);
        if history.len() >= n
            && history[history.len() - n..]
                .iter()
                .all(|x| x.kind == Kind::Withdraw)
        {
            codes.push(c.consecutive_withdrawals.code);
        }
        let deposits: Vec<&Event> = history.iter().filter(|x| x.kind == Kind::Deposit).collect();
        let n = Self::count_threshold(c.increasing_deposits.count, risk);
        if e.kind == Kind::Deposit
            && deposits.len() >= n
            && deposits[deposits.len() - n..]
                .windows(2)
                .all(|w| w[0].amount.decimal() < w[1].amount.decimal())
        {
            codes.push(c.increasing_deposits.code);
        }
        if e.kind == Kind::Deposit {
            let window = self.window(c.deposit_window.window_seconds);
            let sum = deposits
                .iter()
                .filter(|d| e.time - d.time <= window)
                .fold(Decimal::ZERO, |s, d| s.saturating_add(d.amount.decimal()));
            if sum > self.amount_threshold(&c.deposit_window.amount, risk) {
                codes.push(c.deposit_window.code);
            }
        }
        let window = self.window(c.transaction_burst.window_seconds);
        let count = history.iter().filter(|x| e.time - x.time <= window).count();
        if count > Self::count_threshold(c.transaction_burst.count, risk) {
            codes.push(c.transaction_burst.code);
        }
        codes.sort_unstable();
        Ok(codes)
    }
}

/// Amounts around every threshold of every risk level, plus tiny and huge ones.
const AMOUNTS: &[&str] = &[
    "0.00000001",
    "1",
    "10",
    "49.99999999",
    "50",
    "50.00000001",
    "66.67",
    "99.99",
    "100",
    "100.00000001",
    "100.5",
    "150",
    "199.99999999",
    "200",
    "200.00000001",
    "250",
    "399.99",
    "400",
    "400.00000001",
    "99999999999999999999.99999999",
];

#[derive(Debug, Clone)]
struct Step {
    user: u64,
    kind: Kind,
    amount: &'static str,
    /// Time step from the user's previous event; negative makes an out-of-order event.
    dt: i64,
    risk: Risk,
}

fn step(unit_scale: i64) -> impl Strategy<Value = Step> {
    let dt = prop_oneof![
        3 => Just(0i64),
        4 => 0i64..=3,
        2 => prop::sample::select(vec![29i64, 30, 31, 59, 60, 61]),
        1 => 62i64..200,
        1 => -3i64..0,
    ];
    // In milliseconds, land on and just beside each scaled boundary.
    let jitter = if unit_scale > 1 { -1i64..=1 } else { 0i64..=0 };
    let dt = (dt, jitter).prop_map(move |(dt, j)| if dt > 0 { dt * unit_scale + j } else { dt });
    (
        0u64..3,
        prop::bool::weighted(0.5),
        prop::sample::select(AMOUNTS),
        dt,
        prop::sample::select(Risk::ALL.to_vec()),
    )
        .prop_map(|(user, deposit, amount, dt, risk)| Step {
            user,
            kind: if deposit {
                Kind::Deposit
            } else {
                Kind::Withdraw
            },
            amount,
            dt,
            risk,
        })
}

fn small_rules() -> impl Strategy<Value = FixedRulesConfig> {
    (
        1u64..6,
        1u64..6,
        1u64..8,
        prop::sample::select(vec!["100", "0.00000001", "33.33333333"]),
    )
        .prop_map(|(cw, id, burst, amount)| {
            let mut config = FixedRulesConfig::default();
            config.consecutive_withdrawals.count = cw;
            config.increasing_deposits.count = id;
            config.transaction_burst.count = burst;
            config.large_withdrawal.amount = amount.to_owned();
            config
        })
}

fn check(config: FixedRulesConfig, unit: TimeUnit, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let bounds = Bounds::default();
    // The configured five rules, as the service makes them a set.
    let set =
        RuleSet::from_limits(&FixedRules::with_time_unit(&config, unit).unwrap(), &bounds).unwrap();
    let mut engine = Users::default();
    let mut reference = Reference {
        config,
        unit,
        histories: Default::default(),
    };
    let mut clocks = [1_000_000u64; 3];
    for (i, s) in steps.iter().enumerate() {
        let time = clocks[s.user as usize].saturating_add_signed(s.dt);
        let event = Event {
            kind: s.kind,
            amount: Amount::parse(s.amount).unwrap(),
            user_id: UserId::new(s.user).unwrap(),
            time,
        };
        let expected = reference.apply(event, s.risk);
        let got = engine
            .apply(&event, s.risk, &set, &bounds)
            .map(|fired| fired.codes)
            .map_err(|_| ());
        prop_assert_eq!(&got, &expected, "step {} {:?} at time {}", i, s, time);
        if expected.is_ok() {
            clocks[s.user as usize] = time;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_reference_with_default_rules_in_seconds(steps in prop::collection::vec(step(1), 1..120)) {
        check(FixedRulesConfig::default(), TimeUnit::Seconds, steps)?;
    }

    #[test]
    fn engine_matches_reference_in_milliseconds(steps in prop::collection::vec(step(1000), 1..120)) {
        check(FixedRulesConfig::default(), TimeUnit::Milliseconds, steps)?;
    }

    #[test]
    fn engine_matches_reference_with_random_thresholds(config in small_rules(), steps in prop::collection::vec(step(1), 1..80)) {
        check(config, TimeUnit::Seconds, steps)?;
    }
}
