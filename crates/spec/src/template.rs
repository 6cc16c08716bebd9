//! The `coalmine.toml` written by `coalmine init`.

/// A complete, commented `coalmine.toml` for `app` holding every default (those of AWS's
/// "Canary deployments for backend ECS workloads" guidance). It parses back to the defaults,
/// with `run.command = "./<app>"`.
pub fn default_toml(app: &str) -> String {
    TEMPLATE
        .replace("{run_command}", RUN_LOCAL)
        .replace("{queue_endpoint}", QUEUE_EMBEDDED)
        .replace("{runtime}", RUNTIME_LOCAL)
        .replace("{app}", app)
}

/// The `coalmine.toml` of `coalmine init --aws`: the same, with the tasks on ECS (Fargate) in
/// `region` and the queue in Amazon SQS, matching the template of `coalmine synth aws`.
pub fn default_toml_aws(app: &str, region: &str) -> String {
    TEMPLATE
        .replace("{run_command}", RUN_ECS)
        .replace("{queue_endpoint}", QUEUE_SQS)
        .replace("{runtime}", RUNTIME_ECS)
        .replace("{region}", region)
        .replace("region = \"us-east-1\"", &format!("region = \"{region}\""))
        .replace("{app}", app)
}

const RUN_LOCAL: &str = r#"# Starts one task; run in the revision's artifact folder.
command = "./{app}""#;

const RUN_ECS: &str = r#"# On ECS the image's CMD starts a task; `command` (split at spaces) overrides it.
# command = "./{app}""#;

const QUEUE_EMBEDDED: &str = r#"# Use Amazon SQS instead of the embedded queue:
# endpoint = "https://sqs.us-east-1.amazonaws.com""#;

const QUEUE_SQS: &str = r#"# Amazon SQS (the queues are made by `coalmine synth aws`).
endpoint = "https://sqs.{region}.amazonaws.com""#;

const RUNTIME_LOCAL: &str = r#"[runtime]
# Where tasks run: "local" (processes on this machine, supervised by `coalmine up`)
# or "ecs" (Fargate services; `coalmine init --aws` and `coalmine synth aws`).
kind = "local""#;

const RUNTIME_ECS: &str = r#"[runtime]
# Where tasks run: "ecs" (two Fargate services on one task definition, made by
# `coalmine synth aws`) or "local" (processes on this machine).
kind = "ecs"
cluster = "{app}"
# The region is [queue] region.
primary_service = "{app}"
canary_service = "{app}-canary"
# The app's container in the task definition (imagedefinitions.json names it).
container = "{app}"
# The coalmine proxy sidecar's image (an image holding the coalmine binary);
# default: the tag "coalmine" of the app's ECR repository.
# proxy_image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/coalmine:latest"
# The loopback port of the proxy: the app's AWS_ENDPOINT_URL_SQS.
proxy_port = 9325
# Fargate task size: CPU units (1024 = 1 vCPU) and MiB.
cpu = 256
memory = 512
# How long CloudWatch Logs keeps the tasks' output.
log_retention = "7d""#;

const TEMPLATE: &str = r#"# coalmine.toml: how coalmine builds, runs and releases this app.
# Durations are written "500ms", "10s", "5m", "2h" or "7d".

# The app's name: lowercase letters, digits and "-".
app = "{app}"

[source]
# The git repository: a folder (relative to this file) or a URL.
repo = "."
# The branch watched; by default the repository's current branch (where `git commit` goes).
# branch = "main"
# How often the branch is checked for new commits.
poll_interval = "5s"

[build]
# CodeBuild's buildspec format (version 0.2), relative to the repository's root.
buildspec = "buildspec.yml"
timeout = "60m"

[run]
{run_command}
# Extra environment of every task, e.g. { WORK_MS = "1000" }.
env = {}
# Grace between SIGTERM and SIGKILL when a task is stopped.
stop_timeout = "30s"
# The same grace for a bad canary's tasks when an alarm rolls it back: short, so that a hung
# or misbehaving task stops at once and its messages go back to the queue.
rollback_stop_timeout = "3s"
# A command that exits 0 when a task is healthy; without it a task is healthy
# once it has stayed up for `healthy_after`.
# health_command = "./healthcheck"
healthy_after = "2s"
# During a deployment, at least this share of the desired tasks stays healthy...
minimum_healthy_percent = 100
# ...and at most this share runs.
maximum_percent = 200

[queue]
# The queue the app consumes, and its dead-letter queue.
name = "{app}"
visibility_timeout = "300s"
dlq = "{app}-dlq"
# A message goes to the DLQ after this many receives.
max_receive_count = 1
dlq_retention = "60m"
{queue_endpoint}
# The embedded queue's port.
port = 9324
region = "us-east-1"

[services.primary]
tasks = 3

[services.canary]
# The canary takes the new revision first, and a small share of the messages.
tasks = 1

[server]
# The control plane's HTTP API and dashboard.
port = 7070
bind = "127.0.0.1"

{runtime}

# The release steps, in order. Other steps:
#   pause = "30s"
#   scale = "canary"  tasks = 2
#   analysis = "2m"  promote = "auto"   (passing verdicts for 2m approve by themselves)
[[steps]]
deploy = "canary"
timeout = "10m"

[[steps]]
approval = "manual"
timeout = "7d"

[[steps]]
deploy = "primary"
timeout = "15m"

# Alarms, watched from the canary deploy until the primary deploy ends.
# Any of them firing rolls the canary back.

# The guidance's alarm, off by default: the DLQ's depth, maximum over `period`, above
# `threshold` (counting only the dead letters the canary's revision produced). In absolute
# numbers it trips on a healthy canary at a steady rate of 1 % failures; `failure-ratio`
# judges the same failures against the primary's. To have it anyway:
# [[alarms]]
# kind = "dlq-depth"
# threshold = 10
# period = "300s"

# The canary's failure ratio significantly above the primary's at `confidence`
# (a sequential two-proportion test that stays valid however often it is checked),
# once the canary has completed `min_sample` messages; or `consecutive_failures`
# failures in a row with no success, at once.
[[alarms]]
kind = "failure-ratio"
min_sample = 20
confidence = 0.99
consecutive_failures = 3

# Canary task exits.
[[alarms]]
kind = "crashes"
threshold = 1

# The canary's processing time at `percentile` above `factor` x the primary's.
[[alarms]]
kind = "latency"
percentile = 95
factor = 2.0
min_sample = 20

# A canary message in flight longer than `factor` x the primary's p95, and at least `min_ms`.
[[alarms]]
kind = "hung"
factor = 10
min_ms = 30000
"#;
