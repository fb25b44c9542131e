#!/usr/bin/env bash
# Builds tests/kube-harness into ${CARGO_TARGET_DIR:-<repo>/target}/kube-harness/kube-harness.
# Does nothing when that binary is newer than every source file here (a cache).
# Exit codes: 0 built or cached, 3 no Go toolchain, other: the build failed.
set -euo pipefail

src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$src/../.." && pwd)"
out_dir="${CARGO_TARGET_DIR:-$repo/target}/kube-harness"
bin="$out_dir/kube-harness"
start=$(date +%s.%N)

elapsed() { awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1fs", e - s }'; }

if [[ -x "$bin" ]] && [[ -z "$(find "$src" -maxdepth 1 -newer "$bin" \
    \( -name '*.go' -o -name go.mod -o -name go.sum -o -name build.sh \) -print -quit)" ]]; then
    echo "kube-harness: cached $bin ($(elapsed))"
    exit 0
fi

go=go
if ! command -v go >/dev/null 2>&1; then
    if [[ -x /usr/local/go/bin/go ]]; then
        go=/usr/local/go/bin/go
    else
        echo "kube-harness: cannot build: no 'go' on PATH (Go >= 1.26 needed; https://go.dev/dl/ or apt-get install golang-go)" >&2
        exit 3
    fi
fi

# The upstream release build stamps the version with -X; without it
# /version says v0.0.0-master.
k8s_version="$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$src/go.mod")"
major="${k8s_version#v}"; major="${major%%.*}"
minor="${k8s_version#v*.}"; minor="${minor%%.*}"
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
ldflags+=" -X $pkg.gitCommit= -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"

nice=()
command -v nice >/dev/null 2>&1 && nice=(nice -n 10)

mkdir -p "$out_dir"
tmp="$bin.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(cd "$src" && CGO_ENABLED=0 "${nice[@]}" "$go" build -trimpath -ldflags="$ldflags" -o "$tmp" .)
mv -f "$tmp" "$bin"
echo "kube-harness: built $bin ($k8s_version, $(elapsed))"
