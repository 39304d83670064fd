#!/usr/bin/env bash
# shiphat's benchmarks: builds what they need (release engine, plugins, a virtual environment
# with ansible-core from PyPI) and prints one Markdown table, the one in docs/BENCHMARKS.md.
#
# Usage: bench/run.sh [--quick]     (--quick: every measurement once, tiny sizes; the smoke test)
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned, so the comparison is reproducible: the ansible-core line that supports Python 3.11.
ANSIBLE_CORE_VERSION=2.17.7

cargo xtask plugins
cargo build --release -p shiphat -p shiphat-bench
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$(pwd)/$target_dir" ;; esac

venv="$target_dir/bench-venv"
if [ ! -x "$venv/bin/ansible-playbook" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "ansible-core==$ANSIBLE_CORE_VERSION"
fi

echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -sr)"
echo
"$target_dir/release/shiphat-bench" --ansible "$venv/bin/ansible-playbook" "$@"
if [ -x bench/daemon.sh ]; then
  bench/daemon.sh "$@"
fi
