//! The `coalmine` binary: parses the command line and hands each command to its module.

use clap::{Parser, Subcommand};

mod cmd;

/// Canary releases for queue workers.
///
/// coalmine releases a worker that consumes a queue through a small canary service first,
/// watches it, waits for approval, then rolls the primary service forward, and rolls the
/// canary back by itself, without losing a message, the moment it misbehaves.
#[derive(Parser)]
#[command(name = "coalmine", version, propagate_version = true)]
struct Cli {
    /// Log filter (tracing syntax), e.g. `info` or `coalmine_queue=debug`.
    #[arg(long, global = true, env = "COALMINE_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The embedded SQS-compatible queue.
    #[command(subcommand)]
    Queue(cmd::queue::QueueCommand),
    /// Send messages to the app's queue, like the guidance's send-sqs-message.sh.
    Send(cmd::send::SendArgs),
    /// Run services described by a JSON file on the local runtime (for testing the runtime).
    #[command(hide = true)]
    Supervise(cmd::supervise::SuperviseArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    let result = match cli.command {
        Command::Queue(c) => cmd::queue::run(c),
        Command::Send(a) => cmd::send::run(a),
        Command::Supervise(a) => cmd::supervise::run(a),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
