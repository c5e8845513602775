#!/usr/bin/env bash
# "No panics in allocation paths", checked at link time for the embedded target: for each
# strategy, tests/no_panic builds a thumbv7em-none-eabihf release image (no_std, fat LTO) that
# calls every allocation path with inputs the optimiser cannot see, and whose panic handler
# calls a function defined nowhere. The image links only if no panic is reachable.
#
# Every strategy links today, so KNOWN_PANICKING is empty; a strategy put there (while a
# reachable panic is being worked on) is reported with the panic's source lines and does not
# fail the check, any other strategy that cannot link does. A strategy that links is panic-free as compiled here; the
# `must_fail` build proves the check can fail. Needs: rustup target thumbv7em-none-eabihf;
# for the source lines, rustup component llvm-tools.
set -euo pipefail
cd "$(dirname "$0")/no_panic"
target=${CARGO_TARGET_DIR:-$PWD/../../target}/no-panic
triple=thumbv7em-none-eabihf
KNOWN_PANICKING=${KNOWN_PANICKING:-""}

build() { # $1 = feature; quiet; the exit status says whether the image linked
  CARGO_TARGET_DIR="$target" cargo build -q --release --target "$triple" \
    --no-default-features --features "$1" >"$target.log" 2>&1
}

mkdir -p "$target"
if build must_fail; then
  echo "no-panic check: the image with a reachable panic linked: the check is broken" >&2
  exit 1
fi
grep -q "undefined symbol: allocscope_allocation_path_can_panic" "$target.log" || {
  cat "$target.log" >&2
  echo "no-panic check: the image failed for another reason than the panic" >&2
  exit 1
}

status=0
panicking=()
for strategy in pool stack buddy slab lock_free global; do
  if build "$strategy"; then
    echo "no panic reachable: $strategy"
    case " $KNOWN_PANICKING " in *" $strategy "*)
      echo "  (now panic-free: remove it from KNOWN_PANICKING in $0)" ;;
    esac
  elif grep -q "undefined symbol: allocscope_allocation_path_can_panic" "$target.log"; then
    panicking+=("$strategy")
    case " $KNOWN_PANICKING " in
      *" $strategy "*) echo "panic reachable (known): $strategy" ;;
      *) echo "panic reachable: $strategy (a regression)" >&2; status=1 ;;
    esac
  else
    cat "$target.log" >&2
    exit 1
  fi
done

# Where the panics are: link anyway, with line tables, and list each call into core::panicking
# with the last line of the project's source before it (the check inlined there).
bin=$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin
if [ ${#panicking[@]} -gt 0 ] && [ -x "$bin/llvm-objdump" ]; then
  features=$(IFS=,; echo "${panicking[*]}")
  CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    RUSTFLAGS="-C link-arg=--unresolved-symbols=ignore-all" CARGO_TARGET_DIR="$target-sites" \
    cargo build -q --release --target "$triple" --no-default-features --features "$features" 2>/dev/null
  "$bin/llvm-objdump" -d -C -l --no-show-raw-insn "$target-sites/$triple/release/allocscope-no-panic-probe" |
    awk -v root="$(cd ../.. && pwd)/" '
      /^[0-9a-f]+ </ { n = 0 }
      /^; \// { if (index($2, root) == 1) { src[n++] = substr($2, length(root) + 1) } }
      /\tb[a-z.]*\t.*<core::panicking::/ {
        callee = $0; sub(/.*<core::panicking::/, "", callee); sub(/>.*/, "", callee)
        sub(/.*::/, "", callee)
        print "  " callee " after " (n ? src[n - 1] : "?")
      }' | sort -u
fi
exit $status
