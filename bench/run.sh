#!/usr/bin/env bash
# Builds what the benchmarks need (release engine, plugins) and prints one Markdown table.
# Usage: bench/run.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo xtask plugins
cargo build --release -p shiphat -p shiphat-bench
target_dir="${CARGO_TARGET_DIR:-target}"
"$target_dir/release/shiphat-bench" "$@"
