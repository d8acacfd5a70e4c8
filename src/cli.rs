//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::access::Scope;
use crate::rules::TimeUnit;

#[derive(Debug, Parser)]
#[command(
    name = "user-monitor",
    version,
    about = "Real-time alerts on user money movements"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// Without a command: `run`.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Directory holding default.toml and ENV.toml.
    #[arg(
        long,
        global = true,
        env = "USER_MONITOR_CONFIG_DIR",
        default_value = "config"
    )]
    pub config_dir: PathBuf,
    /// Configuration environment: also reads CONFIG_DIR/ENV.toml.
    #[arg(long, global = true, env = "USER_MONITOR_ENV")]
    pub env: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Processor and HTTP shim in one process; an embedded broker when kafka.bootstrap_servers is empty.
    Run,
    /// The Kafka stream processor only.
    Process,
    /// The HTTP shim only.
    Shim,
    /// Evaluate JSONL events offline: one JSONL response line per input line.
    Evaluate(EvaluateArgs),
    /// Run two rule sets over the same JSONL events in one pass: a JSON summary per code, and
    /// optionally one diff line per event whose codes differ.
    Backtest(BacktestArgs),
    /// Rule sets (docs/CONTRACT.md §10): validate a file, publish it as the active or shadow set,
    /// clear the shadow set.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Manage risk profiles.
    #[command(subcommand)]
    Profiles(ProfilesCommand),
    /// Manage the service's topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// API tokens for http.auth.mode = "tokens".
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a fresh secret and the [[http.auth.tokens]] entry (with its SHA-256) to configure.
    New {
        /// The token's name: who the audit trail says made a change.
        name: String,
        /// Comma-separated scopes: events:write, profiles:write, rules:write, alerts:write, read.
        #[arg(long, value_delimiter = ',', required = true, value_parser = parse_scope)]
        scopes: Vec<Scope>,
    },
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    s.trim().parse()
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create the missing topics (as `process` does at start) and validate all of them.
    Create,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Check a rule set file (TOML, or JSON when it ends in .json) offline: prints the set as
    /// JSON when valid, every bad rule and field when not (exit status 1).
    Validate { file: PathBuf },
    /// Validate a rule set file, then publish it to topics.rules as the active set (or the
    /// shadow set) and wait for Kafka's acknowledgement. Prints {"key", "version", "offset",
    /// "timestamp"}; an invalid file prints every bad rule and field and publishes nothing (exit
    /// status 1). Recorded in the audit trail.
    ///
    /// Refused (exit status 1, nothing published): a set without rules unless --allow-empty; a
    /// version name already published with other rules; with --if-match, a set in force that
    /// is another version. Publishing the set in force again publishes nothing.
    Publish {
        /// TOML, or JSON when it ends in .json; its time_unit must be rules.time_unit.
        file: PathBuf,
        /// Publish it as the shadow set (evaluated beside the active set, never changing a
        /// response) instead of the active set.
        #[arg(long)]
        shadow: bool,
        /// Publish a set without rules (it turns alerting off).
        #[arg(long)]
        allow_empty: bool,
        #[command(flatten)]
        if_match: IfMatch,
    },
    /// Clear the shadow rule set (a tombstone under "shadow" in topics.rules; the configured
    /// rules.shadow no longer applies either). Recorded in the audit trail.
    ClearShadow {
        #[command(flatten)]
        if_match: IfMatch,
    },
    /// Make the shadow set the active set, then clear the shadow set. Recorded in the audit
    /// trail. Refused (exit status 1) without a shadow set.
    Promote {
        /// Promote a shadow set without rules (it turns alerting off).
        #[arg(long)]
        allow_empty: bool,
        /// Only if the shadow set in force is this version (the one reviewed); * for any.
        #[arg(long, value_name = "VERSION")]
        if_match: Option<String>,
    },
}

/// The condition of a rules write.
#[derive(Debug, Args)]
pub struct IfMatch {
    /// Only if the set this command replaces (or clears) is this version now; * for any set.
    /// Refused (exit status 1, nothing published) otherwise.
    #[arg(long, value_name = "VERSION")]
    pub if_match: Option<String>,
}

#[derive(Debug, Args)]
pub struct BacktestArgs {
    /// The rule set in force (TOML, or JSON when it ends in .json).
    #[arg(long)]
    pub baseline: PathBuf,
    /// The rule set to compare with it.
    #[arg(long)]
    pub candidate: PathBuf,
    /// JSONL of {"user_id": 1, "risk": "high"}.
    #[arg(long)]
    pub profiles: Option<PathBuf>,
    /// Write one JSONL line per event whose codes differ.
    #[arg(long)]
    pub diff: Option<PathBuf>,
    /// `events` (JSONL events, judged at the --profiles levels) or `records` (records of the
    /// alerts topic, in partition then offset order: each accepted event is replayed at the
    /// risk it was judged at; rejected inputs and retries, which changed no state, are not).
    #[arg(long, value_enum, default_value = "events")]
    pub input_format: crate::backtest::InputFormat,
    /// Count only the events whose time is at least this (in the events' time unit); the
    /// events of the --warm-up before it are replayed as history, earlier ones are not read.
    #[arg(long)]
    pub from_time: Option<u64>,
    /// Count only the events whose time is at most this; later ones are not read.
    #[arg(long)]
    pub to_time: Option<u64>,
    /// The history replayed before --from-time (humantime, e.g. 1h), default state.max_window:
    /// what `POST /api/v1/rules/backtest` replays, so that the two agree.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub warm_up: Option<std::time::Duration>,
    /// Input file, or - for standard input (the default).
    pub input: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Evaluate under this rule set (TOML, or JSON when it ends in .json) instead of the
    /// configured rules.
    #[arg(long, conflicts_with = "time_unit")]
    pub rules: Option<PathBuf>,
    /// JSONL of {"user_id": 1, "risk": "high"}.
    #[arg(long)]
    pub profiles: Option<PathBuf>,
    /// Unit of the events' time (default: rules.time_unit from the configuration).
    #[arg(long, value_parser = parse_time_unit)]
    pub time_unit: Option<TimeUnit>,
    /// Input file, or - for standard input (the default).
    pub input: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ProfilesCommand {
    /// Publish a JSONL profiles file to the profiles topic.
    Load {
        /// JSONL of {"user_id": 1, "risk": "high"}.
        file: PathBuf,
    },
}

fn parse_time_unit(s: &str) -> Result<TimeUnit, String> {
    s.parse()
}
