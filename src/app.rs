//! Top level: configuration, then the chosen command. The only place `anyhow` is used.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::changes::{
    Author, ChangeError, ChangeLog, Configured, Expected, Promotion, RulesRequest,
};
use crate::cli::{
    BacktestArgs, Cli, Command, EvaluateArgs, GlobalArgs, ProfilesCommand, RulesCommand,
    TokenCommand, TopicsCommand,
};
use crate::config::{Settings, Sources};
use crate::domain::Risk;
use crate::domain::UserId;
use crate::kafka::rules::RulesKey;
use crate::kafka::KafkaLayerError;
use crate::profiles::{ProfileLine, Profiles};
use crate::rule_set::{Bounds, InvalidRuleSet, RuleSet, RuleSetFileError};
use crate::rules::FixedRules;

pub fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    if matches!(
        cli.command,
        None | Some(Command::Run | Command::Process | Command::Shim)
    ) {
        crate::shutdown::catch();
    }
    let settings = load_settings(&cli.global)?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Evaluate(args) => evaluate(&settings, &args),
        Command::Backtest(args) => backtest(&settings, &args),
        Command::Rules(RulesCommand::Validate { file }) => validate_rules(&settings, &file),
        Command::Rules(RulesCommand::Publish {
            file,
            shadow,
            allow_empty,
            if_match,
        }) => {
            let key = if shadow {
                RulesKey::Shadow
            } else {
                RulesKey::Active
            };
            let expected = expected(if_match.if_match.as_deref())?;
            publish_rules(&settings, &file, key, allow_empty, expected)
        }
        Command::Rules(RulesCommand::ClearShadow { if_match }) => {
            let request = RulesRequest {
                key: RulesKey::Shadow,
                set: None,
                allow_empty: false,
                expected: expected(if_match.if_match.as_deref())?,
            };
            change_rules(&settings, &request)
        }
        Command::Rules(RulesCommand::Promote {
            allow_empty,
            if_match,
        }) => {
            let request = Promotion {
                allow_empty,
                expected: expected(if_match.as_deref())?,
            };
            promote(&settings, &request)
        }
        Command::Process => {
            crate::service::process(settings)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            crate::service::run(settings)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Shim => {
            crate::service::shim(settings)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Profiles(ProfilesCommand::Load { file }) => load_profiles(&settings, &file),
        Command::Token(TokenCommand::New { name, scopes }) => {
            print!("{}", new_token(&name, &scopes)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Topics(TopicsCommand::Create) => {
            crate::telemetry::init(&settings.log);
            crate::kafka::connect::check(
                &settings,
                crate::kafka::connect::Patience::UntilConnected,
            )?;
            let topics = crate::kafka::admin::ensure_topics(&settings)?;
            eprintln!("topics ready ({} partitions)", topics.partitions);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load_settings(global: &GlobalArgs) -> anyhow::Result<Settings> {
    Ok(Settings::load(&Sources {
        config_dir: Some(global.config_dir.clone()),
        env: global.env.clone(),
        vars: None,
    })?)
}

/// The input of `evaluate` and `backtest`: a file, or standard input for none or `-`. An enum
/// rather than a boxed reader: `evaluate`'s line reader is generic over it and stays inlined.
enum InputFile {
    Stdin(io::StdinLock<'static>),
    File(BufReader<File>),
}

impl io::Read for InputFile {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            InputFile::Stdin(r) => r.read(buf),
            InputFile::File(r) => r.read(buf),
        }
    }
}

impl BufRead for InputFile {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self {
            InputFile::Stdin(r) => r.fill_buf(),
            InputFile::File(r) => r.fill_buf(),
        }
    }

    fn consume(&mut self, amount: usize) {
        match self {
            InputFile::Stdin(r) => r.consume(amount),
            InputFile::File(r) => r.consume(amount),
        }
    }
}

fn open_input(path: Option<&Path>) -> anyhow::Result<InputFile> {
    Ok(match path {
        Some(path) if path.as_os_str() != "-" => {
            let file =
                File::open(path).with_context(|| format!("opening input {}", path.display()))?;
            InputFile::File(BufReader::with_capacity(1 << 16, file))
        }
        _ => InputFile::Stdin(io::stdin().lock()),
    })
}

fn read_profiles(path: Option<&Path>) -> anyhow::Result<Profiles> {
    Ok(match path {
        Some(path) => Profiles::from_lines(&Profiles::read_file(path)?),
        None => Profiles::default(),
    })
}

/// A rule set file: JSON when its name ends in `.json`, TOML otherwise. The outer error is for
/// a file that cannot be read; the inner one lists every problem of an invalid set.
fn read_rule_set(path: &Path, bounds: &Bounds) -> anyhow::Result<Result<RuleSet, InvalidRuleSet>> {
    match RuleSet::read_file(path, bounds) {
        Ok(set) => Ok(Ok(set)),
        Err(RuleSetFileError::Invalid { invalid, .. }) => Ok(Err(invalid)),
        Err(e) => Err(e.into()),
    }
}

/// [`read_rule_set`] for a command that needs a valid set.
fn valid_rule_set(path: &Path, bounds: &Bounds) -> anyhow::Result<RuleSet> {
    read_rule_set(path, bounds)?.with_context(|| format!("rule set {}", path.display()))
}

/// `user-monitor rules validate FILE`.
fn validate_rules(settings: &Settings, path: &Path) -> anyhow::Result<ExitCode> {
    match read_rule_set(path, &settings.rule_bounds())? {
        Ok(set) => {
            println!("{}", serde_json::to_string_pretty(&set.to_value())?);
            eprintln!(
                "{}: valid rule set {:?} with {} rules",
                path.display(),
                set.version,
                set.rules.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(invalid) => {
            print_problems(path, &invalid);
            Ok(ExitCode::from(1))
        }
    }
}

/// Prints the problems of an invalid set, one a line, under the file's name.
fn print_problems(path: &Path, invalid: &InvalidRuleSet) {
    eprintln!("{}: invalid rule set:", path.display());
    for problem in &invalid.problems {
        eprintln!("  {problem}");
    }
}

/// `--if-match VERSION`.
fn expected(if_match: Option<&str>) -> anyhow::Result<Option<Expected>> {
    if_match
        .map(|text| Expected::parse(text).map_err(anyhow::Error::msg))
        .transpose()
}

/// `user-monitor rules publish FILE [--shadow] [--allow-empty] [--if-match V]`: validates
/// (bounds and rules.time_unit, as the HTTP API does), publishes, records the change in the
/// audit trail.
fn publish_rules(
    settings: &Settings,
    path: &Path,
    key: RulesKey,
    allow_empty: bool,
    expected: Option<Expected>,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading rule set {}", path.display()))?;
    let set = match crate::kafka::rules::validate_for_publishing(
        &text,
        crate::kafka::rules::Format::of_path(path),
        &settings.rule_bounds(),
        settings.rules.time_unit,
    ) {
        Ok(set) => set,
        Err(invalid) => {
            print_problems(path, &invalid);
            return Ok(ExitCode::from(1));
        }
    };
    let request = RulesRequest {
        key,
        set: Some(set),
        allow_empty,
        expected,
    };
    change_rules(settings, &request)
}

/// The configured sets, against which a version name is checked and which are in force while
/// the topic holds none.
fn configured(settings: &Settings) -> Configured {
    settings
        .rule_sets()
        .map(|(active, shadow)| Configured {
            active: Some(active),
            shadow,
        })
        .unwrap_or_default()
}

fn cli_author(actor: &str) -> Author<'_> {
    Author {
        actor,
        source: "cli",
    }
}

/// A refused change: its reason on stderr, exit status 1 (as an invalid set); other failures
/// are errors.
fn refused(result: Result<ExitCode, ChangeError>) -> anyhow::Result<ExitCode> {
    match result {
        Err(ChangeError::Refused(refusal)) => {
            eprintln!("refused: {refusal}");
            Ok(ExitCode::from(1))
        }
        other => Ok(other?),
    }
}

/// Publishes the set of the request (`None`: clears the shadow set) and its audit entry (see
/// [`crate::changes::change_rule_set`]), and prints where Kafka stored it.
fn change_rules(settings: &Settings, request: &RulesRequest) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(&settings.log);
    let rules = &settings.topics.rules;
    let actor = crate::audit::cli_actor();
    let key = request.key;
    let changed = run_change(crate::changes::change_rule_set(
        &CliChanges { settings },
        cli_author(&actor),
        request,
        &configured(settings),
    ))?;
    refused(changed.map(|changed| {
        let published = changed.published;
        println!(
            "{}",
            serde_json::json!({
                "key": key.as_str(),
                "version": request.set.as_ref().map(|s| s.version.as_str()),
                "offset": published.offset,
                "timestamp": published.timestamp,
                "unchanged": changed.entry.is_none(),
            })
        );
        match &changed.entry {
            Some(entry) => eprintln!(
                "{key} rule set: {} -> {} at offset {} of {rules} (recorded in {} as {actor})",
                entry.before, entry.after, published.offset, settings.topics.audit
            ),
            None => eprintln!(
                "{key} rule set: {} is in force already (offset {} of {rules}); nothing published",
                changed.before.as_deref().unwrap_or("none"),
                published.offset
            ),
        }
        ExitCode::SUCCESS
    }))
}

/// `user-monitor rules promote [--allow-empty] [--if-match V]` (see
/// [`crate::changes::promote_shadow`]).
fn promote(settings: &Settings, request: &Promotion) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(&settings.log);
    let actor = crate::audit::cli_actor();
    let promoted = run_change(crate::changes::promote_shadow(
        &CliChanges { settings },
        cli_author(&actor),
        request,
        &configured(settings),
    ))?;
    refused(promoted.map(|promoted| {
        println!(
            "{}",
            serde_json::json!({
                "version": promoted.version,
                "before": promoted.before,
                "offset": promoted.active.offset,
                "timestamp": promoted.active.timestamp,
                "shadow_cleared_offset": promoted.cleared.offset,
            })
        );
        eprintln!(
            "shadow rule set {} promoted to active (was {}), shadow set cleared (recorded in {} as {actor})",
            promoted.version,
            promoted.before.as_deref().unwrap_or("none"),
            settings.topics.audit
        );
        ExitCode::SUCCESS
    }))
}

/// Runs a change use case to its end on this thread. Not `futures::executor::block_on`: the
/// CLI's blocking clients wait on futures of their own with it, which cannot nest.
fn run_change<T>(change: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the command's runtime")?;
    Ok(runtime.block_on(change))
}

/// The command line's [`ChangeLog`]: short-lived clients, each step riding out a broker
/// restarting (transient failures are retried within the step's timeout).
struct CliChanges<'a> {
    settings: &'a Settings,
}

impl ChangeLog for CliChanges<'_> {
    async fn rule_sets(&self) -> Result<crate::kafka::rules::Current, KafkaLayerError> {
        // A missing topic is found here, before a producer could have a broker auto-create it
        // with the wrong settings.
        crate::kafka::rules::read_current(self.settings)
    }

    async fn publish_rule_set(
        &self,
        key: RulesKey,
        set: Option<&RuleSet>,
    ) -> Result<crate::kafka::rules::Published, KafkaLayerError> {
        crate::kafka::rules::publish(self.settings, key, set)
    }

    async fn publish_version(
        &self,
        set: &RuleSet,
        by: &crate::kafka::rules::Publisher,
    ) -> Result<crate::kafka::rules::Published, KafkaLayerError> {
        crate::kafka::rules::publish_version(self.settings, set, by)
    }

    async fn risk_levels(&self, users: &[UserId]) -> Result<Vec<Risk>, KafkaLayerError> {
        let mut current =
            crate::kafka::profiles::ProfilesFollower::new(self.settings, "cli-profiles")?;
        current.catch_up(AUDIT_WITHIN)?;
        Ok(users.iter().map(|&u| current.profiles().risk(u)).collect())
    }

    async fn publish_risks(&self, lines: &[ProfileLine]) -> Result<(), KafkaLayerError> {
        crate::kafka::profiles::publish(self.settings, lines).map(|_| ())
    }

    async fn record(&self, entries: &[crate::audit::AuditEntry]) -> Result<(), KafkaLayerError> {
        crate::kafka::retry_transient("recording the change", AUDIT_WITHIN, || {
            crate::audit::publish(self.settings, entries)
        })
    }
}

/// `user-monitor backtest --baseline A --candidate B [--profiles F] [--diff OUT] [INPUT]`.
fn backtest(settings: &Settings, args: &BacktestArgs) -> anyhow::Result<ExitCode> {
    let bounds = settings.rule_bounds();
    let baseline = valid_rule_set(&args.baseline, &bounds)?;
    let candidate = valid_rule_set(&args.candidate, &bounds)?;
    let profiles = read_profiles(args.profiles.as_deref())?;
    let input = open_input(args.input.as_deref())?;
    let mut diff = match &args.diff {
        Some(path) => Some(io::BufWriter::new(
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
    if args.warm_up.is_some() && args.from_time.is_none() {
        anyhow::bail!("--warm-up is the history replayed before --from-time: give --from-time too");
    }
    let range = crate::backtest::Range::new(
        args.from_time,
        args.to_time,
        args.warm_up,
        &baseline,
        &candidate,
        &bounds,
    );
    let replay = crate::backtest::Replay::new(
        &baseline,
        &candidate,
        &bounds,
        &profiles,
        range,
        0,
        diff.as_mut().map(|w| w as &mut dyn io::Write),
    );
    let outcome = crate::backtest::run(input, args.input_format, replay).context("backtesting")?;
    println!("{}", serde_json::to_string_pretty(&outcome.report)?);
    Ok(ExitCode::SUCCESS)
}

fn evaluate(settings: &Settings, args: &EvaluateArgs) -> anyhow::Result<ExitCode> {
    let profiles = read_profiles(args.profiles.as_deref())?;
    let input = open_input(args.input.as_deref())?;
    let stdout = io::stdout().lock();
    let bounds = settings.rule_bounds();
    let set = match (&args.rules, args.time_unit) {
        (Some(path), _) => valid_rule_set(path, &bounds)?,
        // The five configured rules in another unit than the configuration's.
        (None, Some(unit)) if settings.rules.file.is_empty() => {
            RuleSet::from_limits(&FixedRules::with_time_unit(&settings.rules, unit)?, &bounds)?
        }
        (None, Some(_)) => anyhow::bail!(
            "--time-unit applies to the five rules of [rules], but rules.file ({}) is configured: its own time_unit holds (or pass --rules)",
            settings.rules.file
        ),
        (None, _) => settings.rule_sets()?.0,
    };
    let summary = crate::evaluate::evaluate(input, stdout, &profiles, &set, &bounds);
    match summary {
        Ok(summary) => {
            eprintln!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        // A closed pipe downstream (e.g. `| head`) is not a failure of the evaluation.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("evaluating"),
    }
}

/// How long reading the profiles, or recording a published change in the audit trail, may
/// retry transient failures.
const AUDIT_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// `user-monitor profiles load FILE`: publishes each line to the profiles topic and records
/// each change (see [`crate::changes::change_risks`]).
fn load_profiles(settings: &Settings, path: &std::path::Path) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(&settings.log);
    let lines = Profiles::read_file(path)?;
    let actor = crate::audit::cli_actor();
    let author = Author {
        actor: &actor,
        source: "cli",
    };
    run_change(crate::changes::change_risks(
        &CliChanges { settings },
        author,
        &lines,
    ))??;
    eprintln!(
        "published {} profiles to {} (recorded in {} as {actor})",
        lines.len(),
        settings.topics.profiles,
        settings.topics.audit
    );
    Ok(ExitCode::SUCCESS)
}

/// The text `user-monitor token new` prints: the secret once, and the entry to configure.
fn new_token(name: &str, scopes: &[crate::http::auth::Scope]) -> anyhow::Result<String> {
    if name.trim().is_empty() || name.contains('"') {
        anyhow::bail!("the token name must be non-empty and contain no quote");
    }
    let secret = crate::http::auth::new_secret();
    let hash = crate::http::auth::sha256_hex(&secret);
    let scopes: Vec<String> = scopes.iter().map(|s| format!("\"{s}\"")).collect();
    Ok(format!(
        "# The secret: give it to the client (Authorization: Bearer <secret>). It is shown once\n\
         # and stored nowhere; only its SHA-256 goes into the configuration.\n\
         secret = \"{secret}\"\n\n\
         # Add to the configuration (config/<env>.toml, or a file named by http.auth.tokens_file\n\
         # as [[tokens]]), with http.auth.mode = \"tokens\":\n\
         [[http.auth.tokens]]\n\
         name = \"{name}\"\n\
         sha256 = \"{hash}\"\n\
         scopes = [{}]\n",
        scopes.join(", ")
    ))
}
