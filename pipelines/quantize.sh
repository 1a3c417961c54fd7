#!/bin/bash
# quantize.sh - quantize a Hugging Face checkpoint with GPTQ in one pipeline:
#
#   gptq-calib | gptq-hessian --feedback FIFO | gptq-solve --feedback FIFO | gptq-pack
#
# The FIFO carries each quantized module back to gptq-hessian, which computes
# the inputs of later modules and layers from the quantized weights
# (AutoGPTQ's true_sequential). OUT appears only when everything succeeded.
# See gptq-pipelines(7).
#
# bash for pipefail: the stages must be the pipeline's own processes. A
# wrapper around gptq-hessian (a { ...; } group saving its status, or
# timeout) would keep gptq-solve's input open after gptq-hessian closed it,
# and the loop would wait.
set -euo pipefail

usage() {
	cat <<'USAGE'
usage: quantize.sh MODEL OUT [--text FILE]... [--calib TOKENS.gqs] [--field NAME] [-n N]
                   [-l LEN] [--seed S]
                   [--bits B] [--group-size G] [--desc-act] [--static-groups] [--asym]
                   [--damp F] [--mse] [--rtn] [--no-sequential] [--format gptq|gptq_v2]
                   [--shard-size SIZE] [--fake-quant] [--keep-dtype] [--save DIR] [--threads N]
                   [--device DEV] [-v]
  --device DEV   where gptq-hessian and gptq-solve compute: cpu (default) or cuda[:N]
  -v             pass -v to every tool (gptq-hessian then times each layer's phases)
USAGE
	exit "${1:-2}"
}

[ $# -ge 1 ] && { [ "$1" = -h ] || [ "$1" = --help ]; } && usage 0
[ $# -ge 2 ] || usage 2
model=$1
out=$2
shift 2

texts= calib_opts= solve_opts= pack_opts= hess_opts= dev_opts= save= seq=1 rtn= format= asym= calib_file=
verbose=
while [ $# -gt 0 ]; do
	case $1 in
	--text) texts="$texts $(printf '%s' "$2" | sed "s/'/'\\\\''/g; s/^/'/; s/\$/'/")"; shift ;;
	--field) calib_opts="$calib_opts --field $2"; shift ;;
	--calib) calib_file=$2; shift ;;
	-n|-l|--seed) calib_opts="$calib_opts $1 $2"; shift ;;
	--bits|--group-size|--damp) solve_opts="$solve_opts $1 $2"; shift ;;
	--desc-act|--static-groups|--mse) solve_opts="$solve_opts $1" ;;
	--asym) solve_opts="$solve_opts --asym"; asym=1 ;;
	--rtn) rtn=1 ;;
	--no-sequential) seq= ;;
	--format) format=$2; shift ;;
	--shard-size) pack_opts="$pack_opts --shard-size $2"; shift ;;
	--fake-quant|--keep-dtype) pack_opts="$pack_opts $1" ;;
	--threads) solve_opts="$solve_opts --threads $2"; hess_opts="$hess_opts --threads $2"; shift ;;
	--save) save=$2; shift ;;
	--device) dev_opts="--device $2"; shift ;;
	-v|--verbose) verbose="$verbose -v" ;;
	-h|--help) usage 0 ;;
	*) echo "quantize.sh: unknown option '$1'" >&2; usage 2 ;;
	esac
	shift
done
# asymmetric zeros of 0 only fit GPTQModel's format
[ -n "$format" ] || { [ -n "$asym" ] && format=gptq_v2 || format=gptq; }
pack_opts="$pack_opts --format $format"

# Layers, Hessians and frames are hundreds of MB each, allocated afresh per
# layer; glibc's malloc then backs them with transparent huge pages where the
# kernel allows it (madvise mode), so touching them faults 512x less often.
# On a virtual machine 4 KB faults can cost ~16 us each: gptq-hessian over 4
# layers of a 7B-shaped model (8 tokens) took 50 s on a 2-core VM, 9 s with
# this. A GLIBC_TUNABLES of the caller's own is kept; other C libraries
# ignore the variable.
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/quantize.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

calib_opts="$calib_opts$verbose" hess_opts="$hess_opts$verbose" solve_opts="$solve_opts$verbose"
pack_opts="$pack_opts$verbose"

# Hessians cross the pipe into gptq-solve as packed lower triangles, half the
# bytes; the ones --save keeps stay whole, for whoever inspects them.
if [ -n "$save" ]; then
	mkdir -p "$save"
else
	hess_opts="$hess_opts --triangle"
fi

# saved FILE CMD...: CMD on stdin, which tee keeps in $save/FILE with --save.
# Without --save no tee copies the stream between the stages: every Hessian
# (485 MB for a 7B down_proj) and module would cross one more pipe, and
# gptq-pack would hold up the feedback (tee writes each chunk to all its
# outputs in turn). gptq-solve writes the feedback FIFO itself, first.
saved() {
	local file=$1
	shift
	if [ -n "$save" ]; then
		tee "$save/$file" | "$@"
	else
		"$@"
	fi
}

calib() {
	if [ -n "$calib_file" ]; then
		cat "$calib_file"
	else
		eval "gptq-calib -m \"\$model\" $calib_opts $texts"
	fi
}

# shellcheck disable=SC2086
if [ -n "$rtn" ]; then
	# round to nearest: no calibration, no Hessians
	gptq-solve -m "$model" --rtn --all $solve_opts |
		saved qlinear.gqs gptq-pack -m "$model" -o "$out" $pack_opts
elif [ -n "$seq" ]; then
	mkfifo "$tmp/feedback"
	calib | gptq-hessian -m "$model" --feedback "$tmp/feedback" $hess_opts $dev_opts |
		saved hessians.gqs gptq-solve -m "$model" $solve_opts $dev_opts --feedback "$tmp/feedback" |
		saved qlinear.gqs gptq-pack -m "$model" -o "$out" $pack_opts
else
	calib | gptq-hessian -m "$model" --no-sequential $hess_opts $dev_opts |
		saved hessians.gqs gptq-solve -m "$model" $solve_opts $dev_opts |
		saved qlinear.gqs gptq-pack -m "$model" -o "$out" $pack_opts
fi
