#!/usr/bin/env bash
# Sign-in through a real, OpenID-certified provider run locally.
#
# Starts oidc-provider (tests/oidc, exact versions from its lock file) on a
# free loopback port, starts tagbase (debug build) with TAGBASE_OIDC_ISSUER
# pointing at it and development tokens off, signs the demo salesperson
# `sz01.sales` in at the provider through the authorization code flow
# (PKCE, the provider's own login and consent pages driven over HTTP), and
# checks with the resulting RS256 JWT access tokens that tagbase
# - answers `me` as sz01.sales signed in through OIDC and shows sz01's
#   customers only, also through a tagbase session (POST /auth/oidc);
# - refuses a development token, a token with a broken signature, no token;
# - plays the staff scenario on two tagbase instances sharing a database:
#   the south region's manager (signed in through the provider) adds a
#   salesperson to sz01, who signs in and sees sz01's customers; moved to
#   gz01, sees gz01's; deactivated, is refused on both instances while the
#   history stays.
#
# Runs on a fresh SQLite file and on a fresh PostgreSQL database (server:
# TAGBASE_TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres;
# created with psql and dropped afterwards). Exits non-zero on any failure;
# never skips.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

fail() { echo "test-oidc: FAIL: $*" >&2; exit 1; }

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "test-oidc: installing Node.js (apt)" >&2
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || fail "Node.js >= 20 is needed (found $(node --version))"

(cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
# The server binary as `cargo test` builds it (a no-op after `cargo test`;
# a plain `cargo build` would rebuild the crates whose features differ).
cargo test --no-run -q
bin="$root/target/debug/tagbase"

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

# Waits up to 60 s for a URL to answer 200.
wait_for() {
  for _ in $(seq 1 120); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  return 1
}

op_port="$(free_port)"
issuer="http://127.0.0.1:$op_port"
node tests/oidc/provider.mjs "$op_port" >"$work/provider.log" 2>&1 &
pids+=($!)
wait_for "$issuer/.well-known/openid-configuration" || { cat "$work/provider.log" >&2; fail "oidc-provider did not start"; }

export TAGBASE_LOG="${TAGBASE_LOG:-warn}"
export TAGBASE_JWT_SECRET="test-oidc-secret-test-oidc-secret-0123"
pg_server="${TAGBASE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
pg_db=""
drop_pg() { [ -n "$pg_db" ] && psql -q "$pg_server" -c "DROP DATABASE IF EXISTS \"$pg_db\" WITH (FORCE)" >/dev/null 2>&1 || true; }
trap 'cleanup; drop_pg' EXIT

start_tagbase() { # start_tagbase <port>
  TAGBASE_OIDC_ISSUER="$issuer" TAGBASE_OIDC_AUDIENCE=tagbase-api TAGBASE_DEV_TOKENS=false \
    "$bin" serve --listen "127.0.0.1:$1" >>"$work/tagbase.log" 2>&1 &
  pids+=($!)
  wait_for "http://127.0.0.1:$1/healthz" || { cat "$work/tagbase.log" >&2; fail "tagbase did not start"; }
}

post_gql() { # post_gql <base> <bearer or empty> <json body> -> status; body in $work/body
  local auth=()
  [ -n "$2" ] && auth=(-H "Authorization: Bearer $2")
  curl -sS -o "$work/body" -w '%{http_code}' -H 'content-type: application/json' "${auth[@]}" --data "$3" "$1/graphql"
}

# js <expression over `b` (the last response body)> -> prints the value; fails on a falsy one
js() {
  node -e '
    const b = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    const v = eval(process.argv[2]);
    if (v === undefined || v === null || v === false) { console.error(`test-oidc: FAIL: ${process.argv[2]}\n${JSON.stringify(b)}`); process.exit(1); }
    console.log(typeof v === "string" ? v : JSON.stringify(v));
  ' "$work/body" "$1"
}

customers='{"query":"{ me { staff { login } signIn { method } } customers(first: 100) { totalCount edges { node { orgUnit { code } } } } }"}'
only_store='(s => b.data.customers.totalCount > 0 && b.data.customers.edges.every(e => e.node.orgUnit.code === s))'

run_on() { # run_on <label> <database url>
  local label="$1"
  export DATABASE_URL="$2"
  "$bin" seed-demo >/dev/null 2>&1 || fail "$label: seed-demo failed"
  local dev_token
  dev_token="$("$bin" token --login sz01.sales --ttl 10m)"
  local p1 p2
  p1="$(free_port)"; start_tagbase "$p1"
  p2="$(free_port)"; start_tagbase "$p2"
  local a="http://127.0.0.1:$p1" b="http://127.0.0.1:$p2"

  local token
  token="$(node tests/oidc/get-token.mjs "$issuer" sz01.sales)" || fail "$label: no token from the provider"
  [ "$(post_gql "$a" "$token" "$customers")" = 200 ] || { cat "$work/body" >&2; fail "$label: provider token refused"; }
  js 'b.data.me.staff.login === "sz01.sales" && b.data.me.signIn.method === "OIDC"' >/dev/null
  js "$only_store(\"sz01\")" >/dev/null
  echo "test-oidc: $label: provider token: sz01.sales sees $(js 'b.data.customers.totalCount') customers, all of sz01"

  local session access
  session="$(curl -sS -H 'content-type: application/json' --data "{\"token\":\"$token\"}" "$a/auth/oidc")"
  access="$(node -e 'const b=JSON.parse(process.argv[1]); if(!b.accessToken){console.error(process.argv[1]);process.exit(1)} console.log(b.accessToken)' "$session")" \
    || fail "$label: POST /auth/oidc gave no session"
  [ "$(post_gql "$b" "$access" "$customers")" = 200 ] || { cat "$work/body" >&2; fail "$label: session token refused"; }
  js "$only_store(\"sz01\")" >/dev/null
  echo "test-oidc: $label: tagbase session opened with the provider token works on the other instance"

  local broken
  # Flip one character in the middle of the signature.
  broken="$(node -e 'const [h,p,s]=process.argv[1].split("."); const i=Math.floor(s.length/2); console.log([h,p,s.slice(0,i)+(s[i]==="A"?"B":"A")+s.slice(i+1)].join("."))' "$token")"
  for case in "development token:$dev_token" "broken signature:$broken" "no token:"; do
    local what="${case%%:*}" bearer="${case#*:}"
    [ "$(post_gql "$a" "$bearer" "$customers")" = 401 ] || { cat "$work/body" >&2; fail "$label: $what: expected 401"; }
    js 'b.errors[0].extensions.code === "UNAUTHENTICATED"' >/dev/null
    echo "test-oidc: $label: $what refused (401 UNAUTHENTICATED)"
  done

  # The staff scenario, every step signed in through the provider.
  local manager sz01 gz01 newhire id
  manager="$(node tests/oidc/get-token.mjs "$issuer" south.manager)" || fail "$label: no token for south.manager"
  post_gql "$a" "$manager" '{"query":"{ orgUnits { id code } }"}' >/dev/null
  sz01="$(js 'b.data.orgUnits.find(u => u.code === "sz01").id')"
  gz01="$(js 'b.data.orgUnits.find(u => u.code === "gz01").id')"
  post_gql "$a" "$manager" "{\"query\":\"mutation(\$u: ID!) { createStaff(input: { login: \\\"sz01.newhire\\\", displayName: \\\"南山销售-新人\\\", homeOrgUnitId: \$u }) { staff { id } } }\",\"variables\":{\"u\":\"$sz01\"}}" >/dev/null
  id="$(js 'b.data.createStaff.staff.id')"
  post_gql "$a" "$manager" "{\"query\":\"mutation(\$s: ID!, \$u: ID!) { assignRole(input: { staffId: \$s, role: \\\"sales\\\", orgUnitId: \$u }) { changed } }\",\"variables\":{\"s\":\"$id\",\"u\":\"$sz01\"}}" >/dev/null
  js 'b.data.assignRole.changed' >/dev/null
  newhire="$(node tests/oidc/get-token.mjs "$issuer" sz01.newhire)" || fail "$label: no token for sz01.newhire"
  post_gql "$b" "$newhire" "$customers" >/dev/null
  js "$only_store(\"sz01\")" >/dev/null
  echo "test-oidc: $label: the region manager added sz01.newhire, who signs in and sees sz01's customers"

  post_gql "$a" "$manager" "{\"query\":\"mutation(\$id: ID!, \$u: ID!) { updateStaff(input: { id: \$id, homeOrgUnitId: \$u }) { staff { homeOrgUnit { code } } } }\",\"variables\":{\"id\":\"$id\",\"u\":\"$gz01\"}}" >/dev/null
  js 'b.data.updateStaff.staff.homeOrgUnit.code === "gz01"' >/dev/null
  for instance in "$a" "$b"; do
    post_gql "$instance" "$newhire" "$customers" >/dev/null
    js "$only_store(\"gz01\")" >/dev/null
  done
  echo "test-oidc: $label: moved to gz01, sees gz01's customers on both instances"

  post_gql "$a" "$manager" "{\"query\":\"mutation(\$id: ID!) { deactivateStaff(input: { id: \$id }) { staff { active } } }\",\"variables\":{\"id\":\"$id\"}}" >/dev/null
  js 'b.data.deactivateStaff.staff.active === false' >/dev/null
  for instance in "$a" "$b"; do
    [ "$(post_gql "$instance" "$newhire" "$customers")" = 401 ] || { cat "$work/body" >&2; fail "$label: a deactivated member was served"; }
  done
  post_gql "$a" "$manager" "{\"query\":\"query(\$id: ID!) { staffMember(id: \$id) { login active } }\",\"variables\":{\"id\":\"$id\"}}" >/dev/null
  js 'b.data.staffMember.login === "sz01.newhire" && b.data.staffMember.active === false' >/dev/null
  echo "test-oidc: $label: deactivated, refused on both instances; the member and its history stay"

  for pid in "${pids[@]:1}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  pids=("${pids[0]}")
}

run_on sqlite "sqlite://$work/tagbase.db?mode=rwc"
pg_db="tagbase_oidc_$$_$RANDOM"
psql -q "$pg_server" -c "CREATE DATABASE \"$pg_db\"" >/dev/null || fail "cannot create a PostgreSQL database on $pg_server"
run_on postgres "${pg_server%/*}/$pg_db"
echo "test-oidc: OK"
