//! Top level: configuration, then the chosen command. The only place `anyhow` is used.

use std::fs::File;
use std::io::{self, BufReader};
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{
    Cli, Command, EvaluateArgs, GlobalArgs, ProfilesCommand, TokenCommand, TopicsCommand,
};
use crate::config::{Settings, Sources};
use crate::profiles::Profiles;
use crate::rules::Limits;

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

fn evaluate(settings: &Settings, args: &EvaluateArgs) -> anyhow::Result<ExitCode> {
    let limits = match args.time_unit {
        Some(unit) => Limits::with_time_unit(&settings.rules, unit)?,
        None => settings.limits(),
    };
    let profiles = match &args.profiles {
        Some(path) => Profiles::from_lines(&Profiles::read_file(path)?),
        None => Profiles::default(),
    };
    let stdout = io::stdout().lock();
    let summary = match args.input.as_deref() {
        None => crate::evaluate::evaluate(io::stdin().lock(), stdout, &profiles, &limits),
        Some(path) if path.as_os_str() == "-" => {
            crate::evaluate::evaluate(io::stdin().lock(), stdout, &profiles, &limits)
        }
        Some(path) => {
            let file =
                File::open(path).with_context(|| format!("opening input {}", path.display()))?;
            crate::evaluate::evaluate(
                BufReader::with_capacity(1 << 16, file),
                stdout,
                &profiles,
                &limits,
            )
        }
    };
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

/// `user-monitor profiles load FILE`: publishes each line to the profiles topic and waits for acks.
fn load_profiles(settings: &Settings, path: &std::path::Path) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(&settings.log);
    let lines = Profiles::read_file(path)?;
    // The levels they replace, for the audit trail.
    let mut current = crate::kafka::profiles::ProfilesFollower::new(settings, "cli-profiles")?;
    current.catch_up(std::time::Duration::from_secs(30))?;
    let actor = crate::audit::cli_actor();
    let mut seen = current.profiles().clone();
    let entries: Vec<_> = lines
        .iter()
        .map(|line| {
            let before = seen.risk(line.user_id);
            seen.set(line.user_id, line.risk);
            crate::audit::AuditEntry::risk_set(
                &actor,
                "cli",
                line.user_id,
                before.as_str(),
                line.risk.as_str(),
            )
        })
        .collect();
    let published = crate::kafka::profiles::publish(settings, &lines)?;
    crate::audit::publish(settings, &entries)?;
    eprintln!(
        "published {published} profiles to {} (recorded in {} as {actor})",
        settings.topics.profiles, settings.topics.audit
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
