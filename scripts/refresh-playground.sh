#!/usr/bin/env bash
# Refreshes the GraphiQL playground bundled into the binary (src/playground.rs):
# fetches the pinned graphiql, react and react-dom packages with npm, copies
# their browser bundles and licences into assets/playground/, and writes the
# licences of every package the graphiql bundle may contain beside them.
#
# To upgrade, change a version below, run this script, start the server, open
# /graphql, and run scripts/test-clients.sh (it drives the playground in
# headless Chromium). graphiql 3.x is the last line that ships a standalone
# (UMD) bundle next to its ES modules.
set -euo pipefail

GRAPHIQL_VERSION=3.9.0
REACT_VERSION=18.3.1

root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/assets/playground"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

command -v npm >/dev/null || { echo "refresh-playground: npm is missing (apt-get install -y npm)" >&2; exit 1; }

cat >"$work/package.json" <<JSON
{
  "name": "tagbase-playground-refresh",
  "private": true,
  "dependencies": {
    "graphiql": "$GRAPHIQL_VERSION",
    "react": "$REACT_VERSION",
    "react-dom": "$REACT_VERSION"
  }
}
JSON
(cd "$work" && npm install --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error)

nm="$work/node_modules"
mkdir -p "$out"
cp "$nm/graphiql/graphiql.min.js" "$nm/graphiql/graphiql.min.css" "$out/"
cp "$nm/react/umd/react.production.min.js" "$out/"
cp "$nm/react-dom/umd/react-dom.production.min.js" "$out/"
# The bundle's last line names a source map that is not shipped; drop it so
# that browsers with developer tools open do not ask the server for it.
sed -i '/^\/\/# sourceMappingURL=/d' "$out/graphiql.min.js"
cp "$nm/graphiql/LICENSE" "$out/LICENSE.graphiql"
cp "$nm/react/LICENSE" "$out/LICENSE.react"
cp "$nm/react-dom/LICENSE" "$out/LICENSE.react-dom"

# Every package installed beside graphiql (its dependencies, which the
# standalone bundle includes, except react and react-dom that it loads from
# the two files above), with its licence text.
node - "$nm" >"$out/THIRD-PARTY-LICENSES.txt" <<'JS'
const fs = require('fs');
const path = require('path');
const nm = process.argv[2];
const dirs = [];
for (const entry of fs.readdirSync(nm)) {
  if (entry.startsWith('.')) continue;
  if (entry.startsWith('@')) {
    for (const sub of fs.readdirSync(path.join(nm, entry))) dirs.push(path.join(nm, entry, sub));
  } else {
    dirs.push(path.join(nm, entry));
  }
}
const lines = [
  'Licences of the packages of the tagbase playground (graphiql and its dependencies,',
  'react, react-dom), written by scripts/refresh-playground.sh.',
  '',
];
for (const dir of dirs.sort()) {
  const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
  const licenceFile = fs.readdirSync(dir).find((f) => /^(licen[cs]e|copying)(\.|$)/i.test(f));
  lines.push('='.repeat(78), `${pkg.name}@${pkg.version} (${pkg.license || 'see below'})`, '='.repeat(78));
  lines.push(licenceFile ? fs.readFileSync(path.join(dir, licenceFile), 'utf8').trim() : '(no licence file in the package)', '');
}
process.stdout.write(lines.join('\n'));
JS

printf 'graphiql %s\nreact %s\nreact-dom %s\n' "$GRAPHIQL_VERSION" "$REACT_VERSION" "$REACT_VERSION" >"$out/VERSIONS"
echo "refresh-playground: graphiql $GRAPHIQL_VERSION, react $REACT_VERSION in $out"
