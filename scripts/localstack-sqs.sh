#!/usr/bin/env bash
# The canary story on SQS (crates/cli/tests/canary_sqs.rs) against LocalStack instead of moto.
# Optional and not part of CI: needs docker and the localstack/localstack image.
#   scripts/localstack-sqs.sh            # starts a fresh LocalStack on a free port, runs, removes it
# The two failure styles run one after the other: they share the app's telemetry queue.
set -euo pipefail
cd "$(dirname "$0")/.."
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
name="coalmine-localstack-$$"
docker run -d --rm --name "$name" -p "127.0.0.1:$port:4566" -e SERVICES=sqs localstack/localstack >/dev/null
trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$port/_localstack/health" | grep -q '"sqs": "\(available\|running\)"' && break
  sleep 1
done
COALMINE_TEST_SQS_ENDPOINT="http://127.0.0.1:$port" cargo test -p coalmine --test canary_sqs -- --include-ignored --test-threads=1 --nocapture
