#!/usr/bin/env bash
# Install, from Debian's packages, what scripts/programs.txt lists and is missing: everything the
# build, the tests, the demo, the benchmarks and the fuzzing run.
set -euo pipefail

MANIFEST="$(dirname "$0")/programs.txt"

mapfile -t PKGS < <(sed -e 's/#.*//' "$MANIFEST" | awk 'NF == 2 && !seen[$2]++ { print $2 }')
if [ ${#PKGS[@]} -eq 0 ]; then
	echo "install-deps: no package in $MANIFEST" >&2
	exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: missing packages (${missing[*]}); run as root: sudo $0" >&2
	exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
