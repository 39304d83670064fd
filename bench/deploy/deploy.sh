#!/bin/sh
# The benchmark's local deploy as a POSIX shell script: what a user writes without shiphat.
# Usage: deploy.sh WORKDIR RELEASE METRICS_URL
# No sandbox, no history, no retries: the fast baseline shiphat is measured against.
set -eu
work=$1 release=$2 metrics_url=$3

# 1. QA: the JUnit report must show no failures or errors.
report=$work/reports/junit.xml
if grep -Eq '<(failure|error)[ >/]' "$report"; then
  echo "QA red" >&2; exit 1
fi

# 2. Deploy: copy the build into releases/RELEASE, then switch `current` atomically. The
# deployer makes the release durable before the switch and the switch after it (`durable:
# true`, its default); `sync` does the same durable work here, so the comparison is fair.
releases=$work/www/releases
mkdir -p "$releases"
rm -rf "$releases/.$release.partial"
cp -R "$work/build" "$releases/.$release.partial"
mv "$releases/.$release.partial" "$releases/$release"
sync
ln -sfn "releases/$release" "$work/www/current.tmp"
mv -T "$work/www/current.tmp" "$work/www/current"
sync

# 3. Verify: the error ratio must be below 1%.
ratio=$(curl -fsS "$metrics_url" | awk '$1 == "demo_error_ratio" { print $2 }')
awk -v r="$ratio" 'BEGIN { exit !(r != "" && r < 0.01) }' || { echo "metrics red: $ratio" >&2; exit 1; }
echo "deployed $release"
