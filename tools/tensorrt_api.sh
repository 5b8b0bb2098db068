#!/usr/bin/env bash
# Regenerates tests/fixtures/tensorrt-api/: the text of the real TensorRT Python bindings (every class, method,
# enum member and docstring, as `strings` of the binding's .so) of TensorRT 8.6 (JetPack 6.0), 10.3 (JetPack
# 6.1/6.2), the newest 10.x and the newest 11.x, xz-compressed, for tests/export/test_tensorrt_api.py.
# The bindings wheels are small and need no GPU; this needs pip access to the package index and `strings`.
#   usage: tools/tensorrt_api.sh [OUTDIR]   (default: tests/fixtures/tensorrt-api)
set -euo pipefail
out=${1:-"$(dirname "$0")/../tests/fixtures/tensorrt-api"}
specs=("tensorrt-bindings==8.6.1" "tensorrt-cu12-bindings==10.3.*" "tensorrt-cu12-bindings>=10.16,<11"
       "tensorrt-cu13-bindings>=11,<12")
mkdir -p "$out"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for spec in "${specs[@]}"; do
  python3 -m pip download -q --no-deps -d "$tmp" "$spec" >&2
done
for whl in "$tmp"/tensorrt_*bindings-*.whl; do
  ver=$(basename "$whl" | sed -E 's/^tensorrt(_cu1[0-9])?_bindings-([^-]+)-.*/\2/')
  python3 -m zipfile -e "$whl" "$tmp/x-$ver"
  strings -n 4 "$tmp/x-$ver/tensorrt_bindings/tensorrt.so" | xz -9 > "$out/tensorrt-$ver.txt.xz"
  echo "$out/tensorrt-$ver.txt.xz"
done
