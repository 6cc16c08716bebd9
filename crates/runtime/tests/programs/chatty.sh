#!/usr/bin/env bash
# Prints $LINES_TO_PRINT numbered lines, then idles.
for ((i = 1; i <= ${LINES_TO_PRINT:-10}; i++)); do
  echo "line $i of $COALMINE_TASK padding-padding-padding-padding-padding-padding-padding"
done
exec sleep 100000
