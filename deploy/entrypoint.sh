#!/bin/sh
# Raise the open-files soft limit to the hard limit: every signal connection is one descriptor,
# and many runtimes start containers with a soft limit of 1024. Then become pingpull (PID 1 gets
# SIGTERM directly, so the gateway's drain runs).
set -eu
hard="$(ulimit -Hn)"
ulimit -Sn "$hard" 2>/dev/null || true
exec pingpull "$@"
