//! The `weftctl` command tree: argument parsing and dispatch to the subcommands (`dp` for the
//! kernel datapath, `status`/`flows`/`trace`/`attach`/`detach` for the node agent).

pub mod agent;
pub mod dp;
pub mod dpflow;

use clap::{Parser, Subcommand};

/// Weft node control.
#[derive(Debug, Parser)]
#[command(name = "weftctl", version, about)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// `weftctl` subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Inspect and program the OVS kernel datapath (ovs-dpctl compatible).
    Dp(dp::DpArgs),
    /// The node agent's views: status, flows, trace, attach, detach.
    #[command(flatten)]
    Agent(agent::AgentCmd),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Dp(a) => dp::run(a),
        Cmd::Agent(c) => agent::run(c),
    }
}
