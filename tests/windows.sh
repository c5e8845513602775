#!/usr/bin/env bash
# Windows (x86_64-pc-windows-gnu): the core and tracker crates build, and the tests of both run
# under Wine, in release (heap_stress takes a minute in debug under Wine): the core's (the
# VirtualAlloc OS layer, the heap, the strategy allocators) and the tracker's unit and
# integration tests (those that need Unix are left out or ignored with the reason; see
# tracker/src/windows.rs for what the tracker does not support there).
# Needs: wine, wine64, gcc-mingw-w64-x86-64 (linker), `rustup target add x86_64-pc-windows-gnu`.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-$PWD/target}
triple=x86_64-pc-windows-gnu

cargo build -p allocscope-core -p allocscope-tracker --target "$triple"
# The Windows-only code is linted nowhere else.
cargo clippy -p allocscope-core -p allocscope-tracker --target "$triple" -- -D warnings

# A prefix of our own, made once; no Mono/Gecko installers (no network), no debug chatter.
export WINEPREFIX="$target/wine-prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
system32="$WINEPREFIX/drive_c/windows/system32"
if [ ! -d "$system32" ]; then
  wine wineboot --init >/dev/null 2>&1 || true
  wineserver --wait || true
fi
# Wine 8 (bookworm) has no bcryptprimitives.dll, which every Rust program since 1.78 imports:
# build the one-function stand-in from tests/windows/bcryptprimitives.c (newer Wine has it).
if [ ! -f "$system32/bcryptprimitives.dll" ]; then
  x86_64-w64-mingw32-gcc -O2 -shared -Wl,--kill-at -o "$system32/bcryptprimitives.dll" \
    tests/windows/bcryptprimitives.c -ladvapi32
fi

# Release without fat LTO: a dozen test binaries link much faster, and the tests are the same.
CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine CARGO_PROFILE_RELEASE_LTO=false \
  cargo test -p allocscope-core --release --target "$triple"
CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine CARGO_PROFILE_RELEASE_LTO=false \
  cargo test -p allocscope-tracker --release --target "$triple" --lib --tests
