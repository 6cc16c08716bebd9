#!/usr/bin/env bash
# Exits with status 3 after $CRASH_AFTER_MS milliseconds (default: at once).
ms=${CRASH_AFTER_MS:-0}
if (( ms > 0 )); then sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"; fi
echo "crashing"
exit 3
