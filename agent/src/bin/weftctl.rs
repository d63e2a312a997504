//! `weftctl`: the operator's command line for a Weft node. `weftctl dp ...` inspects and
//! programs the OVS kernel datapath the way `ovs-dpctl` does, without OVS userspace installed.

use std::process::ExitCode;

use clap::Parser;
use weft_agent::ctl;

fn main() -> ExitCode {
    let cli = ctl::Cli::parse();
    match ctl::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weftctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
