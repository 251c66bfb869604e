#!/usr/bin/env bash
# Regenerate vmlinux/x86/vmlinux.h from the running kernel's BTF (or from the BTF file given).
set -euo pipefail
btf=${1:-/sys/kernel/btf/vmlinux}
top=$(cd "$(dirname "$0")/.." && pwd)
out="$top/vmlinux/x86/vmlinux.h"
[ -r "$btf" ] || { echo "gen-vmlinux: cannot read BTF at $btf" >&2; exit 1; }
bpftool btf dump file "$btf" format c >"$out.tmp"
mv "$out.tmp" "$out"
echo "gen-vmlinux: wrote $out ($(wc -l <"$out") lines) from $btf"
