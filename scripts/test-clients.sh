#!/usr/bin/env bash
# The client tests (clients/): tagbase driven by widely used JavaScript
# GraphQL clients and by headless Chromium, against the real server, first
# on a fresh SQLite database, then on a fresh PostgreSQL database (created
# here and dropped afterwards).
#
# Installs what is missing (Node.js and npm, Chromium, curl, the PostgreSQL
# client) with apt-get, and fails, never skips, when something cannot be had.
#
#   scripts/test-clients.sh              both databases
#   scripts/test-clients.sh sqlite       one of them (sqlite | postgres)
#
# TAGBASE_TEST_POSTGRES_URL: any existing database on the PostgreSQL server
# (default postgres://postgres@127.0.0.1:5432/postgres); the test database
# is created beside it. TAGBASE_TEST_SCREENSHOTS: a folder for a screenshot
# of the playground.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

die() {
  echo "test-clients: $*" >&2
  exit 1
}

apt_updated=
apt_install() {
  command -v apt-get >/dev/null || die "$* missing and no apt-get to install it"
  if [ -z "$apt_updated" ]; then
    apt-get update -q || die "apt-get update failed"
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" || die "apt-get install $* failed"
}

# --- tools ------------------------------------------------------------------
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 18 ] || die "Node.js 18 or newer is needed, found $(node --version)"
command -v curl >/dev/null || apt_install curl
chromium="${TAGBASE_TEST_CHROMIUM:-/usr/bin/chromium}"
[ -x "$chromium" ] || apt_install chromium
[ -x "$chromium" ] || die "no Chromium at $chromium"
command -v psql >/dev/null || apt_install postgresql-client

legs=("${@:-sqlite postgres}")
read -r -a legs <<<"${legs[*]}"
for leg in "${legs[@]}"; do
  case "$leg" in sqlite | postgres) ;; *) die "unknown database '$leg' (sqlite | postgres)" ;; esac
done

step=$SECONDS
(cd clients && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed in clients/"
echo "test-clients: npm ci took $((SECONDS - step)) s"
step=$SECONDS
# The server binary as `cargo test` builds it (dev-dependencies unify some
# crates' features, so a plain `cargo build` would rebuild ~100 crates after
# the test run). After `cargo test` this is a no-op.
cargo test --no-run -q || die "cargo build failed"
echo "test-clients: cargo build took $((SECONDS - step)) s"
bin="${CARGO_TARGET_DIR:-$root/target}/debug/tagbase"
[ -x "$bin" ] || die "no server binary at $bin"

# --- one run against one database ------------------------------------------
work="$(mktemp -d)"
server_pid=
pg_admin_url="${TAGBASE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
pg_database=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ -n "$pg_database" ]; then
    psql -q -X "$pg_admin_url" -c "DROP DATABASE IF EXISTS \"$pg_database\" WITH (FORCE)" >/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'
}

run_leg() {
  local leg="$1" database_url
  case "$leg" in
    sqlite) database_url="sqlite://$work/clients.db?mode=rwc" ;;
    postgres)
      pg_database="tagbase_clients_$$_$RANDOM"
      psql -q -X -v ON_ERROR_STOP=1 "$pg_admin_url" -c "CREATE DATABASE \"$pg_database\"" >/dev/null ||
        die "cannot create a database on $pg_admin_url (is PostgreSQL running?)"
      database_url="${pg_admin_url%/*}/$pg_database"
      ;;
  esac

  local api_port origin_port log="$work/server-$leg.log"
  api_port="$(free_port)"
  origin_port="$(free_port)"
  local api="http://127.0.0.1:$api_port" origin="http://localhost:$origin_port"
  echo "test-clients: $leg: starting the server on $api (CORS origin $origin)"
  local started=$SECONDS
  DATABASE_URL="$database_url" TAGBASE_CORS_ORIGINS="$origin" TAGBASE_LOG="${TAGBASE_LOG:-warn}" \
    "$bin" serve --listen "127.0.0.1:$api_port" --demo >"$log" 2>&1 &
  server_pid=$!

  # Migration, the demo data and the segment index, then /readyz answers 200.
  local deadline=$((SECONDS + ${TAGBASE_TEST_READY_SECONDS:-300}))
  until curl -fsS -o /dev/null "$api/readyz" 2>/dev/null; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      cat "$log" >&2
      die "$leg: the server exited before it was ready"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 50 "$log" >&2
      die "$leg: the server was not ready within ${TAGBASE_TEST_READY_SECONDS:-300} s"
    fi
    sleep 0.5
  done
  echo "test-clients: $leg: ready after $((SECONDS - started)) s"

  local admin sales
  admin="$(DATABASE_URL="$database_url" "$bin" token --login admin)" || die "$leg: no token for admin"
  sales="$(DATABASE_URL="$database_url" "$bin" token --login sz01.sales)" || die "$leg: no token for sz01.sales"

  local status=0
  (cd clients && TAGBASE_URL="$api" TAGBASE_TOKEN_ADMIN="$admin" TAGBASE_TOKEN_SALES="$sales" \
    TAGBASE_TEST_ALLOWED_ORIGIN="$origin" TAGBASE_TEST_CHROMIUM="$chromium" \
    timeout --kill-after=10 "${TAGBASE_TEST_NODE_SECONDS:-900}" node --test --test-reporter=spec test/*.test.js) ||
    status=$?

  kill "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  server_pid=
  if [ -n "$pg_database" ]; then
    psql -q -X "$pg_admin_url" -c "DROP DATABASE IF EXISTS \"$pg_database\" WITH (FORCE)" >/dev/null ||
      die "$leg: cannot drop $pg_database"
    pg_database=
  fi
  if [ "$status" -ne 0 ]; then
    echo "test-clients: $leg: the last lines of the server's log:" >&2
    tail -n 30 "$log" >&2
    echo "test-clients: $leg: FAILED after $((SECONDS - started)) s" >&2
    return 1
  fi
  echo "test-clients: $leg: passed in $((SECONDS - started)) s"
}

# Every database gets its run; any failure fails the script.
failed=()
for leg in "${legs[@]}"; do
  run_leg "$leg" || failed+=("$leg")
done
[ "${#failed[@]}" -eq 0 ] || die "client tests failed on: ${failed[*]}"
echo "test-clients: all passed (${legs[*]}) in $SECONDS s"
