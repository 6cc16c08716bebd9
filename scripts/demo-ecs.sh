#!/usr/bin/env bash
# The release story on ECS, without an AWS account: `coalmine init --aws`, `coalmine synth aws`,
# the stack created on moto's server (CloudFormation, ECS, SQS, ECR, IAM, CloudWatch Logs), then
# `coalmine up` with [runtime] kind = "ecs": a first release, a good one approved, and one whose
# app exits at start, rolled back; then its logs from CloudWatch Logs.
#
# What is not real here: moto's ECS models no rollout, so deployments, tasks and the circuit
# breaker come from coalmine's stand-in (tests/python/ecs_standin.py). No container runs: a
# "task" is a record that starts RUNNING, or stops at once with the exit code a revision sets in
# STANDIN_EXIT_CODE; its log lines are the stand-in's. `docker` and `aws` in the buildspec are
# stubs that do nothing. So no proxy reports and the canary is judged on no messages: the
# proxy's judgement on SQS is shown by the tests (canary_sqs.rs).
#
# usage: scripts/demo-ecs.sh [--keep]    (--keep: leave the scratch folder)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
keep=${1:-}

if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then bold=$'\033[1m'; off=$'\033[0m'; else bold=; off=; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$off"; }

step "build coalmine and the Python environment (moto)"
cargo build --release -q -p coalmine
bin=$root/target/release/coalmine
[ -x target/pyenv/aws/bin/python ] || ./scripts/pyenv.sh
py=$root/target/pyenv/aws/bin/python

work=$(mktemp -d "${TMPDIR:-/tmp}/coalmine-ecs-demo.XXXXXX")
app=$work/sample-app
mkdir -p "$app" "$work/bin"
up_pid=
cleanup() {
  [ -n "$up_pid" ] && kill "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null || true
  [ -n "${MOTO_PID:-}" ] && kill "$MOTO_PID" 2>/dev/null || true
  [ "$keep" = "--keep" ] && echo "scratch folder kept: $work" || rm -rf "$work"
}
trap cleanup EXIT

step "moto's server with the ECS stand-in"
coproc MOTO { exec "$py" tests/python/moto_server.py 0 --ecs-rollouts 2>"$work/moto.log"; }
read -r line <&"${MOTO[0]}"
endpoint=${line#listening on }
echo "moto listens on $endpoint"
export AWS_ENDPOINT_URL=$endpoint AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export AWS_CONFIG_FILE=$work/none AWS_SHARED_CREDENTIALS_FILE=$work/none NO_COLOR=${NO_COLOR:-}
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL_SQS

step "coalmine init --aws; coalmine synth aws; the stack on moto"
cd "$app"
"$bin" init --aws
"$bin" synth aws --output stack.yml 2>/dev/null
"$py" "$root/tests/python/synth_stack.py" stack.yml sample-app --keep >"$work/stack.json"
"$py" - "$work/stack.json" <<'EOF'
import json, sys
stack = json.load(open(sys.argv[1]))
print("stack", stack["status"] + ":", ", ".join(f"{k}={v}" for k, v in sorted(stack["outputs"].items())))
EOF
# Point coalmine at moto: the runtime's and the queue's endpoints.
sed -i "s|^kind = \"ecs\"$|kind = \"ecs\"\nendpoint = \"$endpoint\"|; s|^endpoint = \"https://sqs\..*\"$|endpoint = \"$endpoint\"|" coalmine.toml
printf '#!/usr/bin/env bash\nif [ "$1" = sts ]; then echo 123456789012; else echo token; fi\n' >"$work/bin/aws"
printf '#!/usr/bin/env bash\nif [ "$1" = login ]; then cat >/dev/null; fi\n' >"$work/bin/docker"
chmod +x "$work/bin/aws" "$work/bin/docker"
export PATH=$work/bin:$PATH
printf '.coalmine/\nstack.yml\n' >.gitignore
git init -q -b main && git add -A && git -c user.name=demo -c user.email=demo@example.com commit -qm "first release"

status() { "$bin" status --output json 2>/dev/null || echo null; }
wait_for() { # wait_for WHAT PYTHON-EXPRESSION-OVER-v
  local what=$1 expr=$2 deadline=$((SECONDS + 300))
  printf 'waiting for %s ' "$what"
  until status | "$py" -c "import json,sys; v=json.load(sys.stdin); sys.exit(0 if v and ($expr) else 1)" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { echo; echo "timed out; coalmine up's log:"; tail -40 "$work/up.log"; exit 1; }
    printf '.'; sleep 1
  done
  echo " done"
}
commit() { git -c user.name=demo -c user.email=demo@example.com commit -qam "$1"; git rev-parse --short=12 HEAD; }

step "coalmine up (runtime: ECS on moto)"
"$bin" up >"$work/up.log" 2>&1 &
up_pid=$!
rev1=$(git rev-parse --short=12 HEAD)
wait_for "the first release ($rev1) on both services" "v['execution']['revision'] == '$rev1' and v['execution']['status'] == 'Succeeded'"
"$bin" status

step "a good release: canary, approval, primary"
echo v2 >CHANGES && git add CHANGES
rev2=$(commit "v2")
wait_for "the canary of $rev2 and the approval" "v['execution']['revision'] == '$rev2' and any(s['name'] == 'Approval' and s['status'] == 'InProgress' for s in v['execution']['stages'])"
"$bin" approve -m "canary looks right"
wait_for "$rev2 on both services" "v['execution']['revision'] == '$rev2' and v['execution']['status'] == 'Succeeded'"

step "a release whose app exits at start"
sed -i 's|^env = {}$|env = { STANDIN_EXIT_CODE = "1" }|' coalmine.toml
rev3=$(commit "exits at start")
wait_for "$rev3 to end" "v['execution']['revision'] == '$rev3' and v['execution']['status'] not in ('InProgress', None)"
"$bin" history -n 3
step "the rolled-back canary's logs (CloudWatch Logs)"
"$bin" logs canary --previous
step "what ran on ECS"
"$bin" status
