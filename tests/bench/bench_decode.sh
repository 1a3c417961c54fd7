#!/bin/bash
# CPU decoding, float32 vs GPTQ int4 (g128), on a llama with random weights
# large enough to be memory-bound (default 1.1B parameters: 16 layers, hidden
# 2048, MLP 5632, vocab 32000; made under $TMPDIR, never committed).
#
# Decoding one token reads every weight once, so int4 should approach the
# ratio of bytes the two read per token; the table prints both ratios.
#   BENCH_DECODE_SHAPE="LAYERS HIDDEN MLP VOCAB"  other shapes
#   BENCH_DECODE_TG=N                             tokens decoded per run (default 16)
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=$PWD/bin:$PATH
testgen=$(ls build/*/tests/gq-testgen 2>/dev/null | head -1)
[ -x "$testgen" ] || { echo "bench_decode: build gq-testgen first (make check)"; exit 1; }
read -r layers hidden mlp vocab <<<"${BENCH_DECODE_SHAPE:-16 2048 5632 32000}"
tg=${BENCH_DECODE_TG:-16}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/bench_decode.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$testgen" bigmodel "$tmp/fp" "$layers" "$hidden" "$mlp" "$vocab"
gptq-solve -q -m "$tmp/fp" --rtn --all --bits 4 --group-size 128 |
	gptq-pack -q -m "$tmp/fp" -o "$tmp/int4"

params=$(( layers * (4 * hidden * hidden + 3 * hidden * mlp) + 2 * vocab * hidden ))
echo "model: $layers layers, hidden $hidden, MLP $mlp, vocab $vocab ($((params / 1000000))M parameters); $(nproc) CPUs"
fp=$(gptq-run -q -m "$tmp/fp" --bench --pp 32 --tg "$tg" --reps 2 --json)
q4=$(gptq-run -q -m "$tmp/int4" --bench --pp 32 --tg "$tg" --reps 2 --json)
jq -rn --argjson fp "$fp" --argjson q4 "$q4" '
	def gb: (.linear_bytes + .head_bytes) / 1e9;
	"| weights | GB read/token | pp32 tok/s | tg\($fp.tg) tok/s | GB/s |",
	"|---------|---------------|------------|-----------|------|",
	($fp, $q4 | "| \(if .quant == "fp" then "f32" else "int\(.bits)" end) | \(gb * 1000 | round / 1000) | \(.pp_tok_s * 10 | round / 10) | \(.tg_tok_s * 100 | round / 100) | \(.tg_gb_s * 10 | round / 10) |"),
	"decode speed-up int4/f32: \($q4.tg_tok_s / $fp.tg_tok_s * 100 | round / 100)x; bytes ratio f32/int4: \(($fp | gb) / ($q4 | gb) * 100 | round / 100)x (\($q4.tg_tok_s / $fp.tg_tok_s / (($fp | gb) / ($q4 | gb)) * 100 | round)% of it)"'
