#!/usr/bin/env bash
# Writes its environment, working directory and process group to $ENV_OUT/$COALMINE_TASK.env,
# then idles until stopped.
set -eu
out="$ENV_OUT/$COALMINE_TASK.env"
{ env; echo "PWD_ACTUAL=$(pwd -P)"; echo "PID=$$"; } > "$out.tmp"
mv "$out.tmp" "$out"
echo "hello from $COALMINE_TASK"
exec sleep 100000
