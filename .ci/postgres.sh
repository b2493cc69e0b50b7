#!/usr/bin/env bash
# Install (from Debian's packages) and start a throwaway PostgreSQL for the
# multi-worker tests, then print its URL. Idempotent: a running cluster is reused.
set -euo pipefail

DATA=${MERGEOPT_PG_DIR:-/tmp/mergeopt-pg}
PORT=${MERGEOPT_PG_PORT:-55432}
PASSWORD=${MERGEOPT_PG_PASSWORD:-ci-s3cret-pw}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    as_root apt-get update -q >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi

# PostgreSQL refuses to run as root: run its tools as the postgres user then.
if [ "$(id -u)" = 0 ]; then
    pg() { runuser -u postgres -- "$@"; }
else
    pg() { "$@"; }
fi

if ! pg "$bin/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
    if [ ! -f "$DATA/PG_VERSION" ]; then
        mkdir -p "$DATA"
        [ "$(id -u)" = 0 ] && chown postgres "$DATA"
        pwfile=$(mktemp)
        printf '%s\n' "$PASSWORD" >"$pwfile"
        chmod 644 "$pwfile"
        pg "$bin/initdb" -D "$DATA" -U postgres --auth-local=trust \
            --auth-host=scram-sha-256 --pwfile="$pwfile" >&2
        rm -f "$pwfile"
    fi
    pg "$bin/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w \
        -o "-p $PORT -k $DATA -c listen_addresses=127.0.0.1 -c max_connections=200" start >&2
fi
echo "postgresql://postgres:$PASSWORD@127.0.0.1:$PORT/postgres"
