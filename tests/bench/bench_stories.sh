#!/bin/bash
# bench_stories.sh - GPTQ against round-to-nearest on a real trained model:
# stories260K calibrated on the first half of TinyStories (as the quantize
# acceptance asks), layer objective Σ (W-Q) H (W-Q)ᵀ per module on the same
# sequential Hessians, and wall time, for 8/4/3-bit g32 and 4-bit g128.
# Needs ../shared; prints a table.
set -euo pipefail
shared=${GQ_SHARED:-../shared}
model=$shared/models/stories260K
text=$shared/text/tinystories_val_first.txt
if [ ! -d "$model" ] || [ ! -f "$text" ]; then
	echo "bench_stories: $model or $text not present, skipped"
	exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
head -c $(($(wc -c <"$text") / 2)) "$text" >"$tmp/half.txt"
gptq-calib -m "$model" -n 128 -l 256 --seed 0 "$tmp/half.txt" >"$tmp/calib.gqs"
mkfifo "$tmp/fb"

printf '%-10s %8s %12s %12s %10s %10s %8s\n' config modules "gptq obj" "rtn obj" "mean g/r" "worst g/r" seconds
for cfg in "8 32" "4 32" "3 32" "4 128"; do
	set -- $cfg
	start=$(date +%s.%N)
	gptq-hessian -m "$model" --feedback "$tmp/fb" "$tmp/calib.gqs" | tee "$tmp/h.gqs" |
		gptq-solve -m "$model" -b "$1" -g "$2" --objective | tee "$tmp/fb" >"$tmp/q.gqs"
	end=$(date +%s.%N)
	gptq-solve -m "$model" -b "$1" -g "$2" --rtn --objective "$tmp/h.gqs" >"$tmp/r.gqs"
	for f in q r; do
		gptq-dump "$tmp/$f.gqs" | jq -r 'select(.kind == "report") | .metadata.modules' |
			jq -r 'to_entries[] | "\(.key) \(.value.objective)"' >"$tmp/$f.txt"
	done
	paste "$tmp/q.txt" "$tmp/r.txt" | awk -v cfg="b$1 g$2" -v secs="$(echo "$end - $start" | bc)" '
		{ n++; g += $2; r += $4; q = $2 / $4; s += q; if (q > w) w = q }
		END { printf "%-10s %8d %12.4g %12.4g %10.3f %10.3f %8.2f\n", cfg, n, g, r, s / n, w, secs }'
done
echo "(objective summed over modules; g/r = GPTQ over RTN per module, worst must stay < 1)"
