//! Top level: configuration, then the chosen command. The only place `anyhow` is used.

use std::fs::File;
use std::io::{self, BufReader};
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{Cli, Command, EvaluateArgs, GlobalArgs, ProfilesCommand, TopicsCommand};
use crate::config::{Settings, Sources};
use crate::profiles::Profiles;
use crate::rules::Limits;

pub fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = load_settings(&cli.global)?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Evaluate(args) => evaluate(&settings, &args),
        Command::Process => process(settings),
        Command::Run => {
            crate::service::run(settings)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Shim => {
            crate::service::shim(settings)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Profiles(ProfilesCommand::Load { file }) => load_profiles(&settings, &file),
        Command::Topics(TopicsCommand::Create) => {
            crate::telemetry::init(&settings.log);
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
        Some(path) => {
            let file =
                File::open(path).with_context(|| format!("opening profiles {}", path.display()))?;
            let lines = Profiles::read_jsonl(BufReader::new(file))
                .with_context(|| format!("reading profiles {}", path.display()))?;
            Profiles::from_lines(&lines)
        }
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

/// `user-monitor process`: the stream processor until SIGINT/SIGTERM.
fn process(settings: Settings) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(&settings.log);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let deps = crate::processor::Deps {
        metrics: crate::metrics::Metrics::new(),
        readiness: std::sync::Arc::new(crate::health::Readiness::default()),
        shutdown: tokio_util::sync::CancellationToken::new(),
        embedded: false,
    };
    let deadline = settings.processing.shutdown_timeout;
    let shutdown = deps.shutdown.clone();
    runtime.block_on(async move {
        crate::shutdown::spawn_signal_handler(shutdown.clone());
        let worker = tokio::task::spawn_blocking(move || crate::processor::run(settings, deps));
        tokio::pin!(worker);
        let result = tokio::select! {
            joined = &mut worker => joined,
            () = async { shutdown.cancelled().await; tokio::time::sleep(deadline).await } => {
                anyhow::bail!("graceful shutdown did not finish within {deadline:?}");
            }
        };
        result.context("processor thread panicked")??;
        tracing::info!("processor stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// `user-monitor profiles load FILE`: publishes each line to the profiles topic and waits for acks.
fn load_profiles(settings: &Settings, path: &std::path::Path) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(&settings.log);
    let file = File::open(path).with_context(|| format!("opening profiles {}", path.display()))?;
    let lines = Profiles::read_jsonl(BufReader::new(file))
        .with_context(|| format!("reading profiles {}", path.display()))?;
    let published = crate::kafka::profiles::publish(settings, &lines)?;
    eprintln!(
        "published {published} profiles to {}",
        settings.topics.profiles
    );
    Ok(ExitCode::SUCCESS)
}
