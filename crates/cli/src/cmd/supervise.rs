//! `coalmine supervise`: run services from a JSON file on the local runtime.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct SuperviseArgs {}

pub fn run(_args: SuperviseArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("supervise is not built yet")
}
