#!/usr/bin/env bash
# The comparison benchmark (issue 2's "Numbers"): builds allocscope-bench, liballocscope.so and
# the C workloads program, then runs the same workloads
#   1. in Rust, on System (glibc), mimalloc, jemalloc and allocscope called through GlobalAlloc;
#   2. in C, on glibc and under LD_PRELOAD of Debian's mimalloc, jemalloc, tcmalloc and
#      liballocscope.so (left out, with a note, until it exports malloc);
# each run in its own process, allocators interleaved, medians of 5 repetitions printed with
# ratios to mimalloc and glibc. Results: bench-results/compare-{rust,c}.{jsonl,csv}.
#
# usage: benches/run_compare.sh [--suite] [--long] [--rust-only | --c-only] [allocscope-bench options...]
#   --suite      the whole suite (issue 6): both harnesses, memory, latency, real programs,
#                cachegrind; writes bench-results/suite.json and docs/performance_analysis.md
#                (add --quick for a run of a few minutes)
#   --long       10x longer runs and 7 repetitions (steadier figures; about 15 minutes here)
#   other options go to both harnesses, e.g. --workloads random,larson --reps 3 --threads 1
# A benchmark, not a test: never run by tests/run.sh or CI.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
harnesses=(rust c)
suite=0
extra=()
for arg in "$@"; do
  case "$arg" in
    --suite) suite=1 ;;
    --long) extra+=(--scale 10 --reps 7) ;;
    --rust-only) harnesses=(rust) ;;
    --c-only) harnesses=(c) ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) extra+=("$arg") ;;
  esac
done

# Debian's peers, for the C harness.
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  need=()
  for pkg in libmimalloc2.0 libjemalloc2 libtcmalloc-minimal4 binutils gcc valgrind; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -q && apt-get install -y -q "${need[@]}"; } >/dev/null \
      || echo "warning: could not install ${need[*]}; those allocators will be left out"
  fi
fi

echo "building (release) ..."
cargo build --release -q -p allocscope-bench
bench=$target/release/allocscope-bench
if [ $suite = 1 ] || [[ " ${harnesses[*]} " == *" c "* ]]; then
  cargo build --release -q -p allocscope-preload \
    || echo "warning: liballocscope.so did not build; the C harness runs without allocscope"
  mkdir -p "$target/c-bench"
  gcc -O2 -pthread -o "$target/c-bench/workloads" benches/c/workloads.c
  versions=$(dpkg-query -W -f '${Package} ${Version}, ' libc6 libmimalloc2.0 libjemalloc2 \
    libtcmalloc-minimal4 2>/dev/null || true)
  echo "C libraries: ${versions%, }; $(gcc --version | head -1)"
fi

if [ $suite = 1 ]; then
  exec "$bench" suite --program "$target/c-bench/workloads" \
    --allocscope-lib "$target/release/liballocscope.so" "${extra[@]}"
fi

status=0
for h in "${harnesses[@]}"; do
  echo
  echo "=== $h harness ==="
  if [ "$h" = rust ]; then
    "$bench" rust --out bench-results/compare-rust.jsonl "${extra[@]}" || status=1
  else
    "$bench" c --program "$target/c-bench/workloads" \
      --allocscope-lib "$target/release/liballocscope.so" \
      --out bench-results/compare-c.jsonl "${extra[@]}" || status=1
  fi
done
exit $status
