//! The `coalmine` binary: parses the command line and hands each command to its module.

use clap::{Parser, Subcommand};

/// The embedded queue allocates and frees small buffers for every request on several threads;
/// glibc's allocator spent about a fifth of the queue server's CPU on them, mimalloc far less.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cmd;
mod embedded;
mod output;
mod sample;
mod sqs_admin;
mod workspace;

/// Canary releases for queue workers.
///
/// coalmine releases a worker that consumes a queue through a small canary service first,
/// watches it, waits for approval, then rolls the primary service forward, and rolls the
/// canary back by itself, without losing a message, the moment it misbehaves.
#[derive(Parser)]
#[command(
    name = "coalmine",
    version,
    propagate_version = true,
    after_help = "Getting started:\n  coalmine demo                     the whole story, in a scratch folder\n  coalmine init && coalmine up      release your own worker (commit to its branch)\n  coalmine status --watch           follow the release; `coalmine approve` to promote\n\nState lives in .coalmine/ beside coalmine.toml."
)]
struct Cli {
    /// Log filter (tracing syntax), e.g. `info` or `coalmine_queue=debug`.
    #[arg(long, global = true, env = "COALMINE_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole story on this machine: a worker released through a canary, a bad release
    /// rolled back with nothing lost. Needs git and cargo; no cloud account.
    Demo(cmd::demo::DemoArgs),
    /// Write a commented coalmine.toml and a buildspec.yml here, or create the sample app.
    Init(cmd::init::InitArgs),
    /// Run everything for the app in this folder: queue, services, pipeline, API.
    Up(cmd::up::UpArgs),
    /// Stop what `up` started here (`--purge` also deletes .coalmine/).
    Down(cmd::down::DownArgs),
    /// The pipeline as a tree: stages, verdicts, services and tasks.
    Status(cmd::ctl::StatusArgs),
    /// Approve the execution awaiting approval: the primary gets its revision.
    Approve(cmd::ctl::DecideArgs),
    /// Reject the execution awaiting approval: the canary goes back to the primary's revision.
    Reject(cmd::ctl::DecideArgs),
    /// Roll the canary back to the primary's revision now and end the execution.
    Rollback(cmd::ctl::RollbackArgs),
    /// Move every message of the DLQ back to the queue (a rollback redrives its own already).
    Redrive(cmd::ctl::RedriveArgs),
    /// Abandon an execution.
    Stop(cmd::ctl::StopArgs),
    /// Check the branch for a new commit now.
    Trigger(cmd::ctl::TriggerArgs),
    /// Run an execution's commit again, as a new execution (default: the newest execution).
    Retry(cmd::ctl::RetryArgs),
    /// Past executions and how each ended.
    History(cmd::ctl::HistoryArgs),
    /// Build logs (`logs build 3`) or a service's task logs (`logs canary --follow`).
    Logs(cmd::ctl::LogsArgs),
    /// Check coalmine.toml and buildspec.yml and print precise diagnostics.
    Validate(cmd::validate::ValidateArgs),
    /// The embedded SQS-compatible queue.
    #[command(subcommand)]
    Queue(cmd::queue::QueueCommand),
    /// The queue proxy: a sidecar between one task and SQS that reports what the task does
    /// with its messages and hands back what it holds when it stops.
    Proxy(cmd::proxy::ProxyArgs),
    /// Send messages to the app's queue, like the guidance's send-sqs-message.sh.
    Send(cmd::send::SendArgs),
    /// Infrastructure from coalmine.toml: `synth aws` prints a CloudFormation template.
    #[command(subcommand)]
    Synth(cmd::synth::SynthCommand),
    /// Run services described by a JSON file on the local runtime (for testing the runtime).
    #[command(hide = true)]
    Supervise(cmd::supervise::SuperviseArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The demo narrates; its default log shows only warnings and errors.
    let quiet_default = matches!(cli.command, Command::Demo(_)) && std::env::var_os("COALMINE_LOG").is_none() && cli.log == "info";
    init_tracing(if quiet_default { "warn,coalmine_queue::http=error" } else { &cli.log });
    let result = match cli.command {
        Command::Demo(a) => cmd::demo::run(a),
        Command::Init(a) => cmd::init::run(a),
        Command::Up(a) => cmd::up::run(a),
        Command::Down(a) => cmd::down::run(a),
        Command::Status(a) => cmd::ctl::status(a),
        Command::Approve(a) => cmd::ctl::decide(a, true),
        Command::Reject(a) => cmd::ctl::decide(a, false),
        Command::Rollback(a) => cmd::ctl::rollback(a),
        Command::Redrive(a) => cmd::ctl::redrive(a),
        Command::Stop(a) => cmd::ctl::stop(a),
        Command::Trigger(a) => cmd::ctl::trigger(a),
        Command::Retry(a) => cmd::ctl::retry(a),
        Command::History(a) => cmd::ctl::history(a),
        Command::Logs(a) => cmd::ctl::logs(a),
        Command::Validate(a) => cmd::validate::run(a),
        Command::Queue(c) => cmd::queue::run(c),
        Command::Proxy(a) => cmd::proxy::run(a),
        Command::Send(a) => cmd::send::run(a),
        Command::Synth(c) => cmd::synth::run(c),
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
