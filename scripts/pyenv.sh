#!/usr/bin/env bash
# Creates the Python virtual environments the client tests use (idempotent):
#   target/pyenv/current  boto3 + AWS CLI of today (the JSON protocol)
#   target/pyenv/legacy   boto3 from before SQS moved to JSON (the query protocol)
# The tests create them too when missing; CI calls this first so failures are plain.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test -p coalmine --test queue_clients -- --exact ensure_python_envs
