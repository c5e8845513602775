#!/usr/bin/env bash
# The comparison benchmark (issue 2's "Numbers"): builds allocscope-bench, liballocscope.so and
# the C workloads program, then runs the same workloads
#   1. in Rust, on System (glibc), mimalloc, jemalloc and allocscope called through GlobalAlloc;
#   2. in C, on glibc and under LD_PRELOAD of Debian's mimalloc, jemalloc, tcmalloc, of snmalloc
#      and rpmalloc (preload libraries compiled here from the sources the snmalloc-sys and
#      rpmalloc-sys crates vendor; left out, with a note, when they do not build) and of
#      liballocscope.so;
# each run in its own process, allocators interleaved, medians of 5 repetitions printed with
# ratios to mimalloc and glibc. Results: bench-results/compare-{rust,c}.{jsonl,csv}.
#
# usage: benches/run_compare.sh [--suite] [--long] [--rust-only | --c-only] [allocscope-bench options...]
#   --suite      the whole suite (issue 6): both harnesses, memory, latency, real programs,
#                hardware counters (where perf can read them), cachegrind; writes bench-results/suite.json and docs/performance_analysis.md
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
    -h|--help) sed -n '2,/^set -euo/p' "$root/benches/run_compare.sh" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
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

# snmalloc and rpmalloc as preload libraries, compiled from the C/C++ sources their -sys crates
# (dependencies of the Rust harness, see Cargo.lock) carry in cargo's registry; the flags follow
# upstream's own shared-library builds (snmalloc's CMake "snmallocshim" target, rpmalloc's
# ENABLE_OVERRIDE + ENABLE_PRELOAD). allocscope-bench finds them in $1 (beside the C program);
# when one does not build, its log stays there and the benchmark says so in its notes.
build_peers() {
  local dir=$1 meta
  mkdir -p "$dir"
  meta=$(cargo metadata --format-version 1 --offline 2>/dev/null || cargo metadata --format-version 1 2>/dev/null || true)
  build_peer "$dir" snmalloc libsnmallocshim.so "$(crate_dir "$meta" snmalloc-sys)" build_snmalloc
  build_peer "$dir" rpmalloc librpmalloc.so "$(crate_dir "$meta" rpmalloc-sys)" build_rpmalloc
}

# The source directory of crate $2 in cargo metadata's output $1 (empty when not there).
crate_dir() {
  local manifest
  manifest=$(grep -o "\"manifest_path\":\"[^\"]*/$2-[0-9][^\"/]*/Cargo.toml\"" <<<"$1" | head -1 | cut -d'"' -f4 || true)
  [ -n "$manifest" ] && dirname "$manifest"
  return 0
}

# build_peer DIR NAME LIB SOURCES BUILDER: runs BUILDER SOURCES OUT unless LIB is already built
# from the same sources with the same script; output in DIR/NAME.log.
build_peer() {
  local dir=$1 name=$2 lib=$3 src=$4 builder=$5 stamp
  local log="$dir/$name.log"
  if [ -z "$src" ] || [ ! -d "$src" ]; then
    rm -f "$dir/$lib"
    echo "$name: the $name-sys crate's sources are not in cargo's registry (cargo fetch); left out" | tee "$log"
    return 0
  fi
  stamp="$src $(cksum <"$root/benches/run_compare.sh")"
  if [ -f "$dir/$lib" ] && [ "$(cat "$dir/$name.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "$name: $dir/$lib (built from $(basename "$src"))"
    return 0
  fi
  echo "building $name as a preload library from $src ..."
  rm -f "$dir/$lib" "$dir/$name.stamp"
  if "$builder" "$src" "$dir/$lib.tmp" >"$log" 2>&1 && mv "$dir/$lib.tmp" "$dir/$lib"; then
    echo "$stamp" >"$dir/$name.stamp"
    echo "$name: $dir/$lib (built from $(basename "$src"))"
  else
    rm -f "$dir/$lib.tmp"
    echo "warning: $name did not build as a preload library (log: $log); it is left out of the C harness"
    tail -3 "$log" | sed 's/^/  /'
  fi
}

build_snmalloc() {
  local src=$1/snmalloc/src out=$2 obj
  obj=$(mktemp -d)
  local flags=(-std=c++20 -O3 -DNDEBUG -fPIC -fno-exceptions -fno-rtti -fvisibility=hidden
    -fomit-frame-pointer -ffunction-sections -ftls-model=initial-exec
    '-DSNMALLOC_EXPORT=__attribute__((visibility("default")))' -DSNMALLOC_USE_PTHREAD_DESTRUCTORS
    -DSNMALLOC_USE_WAIT_ON_ADDRESS=0 -DSNMALLOC_CHECK_LOADS=false -DSNMALLOC_PAGEID=false
    -I"$src")
  case "$(uname -m)" in x86_64) flags+=(-mcx16 -mprfchw) ;; esac
  g++ "${flags[@]}" -c "$src/snmalloc/override/malloc.cc" -o "$obj/malloc.o" &&
    g++ "${flags[@]}" -c "$src/snmalloc/override/new.cc" -o "$obj/new.o" &&
    gcc -shared -pthread -Wl,--no-undefined -o "$out" "$obj/malloc.o" "$obj/new.o"
  local rc=$?
  rm -rf "$obj"
  return $rc
}

build_rpmalloc() {
  gcc -std=gnu11 -O3 -DNDEBUG -fPIC -shared -ftls-model=initial-exec -D_GNU_SOURCE \
    -DENABLE_OVERRIDE=1 -DENABLE_PRELOAD=1 -pthread -Wl,--no-undefined \
    -o "$2" "$1/rpmalloc/rpmalloc/rpmalloc.c"
}

echo "building (release) ..."
cargo build --release -q -p allocscope-bench
bench=$target/release/allocscope-bench
if [ $suite = 1 ] || [[ " ${harnesses[*]} " == *" c "* ]]; then
  cargo build --release -q -p allocscope-preload \
    || echo "warning: liballocscope.so did not build; the C harness runs without allocscope"
  mkdir -p "$target/c-bench"
  gcc -O2 -pthread -o "$target/c-bench/workloads" benches/c/workloads.c
  build_peers "$target/c-bench/peers"
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
