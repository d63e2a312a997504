//! `weftctl`: the command line for a Weft node. `weftctl status|flows|trace|attach|detach`
//! talk to the node's `weft-agent` over its local API socket; `weftctl dp ...` inspects and
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
