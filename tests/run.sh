#!/usr/bin/env bash
# The whole test suite: the README's test command. Every step must pass.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - start ))s] $*"; }

step "unit and integration tests (debug)"
cargo test --workspace

step "done in $(( $(date +%s) - start ))s"
