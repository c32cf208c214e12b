#!/usr/bin/env bash
# Install the Debian packages Pulse's tests need (Prometheus + promtool, Chromium), idempotently.
#
# - runs `apt-get update` only when a package is missing and its candidate is unknown (fresh machine),
#   because the update is the slow part and a machine that has everything should not touch the network;
# - installs each package only when its binary is missing;
# - prints what it did, so CI logs show whether anything changed.
#
# Usage: scripts/install-debian-deps.sh            (as root, or with sudo available)
#        PULSE_DEBIAN_DEPS="prometheus" scripts/install-debian-deps.sh   (a subset)
set -euo pipefail

# package name -> the binary whose presence proves it is installed
declare -A BINARY_OF=(
    [prometheus]=/usr/bin/promtool
    [chromium]=/usr/bin/chromium
)
WANTED=${PULSE_DEBIAN_DEPS:-"prometheus chromium"}

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-debian-deps: not root and no sudo; cannot install" >&2
        exit 1
    fi
fi

missing=()
for pkg in $WANTED; do
    bin=${BINARY_OF[$pkg]:-}
    if [[ -z $bin ]]; then
        echo "install-debian-deps: unknown package '$pkg' (known: ${!BINARY_OF[*]})" >&2
        exit 2
    fi
    if [[ -x $bin ]]; then
        echo "install-debian-deps: $pkg already installed ($bin)"
    else
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-debian-deps: nothing to do"
    exit 0
fi

# The package lists are needed only if apt does not know a candidate version yet.
needs_update=0
for pkg in "${missing[@]}"; do
    candidate=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [[ -z $candidate || $candidate == "(none)" ]]; then
        needs_update=1
    fi
done
if [[ $needs_update -eq 1 ]]; then
    echo "install-debian-deps: running apt-get update"
    $SUDO apt-get update -qq
else
    echo "install-debian-deps: package lists already know ${missing[*]}; skipping apt-get update"
fi

echo "install-debian-deps: installing ${missing[*]}"
# --no-install-recommends keeps Prometheus from pulling in its node exporter and web assets;
# DEBIAN_FRONTEND avoids debconf prompts in CI, which has no stdin.
# The Debian prometheus package starts a systemd service on install where systemd runs; in a container
# without systemd the postinst just skips that, so nothing else listens on :9090 behind our back.
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"

for pkg in "${missing[@]}"; do
    bin=${BINARY_OF[$pkg]}
    if [[ -x $bin ]]; then
        echo "install-debian-deps: installed $pkg ($bin)"
    else
        echo "install-debian-deps: $pkg installed but $bin is missing" >&2
        exit 1
    fi
done
