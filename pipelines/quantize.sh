#!/bin/sh
# quantize.sh - quantize a Hugging Face checkpoint with GPTQ in one pipeline:
#
#   gptq-calib | gptq-hessian --feedback FIFO | gptq-solve | tee FIFO | gptq-pack
#
# The FIFO carries each quantized module back to gptq-hessian, which computes
# the inputs of later modules and layers from the quantized weights
# (AutoGPTQ's true_sequential). OUT appears only when everything succeeded.
# See gptq-pipelines(7).
set -eu

usage() {
	cat <<'USAGE'
usage: quantize.sh MODEL OUT [--text FILE]... [--field NAME] [-n N] [-l LEN] [--seed S]
                   [--bits B] [--group-size G] [--desc-act] [--static-groups] [--asym]
                   [--damp F] [--mse] [--rtn] [--no-sequential] [--format gptq|gptq_v2]
                   [--shard-size SIZE] [--save DIR] [--threads N]
USAGE
	exit "${1:-2}"
}

[ $# -ge 1 ] && { [ "$1" = -h ] || [ "$1" = --help ]; } && usage 0
[ $# -ge 2 ] || usage 2
model=$1
out=$2
shift 2

texts= calib_opts= solve_opts= pack_opts= hess_opts= save= seq=1 rtn= format= asym=
while [ $# -gt 0 ]; do
	case $1 in
	--text) texts="$texts $(printf '%s' "$2" | sed "s/'/'\\\\''/g; s/^/'/; s/\$/'/")"; shift ;;
	--field) calib_opts="$calib_opts --field $2"; shift ;;
	-n|-l|--seed) calib_opts="$calib_opts $1 $2"; shift ;;
	--bits|--group-size|--damp) solve_opts="$solve_opts $1 $2"; shift ;;
	--desc-act|--static-groups|--mse) solve_opts="$solve_opts $1" ;;
	--asym) solve_opts="$solve_opts --asym"; asym=1 ;;
	--rtn) rtn=1 ;;
	--no-sequential) seq= ;;
	--format) format=$2; shift ;;
	--shard-size) pack_opts="$pack_opts --shard-size $2"; shift ;;
	--threads) solve_opts="$solve_opts --threads $2"; hess_opts="$hess_opts --threads $2"; shift ;;
	--save) save=$2; shift ;;
	-h|--help) usage 0 ;;
	*) echo "quantize.sh: unknown option '$1'" >&2; usage 2 ;;
	esac
	shift
done
# asymmetric zeros of 0 only fit GPTQModel's format
[ -n "$format" ] || { [ -n "$asym" ] && format=gptq_v2 || format=gptq; }
pack_opts="$pack_opts --format $format"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/quantize.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -n "$save" ]; then
	mkdir -p "$save"
	save_h="$save/hessians.gqs"
	save_q="$save/qlinear.gqs"
else
	save_h=/dev/null
	save_q=/dev/null
fi

# each stage leaves its exit status: a POSIX shell has no pipefail
stage() {
	name=$1
	shift
	set +e
	"$@"
	echo $? >"$tmp/$name.rc"
}

if [ -n "$rtn" ]; then
	# round to nearest: no calibration, no Hessians
	# shellcheck disable=SC2086
	{ stage solve gptq-solve -m "$model" --rtn --all $solve_opts; } |
		{ stage tee tee "$save_q"; } |
		{ stage pack gptq-pack -m "$model" -o "$out" $pack_opts; }
	stages="solve tee pack"
elif [ -n "$seq" ]; then
	mkfifo "$tmp/feedback"
	# shellcheck disable=SC2086
	{ eval "stage calib gptq-calib -m \"\$model\" $calib_opts $texts"; } |
		{ stage hessian gptq-hessian -m "$model" --feedback "$tmp/feedback" $hess_opts; } |
		{ stage tee_h tee "$save_h"; } |
		{ stage solve gptq-solve -m "$model" $solve_opts; } |
		{ stage tee tee "$tmp/feedback" "$save_q"; } |
		{ stage pack gptq-pack -m "$model" -o "$out" $pack_opts; }
	stages="calib hessian tee_h solve tee pack"
else
	# shellcheck disable=SC2086
	{ eval "stage calib gptq-calib -m \"\$model\" $calib_opts $texts"; } |
		{ stage hessian gptq-hessian -m "$model" --no-sequential $hess_opts; } |
		{ stage tee_h tee "$save_h"; } |
		{ stage solve gptq-solve -m "$model" $solve_opts; } |
		{ stage tee tee "$save_q"; } |
		{ stage pack gptq-pack -m "$model" -o "$out" $pack_opts; }
	stages="calib hessian tee_h solve tee pack"
fi

# report every failed stage: a broken pipe (141) is usually another's victim
failed=
for s in $stages; do
	rc=$(cat "$tmp/$s.rc" 2>/dev/null || echo 1)
	[ "$rc" = 0 ] || failed="$failed $s($rc)"
done
if [ -n "$failed" ]; then
	echo "quantize.sh: failed stages:$failed; '$out' was not written" >&2
	exit 1
fi
