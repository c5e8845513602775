#!/usr/bin/env bash
# Sanitizers and checkers over the core crate, each in its own target directory (their flags
# would otherwise invalidate the shared build):
#   tsan      ThreadSanitizer over the multi-threaded stress tests of the heap and the lock-free
#             pool (nightly, -Zbuild-std so that std's atomics are instrumented too);
#   asan      AddressSanitizer (and LeakSanitizer) over the strategy allocators' tests;
#   valgrind  Valgrind memcheck over the strategy allocators' test binaries (they run on the
#             system allocator), every error and every definite or possible leak fails
#             (tests/valgrind.supp: the one "possible" leak of Rust's runtime).
# With no argument, all three. Needs: rustup nightly with rust-src, valgrind.
# The proptest models (`matches_model`) are skipped under Valgrind only (minutes each there).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-$PWD/target}
host=x86_64-unknown-linux-gnu
strategy_tests=(--test strategy_pool --test strategy_stack --test strategy_buddy
  --test strategy_slab --test strategy_lock_free)

# cargo test under a sanitizer: $1 = sanitizer name, the rest = cargo test arguments.
sanitized() {
  local name=$1
  shift
  # --target keeps build scripts and proc macros out of the sanitized build.
  RUSTFLAGS="-Zsanitizer=$name" RUSTDOCFLAGS="-Zsanitizer=$name" \
    CARGO_TARGET_DIR="$target/sanitizer-$name" \
    cargo +nightly test -Zbuild-std --target "$host" -p allocscope-core "$@"
}

tsan() {
  # Every report fails the run (halt at the first). Release, for speed (the debug build takes
  # 4-5 minutes in heap_stress under TSan), without fat LTO (the build would take longer
  # than the run), and unwinding like the test harness (with panic=abort, -Zbuild-std builds
  # core twice and the link fails on duplicate lang items).
  TSAN_OPTIONS="halt_on_error=1 ${TSAN_OPTIONS:-}" \
    CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    CARGO_PROFILE_RELEASE_PANIC=unwind \
    sanitized thread --release --test heap_stress --test stress_lock_free
}

asan() {
  ASAN_OPTIONS="detect_leaks=1 detect_stack_use_after_return=1 ${ASAN_OPTIONS:-}" \
    sanitized address "${strategy_tests[@]}" --test stress_lock_free
}

valgrind_memcheck() {
  local bins
  bins=$(cargo test -p allocscope-core "${strategy_tests[@]}" --no-run 2>&1 |
    sed -n 's/^ *Executable .* (\(.*\))$/\1/p')
  [ -n "$bins" ] || { echo "no strategy test binaries found" >&2; exit 1; }
  for bin in $bins; do
    echo "valgrind memcheck: $bin"
    valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,possible \
      --suppressions=tests/valgrind.supp "$bin" --test-threads=2 --skip matches_model -q
  done
}

case "${1:-all}" in
  tsan) tsan ;;
  asan) asan ;;
  valgrind) valgrind_memcheck ;;
  all) tsan; asan; valgrind_memcheck ;;
  *) echo "usage: $0 [tsan|asan|valgrind|all]" >&2; exit 2 ;;
esac
