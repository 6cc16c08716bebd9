#!/usr/bin/env bash
# Ignores SIGTERM (the disposition survives exec), so only SIGKILL stops it.
trap '' TERM
echo "ignoring SIGTERM"
exec sleep 100000
