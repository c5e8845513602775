#!/usr/bin/env bash
# The whole test suite: the README's test command. Every step must pass.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - start ))s] $*"; }
target=${CARGO_TARGET_DIR:-$PWD/target}

step "build liballocscope.so and liballocscope_debug.so (the preload tests run programs on them)"
cargo build --release -p allocscope-preload -p allocscope-preload-debug

step "unit and integration tests (debug)"
cargo test --workspace

step "the C corruption suite under liballocscope_debug.so"
bash tests/corruption/run.sh "$target/release/liballocscope_debug.so"

step "32-bit: the heap's tests on i686-unknown-linux-gnu (release)"
cargo test -p allocscope-core --release --target i686-unknown-linux-gnu --lib \
  --test heap_basics --test heap_model --test heap_stress --test heap_remote

step "Windows: core and tracker build for x86_64-pc-windows-gnu, the core's tests run under Wine"
bash tests/windows.sh

step "loom: the heap's remote-free list and delayed-free hand-off"
LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="$target/loom" \
  cargo test -p allocscope-core --lib --release page::loom_models

if rustup toolchain list 2>/dev/null | grep -q nightly && cargo +nightly miri --version >/dev/null 2>&1; then
  step "miri (strict provenance): the heap's free lists, queues, size classes, OS layer"
  MIRIFLAGS="-Zmiri-strict-provenance -Zmiri-disable-isolation" CARGO_TARGET_DIR="$target/miri" \
    cargo +nightly miri test -p allocscope-core --lib
else
  echo "miri is not installed (rustup +nightly component add miri rust-src): skipped" >&2
  exit 1
fi

step "no_std: the strategy allocators build for thumbv7em-none-eabihf (32-bit atomics only)"
cargo build -p allocscope-core --no-default-features --target thumbv7em-none-eabihf

step "no_std: no panic reachable from the strategies' allocation paths (link-time check)"
bash tests/no_panic.sh

step "stats feature: the strategy allocators' tests with their operation counts kept"
cargo test -p allocscope-core --features stats \
  --test strategy_pool --test strategy_stack --test strategy_buddy --test strategy_slab \
  --test strategy_lock_free

step "32-bit: the strategy allocators' tests on i686-unknown-linux-gnu (release)"
cargo test -p allocscope-core --release --target i686-unknown-linux-gnu \
  --test strategy_pool --test strategy_stack --test strategy_buddy --test strategy_slab \
  --test strategy_lock_free --test stress_lock_free

step "loom: the lock-free pool's tagged Treiber stack, batch splits and per-thread caches"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="$target/loom" \
  cargo test -p allocscope-core --release --test loom_lock_free

step "32-bit atomics: the lock-free pool's 16/16 head word (--cfg allocscope_narrow_word)"
RUSTFLAGS="--cfg allocscope_narrow_word" CARGO_TARGET_DIR="$target/narrow" \
  cargo test -p allocscope-core --release --test strategy_lock_free --test stress_lock_free

# The proptest models are skipped here (minutes each under miri); they run natively above.
step "miri (strict provenance): every strategy allocator's tests but the proptest models"
MIRIFLAGS="-Zmiri-strict-provenance" CARGO_TARGET_DIR="$target/miri" \
  cargo +nightly miri test -p allocscope-core \
  --test strategy_pool --test strategy_stack --test strategy_buddy --test strategy_slab \
  --test strategy_lock_free --test stress_lock_free -- --skip matches_model

# Permissive provenance: the shadow's words are found from a pointer's address (as the block
# table's are), an integer-to-pointer step strict provenance refuses.
step "miri: the tracker's shadow words (owner and compare-and-swap frees, retire and restore)"
MIRIFLAGS="-Zmiri-permissive-provenance" CARGO_TARGET_DIR="$target/miri" \
  cargo +nightly miri test -p allocscope-tracker --lib shadow::

step "ThreadSanitizer: the heap's and the lock-free pool's multi-threaded stress tests"
bash tests/sanitizers.sh tsan

step "AddressSanitizer: the strategy allocators' tests"
bash tests/sanitizers.sh asan

step "Valgrind memcheck: the strategy allocators' tests on the system allocator"
bash tests/sanitizers.sh valgrind

if command -v xvfb-run >/dev/null; then
  step "the viewer binary under Xvfb: a recorded trace, its report, a screenshot of every panel"
  bash viewer/screenshots.sh "$target/screenshots"
else
  echo "xvfb-run is missing (apt-get install xvfb): the viewer screenshot step cannot run" >&2
  exit 1
fi

step "docs: rustdoc warning-free (missing_docs denied); the tracker examples end in their reports"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
cargo test -p allocscope --features instrumented --test examples

step "done in $(( $(date +%s) - start ))s"
