#!/bin/bash
# bench_memory.sh - host memory stays near one layer plus the calibration
# activations whatever the model's size: random-weight llamas of a few sizes
# (default 2 and 20 GB of bf16 weights, made under a temporary directory and
# removed afterwards) quantized by the full sequential pipeline
# (pipelines/quantize.sh: calibration tokens, Hessians with feedback, GPTQ,
# packing), every tool's peak RSS and times taken as /usr/bin/time -v does.
#
# Layers are narrow (hidden 512) and many: GPTQ costs about in_features flops
# per weight, so wide layers would take longer still while the memory
# question is the same. Even so the solves take about 100 CPU seconds per GB
# on a small machine: the 20 GB model is hours on 2 cores, half an hour with
# GQ_BENCH_MEM_SEQUENTIAL=0 (GQ_BENCH_MEM_GB=1 for a quick run). Prints a
# table; exits 1 when a tool's peak RSS exceeds the budget.
#
#   GQ_BENCH_MEM_GB="2 20"   model sizes in GB (10^9 bytes of weights)
#   GQ_BENCH_MEM_HIDDEN=512  hidden size (intermediate = 2 x hidden)
#   GQ_BENCH_MEM_MODEL=DIR   measure this llama checkpoint (vocab >= 32000) instead
#   GQ_BENCH_MEM_SEQUENTIAL=0  quantize.sh --no-sequential: the Hessians no longer
#                            wait for the solves, so the run takes about the solves'
#                            time instead of the sum (the memory question is the same)
#   GQ_BENCH_MEM_BUDGET_MB=4096
#   GQ_BENCH_MEM_TMP         where the models go (default: $TMPDIR or /tmp)
set -euo pipefail
sizes=${GQ_BENCH_MEM_GB:-2 20}
hidden=${GQ_BENCH_MEM_HIDDEN:-512}
given=${GQ_BENCH_MEM_MODEL:-}
budget=${GQ_BENCH_MEM_BUDGET_MB:-4096}
mode=
[ "${GQ_BENCH_MEM_SEQUENTIAL:-1}" = 1 ] || mode=--no-sequential
[ -z "$given" ] || sizes=given
testgen=${GQ_TESTGEN:-$(ls "$(dirname "$0")"/../../build/*/tests/gq-testgen 2>/dev/null | head -1)}
pipelines=$(cd "$(dirname "$0")/../../pipelines" && pwd)
if [ ! -x "$testgen" ]; then
	echo "bench_memory: needs gq-testgen (make builds it), skipped"
	exit 0
fi
tmp=$(mktemp -d "${GQ_BENCH_MEM_TMP:-${TMPDIR:-/tmp}}/bench_memory.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# Every tool through a wrapper that logs "tool maxrss_kb wall user sys" from
# wait4(), what /usr/bin/time -v reports. /usr/bin/time itself cannot wrap a
# stage: it keeps the stage's pipes open, and the feedback loop never ends.
mkdir "$tmp/wrap"
cat >"$tmp/wrap/measure.py" <<'PY'
import os, sys, time
log, tool = sys.argv[1], sys.argv[2]
t0 = time.time()
pid = os.fork()
if pid == 0:
    os.execv(tool, [tool] + sys.argv[3:])
os.close(0)
os.close(1)  # the child alone holds the pipeline's ends
_, status, ru = os.wait4(pid, 0)
with open(log, "a") as f:
    f.write("%s %d %.2f %.2f %.2f\n" % (os.path.basename(tool), ru.ru_maxrss, time.time() - t0,
                                        ru.ru_utime, ru.ru_stime))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
PY
for tool in gptq-calib gptq-hessian gptq-solve gptq-pack gptq-dump; do
	printf '#!/bin/sh\nexec python3 "%s" "%s" "%s" "$@"\n' "$tmp/wrap/measure.py" "$tmp/times" \
		"$(command -v "$tool")" >"$tmp/wrap/$tool"
	chmod +x "$tmp/wrap/$tool"
done
PATH=$tmp/wrap:$PATH

inter=$((2 * hidden))
vocab=32000
# bf16 bytes: q k v o (4 h^2), gate up down (3 h i), two norms
per_layer=$(((4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) * 2))
fixed=$(((2 * vocab * hidden + hidden) * 2))
"$testgen" tokens 4 32 0 "$vocab" >"$tmp/calib.gqs"

printf '%8s %7s %7s %9s | %-12s %9s %8s %9s\n' "model GB" layers "layer MB" "gen s" stage "peak MB" "wall s" "cpu s"
fail=0
for gb in $sizes; do
	model=$tmp/model gen=0
	if [ -n "$given" ]; then
		model=$given
		info=$(gptq-dump --model-info "$model")
		layers=$(printf '%s\n' "$info" | sed -n 's/.*"n_layers":\([0-9]*\).*/\1/p')
		hidden=$(printf '%s\n' "$info" | sed -n 's/.*"hidden":\([0-9]*\).*/\1/p')
		inter=$(printf '%s\n' "$info" | sed -n 's/.*"intermediate":\([0-9]*\).*/\1/p')
		per_layer=$(((4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) * 2))
	else
		layers=$(awk -v gb="$gb" -v f="$fixed" -v l="$per_layer" \
			'BEGIN { n = int((gb * 1e9 - f) / l); print n < 1 ? 1 : n }')
		start=$(date +%s.%N)
		"$testgen" bigmodel "$model" "$layers" "$hidden" "$inter" "$vocab"
		gen=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
	fi
	size=$(du -sbL "$model" | cut -f1)
	: >"$tmp/times"
	start=$(date +%s.%N)
	# shellcheck disable=SC2086
	"$pipelines/quantize.sh" "$model" "$tmp/out" --calib "$tmp/calib.gqs" --group-size 128 $mode
	total=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
	awk -v gb="$(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1e9 }')" -v layers="$layers" -v gen="$gen" \
		-v lmb="$(awk -v l="$per_layer" 'BEGIN { printf "%.1f", l / 1e6 }')" -v total="$total" -v budget="$budget" '
		{ rss[$1] = $2; wall[$1] = $3; cpu[$1] = $4 + $5; sum += $2 }
		END {
			n = split("gptq-hessian gptq-solve gptq-pack", order, " ")
			for (i = 1; i <= n; i++) {
				t = order[i]
				printf "%8s %7s %7s %9s | %-12s %9.0f %8.1f %9.1f\n", i == 1 ? sprintf("%.2f", gb) : "",
					i == 1 ? layers : "", i == 1 ? lmb : "", i == 1 ? sprintf("%.0f", gen) : "",
					t, rss[t] / 1024, wall[t], cpu[t]
				if (rss[t] / 1024 > budget) over = 1
			}
			printf "%8s %7s %7s %9s | %-12s %9.0f %8.1f\n", "", "", "", "", "pipeline", sum / 1024, total
			exit over
		}' "$tmp/times" || fail=1
	rm -rf "$tmp/model" "$tmp/out"
done
echo "(peak MB: each tool's maximum resident set; the tools run at once, so the pipeline's is at"
echo " most their sum; cpu s: user + system; budget $budget MB per tool)"
exit "$fail"
