#!/usr/bin/env bash
# Sign-in through a real, OpenID-certified provider run locally.
#
# Starts oidc-provider (tests/oidc, exact versions from its lock file) on a
# free loopback port, starts tagbase (debug build) with TAGBASE_OIDC_ISSUER
# pointing at it and development tokens off, signs the demo salesperson
# `sz01.sales` in at the provider through the authorization code flow
# (PKCE, the provider's own login and consent pages driven over HTTP), and
# checks with the resulting RS256 JWT access token that tagbase
# - answers `me` as sz01.sales signed in through OIDC,
# - shows sz01's customers and nobody else's,
# - exchanges the token for a tagbase session (POST /auth/oidc) that works,
# - refuses a development token, a token with a broken signature, and no token.
#
# Database: DATABASE_URL if set (e.g. a PostgreSQL database), else a fresh
# SQLite file. Exits non-zero on any failure; never skips.
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
cargo build -q
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

export DATABASE_URL="${DATABASE_URL:-sqlite://$work/tagbase.db?mode=rwc}"
export TAGBASE_LOG="${TAGBASE_LOG:-warn}"
export TAGBASE_JWT_SECRET="test-oidc-secret-test-oidc-secret-0123"
"$bin" seed-demo >/dev/null 2>&1 || fail "seed-demo failed"
dev_token="$("$bin" token --login sz01.sales --ttl 10m)"

tb_port="$(free_port)"
tagbase="http://127.0.0.1:$tb_port"
TAGBASE_OIDC_ISSUER="$issuer" TAGBASE_OIDC_AUDIENCE=tagbase-api TAGBASE_DEV_TOKENS=false \
  "$bin" serve --listen "127.0.0.1:$tb_port" >"$work/tagbase.log" 2>&1 &
pids+=($!)
wait_for "$tagbase/healthz" || { cat "$work/tagbase.log" >&2; fail "tagbase did not start"; }

token="$(node tests/oidc/get-token.mjs "$issuer" sz01.sales)" || fail "no token from the provider"

query='{"query":"{ me { staff { login } signIn { method sessionId } } customers(first: 100) { totalCount edges { node { orgUnit { code } } } } }"}'
gql() { # gql <bearer or empty> -> prints "<status> <body>"
  local auth=()
  [ -n "$1" ] && auth=(-H "Authorization: Bearer $1")
  curl -sS -o "$work/body" -w '%{http_code}' -H 'content-type: application/json' "${auth[@]}" \
    --data "$query" "$tagbase/graphql"
}

check_customers() { # check_customers <label> <expected method>
  node -e '
    const [label, method] = process.argv.slice(1);
    const body = JSON.parse(require("fs").readFileSync(process.argv[3], "utf8"));
    const fail = (m) => { console.error(`test-oidc: FAIL: ${label}: ${m}\n${JSON.stringify(body)}`); process.exit(1); };
    if (body.errors) fail("errors in the response");
    const { me, customers } = body.data;
    if (me.staff.login !== "sz01.sales") fail(`signed in as ${me.staff.login}`);
    if (me.signIn.method !== method) fail(`sign-in method ${me.signIn.method}, expected ${method}`);
    const units = new Set(customers.edges.map((e) => e.node.orgUnit.code));
    if (customers.totalCount === 0) fail("no customers");
    if (units.size !== 1 || !units.has("sz01")) fail(`customers of ${[...units]}`);
    console.log(`test-oidc: ${label}: sz01.sales sees ${customers.totalCount} customers, all of sz01`);
  ' "$1" "$2" "$work/body"
}

status="$(gql "$token")"
[ "$status" = 200 ] || { cat "$work/body" >&2; fail "provider token refused ($status)"; }
check_customers "provider access token" OIDC

session="$(curl -sS -H 'content-type: application/json' --data "{\"token\":\"$token\"}" "$tagbase/auth/oidc")"
access="$(node -e 'const b=JSON.parse(process.argv[1]); if(!b.accessToken){console.error(process.argv[1]);process.exit(1)} console.log(b.accessToken)' "$session")" \
  || fail "POST /auth/oidc gave no session"
status="$(gql "$access")"
[ "$status" = 200 ] || { cat "$work/body" >&2; fail "session token refused ($status)"; }
check_customers "tagbase session from the provider token" OIDC

# Flip one character in the middle of the signature.
broken="$(node -e 'const [h,p,s]=process.argv[1].split("."); const i=Math.floor(s.length/2); console.log([h,p,s.slice(0,i)+(s[i]==="A"?"B":"A")+s.slice(i+1)].join("."))' "$token")"
for case in "development token:$dev_token" "broken signature:$broken" "no token:"; do
  label="${case%%:*}"; bearer="${case#*:}"
  status="$(gql "$bearer")"
  [ "$status" = 401 ] || { cat "$work/body" >&2; fail "$label: expected 401, got $status"; }
  grep -q '"UNAUTHENTICATED"' "$work/body" || fail "$label: no UNAUTHENTICATED code"
  echo "test-oidc: $label refused (401 UNAUTHENTICATED)"
done
echo "test-oidc: OK"
