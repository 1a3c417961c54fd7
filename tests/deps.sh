#!/bin/sh
# deps.sh - install the Debian packages gptq builds and tests with, when
# missing (make deps). Needs root, or sudo.
set -eu

# clang and libclang-rt-dev (libFuzzer's runtime, only recommended by clang) for make fuzz;
# parallel for make check BATS_JOBS=N
pkgs="build-essential pkg-config libzstd-dev libcjson-dev libopenblas-dev libpcre2-dev
      bats jq zstd python3 valgrind clang libclang-rt-dev parallel"
missing=
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
	echo "deps: all packages present"
	exit 0
fi
echo "deps: installing$missing"
if [ "$(id -u)" -eq 0 ]; then
	sudo=
elif command -v sudo >/dev/null; then
	sudo=sudo
else
	echo "deps: run as root: apt-get install$missing" >&2
	exit 1
fi
$sudo apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
