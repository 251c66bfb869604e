#!/usr/bin/env bash
# Install, from Debian's packages, exactly what bgswitch needs to build, test and demo and is missing.
set -euo pipefail

PKGS=(
	make gcc pkg-config clang llvm libbpf-dev libelf-dev zlib1g-dev bpftool libmicrohttpd-dev
	libcurl4-openssl-dev libjson-c-dev etcd-server etcd-client openssl
	iproute2 ethtool iptables nftables procps util-linux
	python3 python3-pytest python3-scapy tmux tcpdump
	wrk python3-matplotlib
	clang-format
	man-db groff-base
)

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
