#!/usr/bin/env bash
# Runs the C corruption suite under an instrumented allocscope preload library and checks that
# each bug is reported with the right kind and names the function that committed it.
#   tests/corruption/run.sh path/to/instrumented/liballocscope.so
set -euo pipefail
lib=${1:?usage: $0 path/to/instrumented-liballocscope.so}
[ -f "$lib" ] || { echo "no such library: $lib" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
bin=$(mktemp -d)/corruption
cc -g -O0 -fno-omit-frame-pointer -Wno-free-nonheap-object -o "$bin" "$here/corruption.c"

pass=0 fail=0
check() { # case, options, expected kind
    local name=$1 options=$2 kind=$3 err
    err=$(ALLOCSCOPE_OPTIONS="$options" LD_PRELOAD="$lib" "$bin" "$name" 2>&1 >/dev/null || true)
    if grep -q "ERROR: allocscope: $kind" <<<"$err" && grep -q "$name" <<<"$err"; then
        pass=$((pass + 1)); echo "ok   $name: $kind"
    else
        fail=$((fail + 1)); echo "FAIL $name: expected $kind naming $name, got:"; sed 's/^/     /' <<<"$err" | head -20
    fi
}
quiet=guard=0,leak_check=0,sample=1
check one_byte_overflow    "$quiet,canary=16"                  heap-buffer-overflow
check far_overflow         "sample=1,guard=all,guard_underflow=0,leak_check=0" heap-buffer-overflow
check underflow            "$quiet,canary=16"                  heap-buffer-underflow
check use_after_free_write "$quiet,quarantine=4k"              use-after-free
check use_after_free_read  "sample=1,guard=all,leak_check=0"   use-after-free
check double_free          "$quiet"                            double-free
check invalid_free         "$quiet"                            invalid-free
check leak                 "sample=1,guard=0"                  memory-leak
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
