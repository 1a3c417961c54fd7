#!/bin/bash
# submit.sh - quantize a model on a Slurm cluster: submits the stage scripts
# of this directory as jobs tied by afterok dependencies, and prints their ids.
#
#   sequential (default, AutoGPTQ's true_sequential), layer after layer:
#     --chain steps (the default with several shards): for every step of the
#     layer (q/k/v, o, gate/up, down) step.sbatch as an array over the shards,
#     then reduce.sbatch merging and solving; state.sbatch, an array over the
#     shards, computes the next layer's inputs; --chain layers (the default
#     with one shard): layer.sbatch, one job per layer;
#   --no-sequential: hessian.sbatch as an array over the calibration shards,
#     merge.sbatch, solve.sbatch as an array over every group of linears of
#     every layer, pack.sbatch;
#   then eval.sbatch when --eval-text is given.
#
# Every job reads its settings from the environment submit.sh exports (sbatch
# passes it on), including PATH: the gptq tools must be on it, at the same
# place on every node, and MODEL, OUT, WORK and the shards on a shared file
# system. A failed job cancels those after it (--kill-on-invalid-dep);
# submitting again with the same options reuses every Hessian part, solve
# and layer already complete. --local runs
# the same scripts one after the other in this shell, without Slurm.
# See gptq-pipelines(7).
set -euo pipefail

usage() {
	[ "${1:-2}" = 0 ] || exec >&2
	cat <<'USAGE'
usage: submit.sh MODEL OUT --calib TOKENS.gqs [--calib TOKENS.gqs]... [--no-sequential]
                 [--bits B] [--group-size G] [--desc-act] [--static-groups] [--asym]
                 [--damp F] [--mse] [--format gptq|gptq_v2] [--work DIR]
                 [--chain steps|layers] [--eval-text FILE] [--eval-protocol llamacpp|gptq]
                 [--sbatch OPTIONS] [--wait | --local]
USAGE
	exit "${1:-2}"
}
die() {
	echo "submit.sh: $*" >&2
	exit 1
}
usage_error() {
	echo "submit.sh: $*" >&2
	usage 2
}

[ $# -ge 1 ] && { [ "$1" = -h ] || [ "$1" = --help ]; } && usage 0
[ $# -ge 2 ] || usage 2
abs() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$PWD" "$1" ;; esac; }
model=$(abs "$1")
out=$(abs "$2")
shift 2

seq=1 work= shards= solve= make_opts= format= asym= eval_text= eval_protocol=llamacpp
sbatch_opts= mode=submit chain=
while [ $# -gt 0 ]; do
	case $1 in
	--calib|--chain|--bits|--group-size|--damp|--format|--work|--eval-text|--eval-protocol|--sbatch)
		[ $# -ge 2 ] || usage_error "$1 needs an argument" ;;
	esac
	case $1 in
	--calib) [ -f "$2" ] || die "cannot read calibration shard '$2'"
		shards="$shards$(abs "$2")"$'\n'; shift ;;
	--no-sequential) seq=0 ;;
	--chain) case $2 in steps|layers) chain=$2 ;; *) usage_error "--chain: '$2' is not steps or layers" ;; esac
		shift ;;
	--bits) solve="$solve --bits $2"; make_opts="$make_opts BITS=$2"; shift ;;
	--group-size) solve="$solve --group-size $2"; make_opts="$make_opts GROUP=$2"; shift ;;
	--damp) solve="$solve --damp $2"; make_opts="$make_opts DAMP=$2"; shift ;;
	--desc-act) solve="$solve --desc-act"; make_opts="$make_opts DESC_ACT=1" ;;
	--static-groups) solve="$solve --static-groups"; make_opts="$make_opts STATIC_GROUPS=1" ;;
	--mse) solve="$solve --mse"; make_opts="$make_opts MSE=1" ;;
	--asym) solve="$solve --asym"; make_opts="$make_opts SYM=0"; asym=1 ;;
	--format) format=$2; shift ;;
	--work) work=$(abs "$2"); shift ;;
	--eval-text) eval_text=$(abs "$2"); shift ;;
	--eval-protocol) eval_protocol=$2; shift ;;
	--sbatch) sbatch_opts="$sbatch_opts $2"; shift ;;
	--wait|--local) [ "$mode" = submit ] || usage_error "cannot use --wait with --local"
		mode=${1#--} ;;
	-h|--help) usage 0 ;;
	*) usage_error "unknown option '$1'" ;;
	esac
	shift
done
[ -n "$shards" ] || usage_error "--calib TOKENS.gqs is required"
[ "$seq" = 1 ] || [ -z "$chain" ] || usage_error "cannot use --chain with --no-sequential"
[ -n "$format" ] || { [ -n "$asym" ] && format=gptq_v2 || format=gptq; }
make_opts="$make_opts FORMAT=$format"
[ -n "$work" ] || work=$out.work
if [ -n "$eval_text" ]; then
	command -v gptq-eval >/dev/null || die "--eval-text needs gptq-eval on PATH"
	[ -f "$eval_text" ] || die "cannot read '$eval_text'"
fi
if [ "$mode" != local ]; then
	command -v sbatch >/dev/null || die "sbatch not found (use --local to run without Slurm)"
fi
info=$(gptq-dump --model-info "$model") || die "cannot read the model '$model'"
layers=$(printf '%s\n' "$info" | sed -n 's/.*"n_layers":\([0-9]*\).*/\1/p')
groups=$(printf '%s\n' "$info" | tr '{' '\n' |
	sed -n 's/.*"group":\([0-9][0-9]*\).*/\1/p' | sort -u | wc -l)
steps=$(printf '%s\n' "$info" | sed -n 's/.*"steps":\([0-9]*\).*/\1/p')
nshards=$(printf '%s' "$shards" | wc -l)
[ -n "$chain" ] || { [ "$nshards" -gt 1 ] && chain=steps || chain=layers; }

mkdir -p "$work/logs"
printf '%s' "$shards" >"$work/shards"
GQ_PIPELINES=$(cd "$(dirname "$0")/.." && pwd)
export GQ_PIPELINES GQ_MODEL=$model GQ_OUT=$out GQ_WORK=$work GQ_SEQUENTIAL=$seq GQ_CHAIN=$chain
export GQ_SOLVE_OPTS=$solve GQ_PACK_OPTS="--format $format" GQ_MAKE_OPTS=$make_opts
export GQ_NSOLVE=$((layers * groups)) GQ_EVAL_TEXT=$eval_text GQ_EVAL_PROTOCOL=$eval_protocol
# huge pages for the large buffers, as quantize.sh (the caller's own value kept)
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}

# stage DEP TASKS SCRIPT [ARG]: runs SCRIPT after job DEP (or none) as an
# array of TASKS tasks (0: a single job) and prints the job id; with --wait,
# the last stage returns only when its job has ended, failing when it (or,
# through the cancelled dependencies, any job before it) failed
stage() {
	local dep=$1 tasks=$2 script=$GQ_PIPELINES/slurm/$3 id state
	local log=$work/logs/%x-%j.out array=()
	shift 3
	if [ "$mode" = local ]; then
		if [ "$tasks" -gt 0 ]; then
			for t in $(seq 0 $((tasks - 1))); do
				SLURM_ARRAY_TASK_ID=$t bash "$script" "$@" >&2 || return 1
			done
		else
			bash "$script" "$@" >&2 || return 1
		fi
		echo local
		return
	fi
	[ "$tasks" -eq 0 ] || array=(--array=0-$((tasks - 1))) log=$work/logs/%x-%A_%a.out
	# shellcheck disable=SC2086
	id=$(sbatch --parsable --kill-on-invalid-dep=yes --output="$log" \
		${dep:+--dependency=afterok:$dep} "${array[@]}" $sbatch_opts "$script" "$@") || return 1
	id=${id%%;*}
	if [ "$mode" = wait ] && [ "$script" = "$last" ]; then
		# polled here: sbatch --wait checks ever more rarely, and exits 0 for a
		# job cancelled because a dependency failed
		while state=$(scontrol -o show job "$id" | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p') &&
			case $state in PENDING|CONFIGURING|RUNNING|COMPLETING|SUSPENDED) true ;; *) false ;; esac; do
			sleep 1
		done
		[ "$state" = COMPLETED ] || return 1
	fi
	echo "$id"
}

# the last job submitted is the one --wait waits for
last=$GQ_PIPELINES/slurm/pack.sbatch
[ -z "$eval_text" ] || last=$GQ_PIPELINES/slurm/eval.sbatch
if [ "$seq" = 1 ] && [ "$chain" = layers ]; then
	dep=
	for i in $(seq 0 $((layers - 1))); do
		dep=$(stage "$dep" 0 layer.sbatch "$i") || die "layer $i failed"
		echo "layer $i: job $dep"
	done
elif [ "$seq" = 1 ]; then
	dep=
	for i in $(seq 0 $((layers - 1))); do
		for s in $(seq 0 $((steps - 1))); do
			dep=$(stage "$dep" "$nshards" step.sbatch "$i" "$s") || die "layer $i step $s failed"
			echo "layer $i step $s ($nshards shards): job $dep"
			dep=$(stage "$dep" 0 reduce.sbatch "$i" "$s") || die "layer $i step $s failed"
			echo "layer $i step $s solve: job $dep"
		done
		[ "$i" -lt $((layers - 1)) ] || break
		dep=$(stage "$dep" "$nshards" state.sbatch "$i") || die "layer $i failed"
		echo "layer $i state ($nshards shards): job $dep"
	done
else
	dep=$(stage "" "$nshards" hessian.sbatch) || die "Hessian collection failed"
	echo "hessians ($nshards shards): job $dep"
	dep=$(stage "$dep" 0 merge.sbatch) || die "merge failed"
	echo "merge: job $dep"
	dep=$(stage "$dep" "$GQ_NSOLVE" solve.sbatch) || die "solves failed"
	echo "solves ($GQ_NSOLVE): job $dep"
fi
dep=$(stage "$dep" 0 pack.sbatch) || die "a job failed (logs in $work/logs)"
echo "pack: job $dep"
if [ -n "$eval_text" ]; then
	dep=$(stage "$dep" 0 eval.sbatch) || die "a job failed (logs in $work/logs)"
	echo "eval: job $dep"
fi
