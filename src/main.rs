use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = user_monitor::cli::Cli::parse();
    match user_monitor::app::main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("user-monitor: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
