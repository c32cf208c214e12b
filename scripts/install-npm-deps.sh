#!/usr/bin/env bash
# Install the npm packages Pulse's chain tests need into the repository's own node_modules/ (git-ignored),
# idempotently: anvil (a local Ethereum node; its binary ships in @foundry-rs/anvil-linux-amd64) and the
# Solidity compiler solcjs (npm `solc`), which compiles tests/chain/*.sol.
#
# - installs only what is missing or at another version, so a machine that has everything stays offline;
# - --no-save / --no-package-lock: the versions are pinned here, no package.json is written;
# - prints what it did, so CI logs show whether anything changed.
#
# Usage: scripts/install-npm-deps.sh     (needs node and npm)
set -euo pipefail
cd "$(dirname "$0")/.."

# npm package -> pinned version
declare -A VERSION_OF=(
    [@foundry-rs/anvil]=1.7.1
    [solc]=0.8.28
)

if ! command -v npm >/dev/null 2>&1; then
    echo "install-npm-deps: npm is not installed (apt-get install nodejs npm)" >&2
    exit 1
fi

wanted=()
for pkg in "${!VERSION_OF[@]}"; do
    want=${VERSION_OF[$pkg]}
    have=$(node -p "require('./node_modules/$pkg/package.json').version" 2>/dev/null || true)
    if [[ $have == "$want" ]]; then
        echo "install-npm-deps: $pkg@$want already installed"
    else
        wanted+=("$pkg@$want")
    fi
done

if [[ ${#wanted[@]} -eq 0 ]]; then
    echo "install-npm-deps: nothing to do"
    exit 0
fi

echo "install-npm-deps: installing ${wanted[*]}"
# Every pinned package is named on each install: npm without a package.json prunes what is not named.
all=()
for pkg in "${!VERSION_OF[@]}"; do all+=("$pkg@${VERSION_OF[$pkg]}"); done
npm install --prefix . --no-save --no-package-lock --no-audit --no-fund --loglevel=error "${all[@]}"

for bin in node_modules/.bin/anvil node_modules/.bin/solcjs; do
    if [[ ! -x $bin ]]; then
        echo "install-npm-deps: $bin is missing after the install" >&2
        exit 1
    fi
done
echo "install-npm-deps: anvil $(node_modules/.bin/anvil --version | head -1)"
