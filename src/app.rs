//! Top level: configuration, then the chosen command. The only place `anyhow` is used.

use std::fs::File;
use std::io::{self, BufReader};
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{Cli, Command, EvaluateArgs, GlobalArgs};
use crate::config::{Settings, Sources};
use crate::profiles::Profiles;
use crate::rules::Limits;

pub fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = load_settings(&cli.global)?;
    match cli.command.unwrap_or(Command::Run) {
        Command::Evaluate(args) => evaluate(&settings, &args),
        other => anyhow::bail!("{other:?} is not available in this build yet"),
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
