//! `weft-agent`: the node agent binary. See the library crate for the parts.

use std::process::ExitCode;

use clap::Parser;
use weft_agent::config::Config;

fn main() -> ExitCode {
    let cfg = Config::parse();
    weft_agent::run::init_tracing();
    let settings = match cfg.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("weft-agent: {e:#}");
            return ExitCode::from(2);
        }
    };
    match weft_agent::run::run(cfg, settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "weft-agent failed");
            eprintln!("weft-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
