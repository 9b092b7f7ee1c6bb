#!/bin/sh
# The action's install step: picks the release binary for this machine's architecture,
# verifies it against the release's SHA256SUMS, installs it, and prints its path (also
# as the step output `path`). Usage: install.sh VERSION [DIR]
# Binaries come from the GitHub release v<VERSION> of $SMOLVM_CLEANUP_REPO (owner/name),
# or from the directory $SMOLVM_CLEANUP_DIST (a local dist/ that ci/release wrote).
set -eu
version=${1:?usage: install.sh VERSION [DIR]}
dir=${2:-${RUNNER_TEMP:-/tmp}/smolvm-cleanup-$version}
case $(uname -m) in
    x86_64 | amd64) target=x86_64-unknown-linux-musl ;;
    aarch64 | arm64) target=aarch64-unknown-linux-musl ;;
    *) echo "smolvm-cleanup: no release binary for $(uname -m)" >&2; exit 1 ;;
esac
name="smolvm-cleanup-$version-$target"
mkdir -p "$dir"
if [ -n "${SMOLVM_CLEANUP_DIST:-}" ]; then
    cp "$SMOLVM_CLEANUP_DIST/$name" "$SMOLVM_CLEANUP_DIST/SHA256SUMS" "$dir/"
else
    repo=${SMOLVM_CLEANUP_REPO:?set SMOLVM_CLEANUP_REPO (owner/name) or SMOLVM_CLEANUP_DIST}
    base="https://github.com/$repo/releases/download/v$version"
    curl -fsSL -o "$dir/$name" "$base/$name"
    curl -fsSL -o "$dir/SHA256SUMS" "$base/SHA256SUMS"
fi
# Only this file's line is checked, and it must be there.
(cd "$dir" && grep " $name\$" SHA256SUMS > SHA256SUMS.mine && sha256sum -c --quiet SHA256SUMS.mine) || {
    echo "smolvm-cleanup: $name does not match the release's SHA256SUMS" >&2
    rm -f "$dir/$name"
    exit 1
}
chmod 0755 "$dir/$name"
mv "$dir/$name" "$dir/smolvm-cleanup"
if [ -n "${GITHUB_OUTPUT:-}" ]; then
    echo "path=$dir/smolvm-cleanup" >> "$GITHUB_OUTPUT"
fi
echo "$dir/smolvm-cleanup"
