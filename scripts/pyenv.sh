#!/usr/bin/env bash
# Creates the Python virtual environments the tests use (idempotent):
#   target/pyenv/current  boto3 + AWS CLI of today (the JSON protocol)
#   target/pyenv/legacy   boto3 from before SQS moved to JSON (the query protocol)
#   target/pyenv/aws      moto's server (local AWS APIs) + cfn-lint, for the AWS-facing tests
# The tests create them too when missing; CI calls this first so failures are plain.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test -p coalmine --test queue_clients -- --include-ignored --exact ensure_python_envs
cargo test -p coalmine --test aws_env -- --include-ignored --exact ensure_aws_env
