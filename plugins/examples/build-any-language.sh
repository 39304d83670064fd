#!/usr/bin/env bash
# Builds the example plugins written in Python and JavaScript into OUT (default: ./out):
#   plugins/examples/build-any-language.sh [OUT]
#
# Needs componentize-py 0.25.1 (`pip install componentize-py==0.25.1`), found as
# $SHIPHAT_COMPONENTIZE_PY or `componentize-py` on PATH, and node with componentize-js 0.23.0
# (`npm install @bytecodealliance/componentize-js@0.23.0`), found in $SHIPHAT_JS_TOOLS/node_modules
# or semver-gate-js/node_modules. These are the commands docs/plugin-guide.md shows, and the
# ones tests/languages.rs runs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
wit="$here/../../wit"
out="$(mkdir -p "${1:-out}" && cd "${1:-out}" && pwd)"

py="${SHIPHAT_COMPONENTIZE_PY:-componentize-py}"
if ! command -v "$py" >/dev/null; then
    echo "missing: componentize-py 0.25.1; install it with \`pip install componentize-py==0.25.1\` (in a venv) and put it on PATH or set SHIPHAT_COMPONENTIZE_PY" >&2
    exit 2
fi
if ! command -v node >/dev/null; then
    echo "missing: node (18 or later); install it with \`apt-get install nodejs npm\`" >&2
    exit 2
fi
tools="${SHIPHAT_JS_TOOLS:-$here/semver-gate-js}"
if [ ! -d "$tools/node_modules/@bytecodealliance/componentize-js" ]; then
    echo "missing: componentize-js 0.23.0 in \`$tools/node_modules\`; run \`npm install\` in plugins/examples/semver-gate-js or set SHIPHAT_JS_TOOLS to a directory where \`npm install @bytecodealliance/componentize-js@0.23.0\` ran" >&2
    exit 2
fi

start=$(date +%s%N)
(cd "$here/notify-py" && "$py" -d "$wit" -w step componentize -p . app -o "$out/notify.wasm")
echo "notify.wasm: $(( ($(date +%s%N) - start) / 1000000 )) ms" >&2

start=$(date +%s%N)
SHIPHAT_JS_TOOLS="$tools" node "$here/semver-gate-js/build.mjs" "$out/semver-gate.wasm"
echo "semver-gate.wasm: $(( ($(date +%s%N) - start) / 1000000 )) ms" >&2
