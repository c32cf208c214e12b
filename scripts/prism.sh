#!/usr/bin/env bash
# Run Stoplight Prism as a validating mock of a provider's OpenAPI file, on loopback only.
#
#   scripts/prism.sh PORT SPEC [extra prism mock options]
#
# Prism is installed with npm into .cache/prism/ (a scratch folder, not committed) on first use; later
# runs reuse it. PRISM_DIR overrides the folder. The script execs Prism, so killing the process started
# for this script stops the mock.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 PORT SPEC [prism mock options]" >&2
  exit 2
fi
port=$1
spec=$2
shift 2

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${PRISM_DIR:-"$root/.cache/prism"}
bin="$dir/node_modules/.bin/prism"

command -v npm >/dev/null || { echo "npm is not installed" >&2; exit 3; }
mkdir -p "$dir"
if [[ ! -x "$bin" ]]; then
  # Several test processes may start at once: one installs, the others wait for it.
  exec 9>"$dir/.install.lock"
  flock 9
  if [[ ! -x "$bin" ]]; then
    # A package.json of its own: without one npm walks up to the repository's node_modules/ (anvil and
    # solc, scripts/install-npm-deps.sh), writes a package.json there and prunes what it did not list.
    [[ -f "$dir/package.json" ]] || echo '{"private": true}' >"$dir/package.json"
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error @stoplight/prism-cli >&2)
  fi
  flock -u 9
fi

exec "$bin" mock --host 127.0.0.1 --port "$port" "$@" "$spec"
