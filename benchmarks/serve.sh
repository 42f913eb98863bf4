#!/bin/sh
# Run this checkout's server in the foreground on 127.0.0.1:PORT for the
# benchmarks: the checkout's code and static/ (not an installed copy), and the
# per-connection, per-address and global connection limits lifted, since every
# load client comes from one address and the saturation scenarios send as fast
# as they can (compare.py lifts the open-file limit to the hard one).
#
# usage: benchmarks/serve.sh PORT [extra server options]
# TWIST_OPTIONS (e.g. "--log-level debug") go to the twist runner itself; to
# log chat starts, give the server "--log-level debug" as well.
set -e
cd "$(dirname "$0")/.."
port="$1"; shift
PYTHON="${PYTHON:-.venv/bin/python}"
# shellcheck disable=SC2086
exec "$PYTHON" -m twisted ${TWIST_OPTIONS:-} chatroulette \
    --listen "tcp:${port}:interface=127.0.0.1:backlog=4096" \
    --message-rate 0 --request-rate 0 --frame-rate 0 --max-handshake-rate 0 --max-connections-per-ip 0 \
    --max-connections 0 \
    "$@"
