#!/usr/bin/env bash
# What `durable: true` (fsync before and after the `current` switch) costs the deployer: one
# deploy step of FILES files of 4 KiB, with `durable: true` and `durable: false`, next to the
# shell's `cp -R` + `mv` + `ln` with and without `sync`. Runs alternate; prints medians.
#
# Usage: bench/durable.sh SHIPHAT [FILES] [ROUNDS]
#   SHIPHAT: the `shiphat` binary; the plugins are taken from plugins/target (`cargo xtask plugins`).
set -euo pipefail
shiphat=$(realpath "$1") files=${2:-3000} rounds=${3:-7}
plugins=$(realpath "$(dirname "$0")/../plugins/target/wasm32-wasip2/release")
work=$(mktemp -d "${TMPDIR:-/var/tmp}/shiphat-durable.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

for i in $(seq 0 $((files - 1))); do
  d=build/files/$((i % 50)); [ -d "$d" ] || mkdir -p "$d"
  head -c 4096 /dev/zero > "$d/$i.bin"
done
for durable in true false; do
  cat > "deploy-$durable.yaml" <<YAML
name: durable-bench
inputs:
  release: { type: string, required: true }
steps:
  - id: deploy
    uses: deployer
    with: { strategy: symlink, source: build, target: www-$durable, release: "\${{ inputs.release }}", keep: 2, durable: $durable }
    allow: { read: [build], write: [www-$durable] }
YAML
done

shell_deploy() { # TARGET RELEASE SYNC
  releases=$1/releases; mkdir -p "$releases"
  cp -R build "$releases/.$2.partial"
  [ "$3" = sync ] && sync
  mv "$releases/.$2.partial" "$releases/$2"
  ln -sfn "releases/$2" "$1/current.tmp"; mv -T "$1/current.tmp" "$1/current"
  [ "$3" = sync ] && sync
  # Keep two releases, as the shiphat runs do.
  ls "$releases" | sort -n | head -n -2 | while read -r old; do rm -rf "${releases:?}/$old"; done
}

now() { date +%s%N; }
declare -A times
export SHIPHAT_PLUGIN_PATH=$plugins SHIPHAT_CACHE_DIR=$work/cache
# One warm-up each, so the compile cache is filled and the page cache holds the build.
"$shiphat" run deploy-true.yaml --input release=0 > /dev/null
"$shiphat" run deploy-false.yaml --input release=0 > /dev/null
for r in $(seq 1 "$rounds"); do
  for tool in shiphat-durable shiphat-fast shell-sync shell; do
    t0=$(now)
    case $tool in
      shiphat-durable) "$shiphat" run deploy-true.yaml --input "release=$r" > /dev/null ;;
      shiphat-fast) "$shiphat" run deploy-false.yaml --input "release=$r" > /dev/null ;;
      shell-sync) shell_deploy www-shell-sync "$r" sync ;;
      shell) shell_deploy www-shell "$r" nosync ;;
    esac
    times[$tool]+="$((($(now) - t0) / 1000)) "
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { printf "%.1f ms", a[int((NR + 1) / 2)] / 1000 }'; }
echo "$files files of 4 KiB, $rounds rounds, medians:"
for tool in shiphat-durable shiphat-fast shell-sync shell; do
  printf '  %-16s %s\n' "$tool" "$(echo "${times[$tool]}" | median)"
done
