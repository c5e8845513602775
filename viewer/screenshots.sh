#!/usr/bin/env bash
# Records viewer/examples/demo_workload.rs with the tracker and takes a screenshot of every
# viewer panel under Xvfb (eframe saves its second frame when EFRAME_SCREENSHOT_TO is set).
# Usage: bash viewer/screenshots.sh [OUT_DIR]   (default viewer/screenshots); needs xvfb-run.
set -euo pipefail
out=${1:-viewer/screenshots}
target=${CARGO_TARGET_DIR:-$PWD/target}
cargo build -p allocscope-viewer --bin allocscope --example demo_workload
work=$(mktemp -d)
trace=$work/demo.trace
ALLOCSCOPE_OPTIONS="trace=$trace,sample=1,canary=16,snapshot=5ms,print_reports=0" \
  "$target/debug/examples/demo_workload"
"$target/debug/allocscope" report "$trace" > "$work/report.txt"
# The report names the demo's own functions (symbolised from the trace's module map).
for f in demo_workload::leak_buffer demo_workload::overflow_by_one heap-buffer-overflow; do
  grep -q "$f" "$work/report.txt" || { echo "report lacks $f"; cat "$work/report.txt"; exit 1; }
done
mkdir -p "$out"
for tab in overview leaks flamegraph fragmentation corruption sizes; do
  rm -f "$out/$tab.png"
  EFRAME_SCREENSHOT_TO="$out/$tab.png" timeout 120 \
    xvfb-run -a -s "-screen 0 1280x800x24" "$target/debug/allocscope" view "$trace" --tab "$tab"
  test -s "$out/$tab.png" || { echo "no screenshot of $tab"; exit 1; }
  echo "screenshot: $out/$tab.png"
done
# The overview with a time range selected (the trace is read again for it off the UI thread).
rm -f "$out/overview-range.png"
EFRAME_SCREENSHOT_TO="$out/overview-range.png" timeout 120 \
  xvfb-run -a -s "-screen 0 1280x800x24" "$target/debug/allocscope" view "$trace" \
  --tab overview --from-ms 100 --to-ms 400
test -s "$out/overview-range.png" || { echo "no screenshot of a range"; exit 1; }
echo "screenshot: $out/overview-range.png"
