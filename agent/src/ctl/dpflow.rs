//! `weftctl dp` flow commands: add-flow, mod-flow, del-flow, del-flows, dump-flows, get-flow.

use anyhow::{Result, bail};
use odp::dpif::Dpif;

use super::dp::DpArgs;

/// Runs one flow command.
pub fn run(_d: &mut Dpif, cmd: &str, _args: &[&str], _a: &DpArgs) -> Result<()> {
    bail!("unknown command {cmd:?}")
}
