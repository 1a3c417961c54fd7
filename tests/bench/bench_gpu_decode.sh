#!/bin/bash
# bench_gpu_decode.sh - decode batch 1 on the GPU: a llama-7B-shaped random
# checkpoint (32 layers, 4096, 11008, vocab 32000), our fp16 path against
# int4 g128 (RTN) in the same run, CUDA graphs on and off, and the fraction
# of the weights-bandwidth floor (bytes read per token / GQ_BENCH_BW, default
# 4.8e12 B/s, the H200's). With GQ_BENCH_TORCH=1, PyTorch transformers fp16
# generate on the same checkpoint as a second baseline (skipped when it does
# not load). GQ_BENCH_LAYERS shrinks the model for a quick run. Then a
# Mixtral shape (4096, 14336, 8 experts, 2 a token; GQ_BENCH_MOE_LAYERS
# layers, default 4, 0 to skip) in int4 g128, graphs (experts chosen on the
# device by switch nodes) on and off, and in fp16 (dense experts decode
# without graphs); its floor counts the 2 experts a token reads, not all 8.
#
# Needs gptq-* on PATH and GQ_TESTGEN (make bench-gpu sets both); writes
# under GQ_BENCH_DIR (default a temporary directory, removed at the end).
set -euo pipefail
L=${GQ_BENCH_LAYERS:-32}
ML=${GQ_BENCH_MOE_LAYERS:-4}
BW=${GQ_BENCH_BW:-4.8e12}
TG=${GQ_BENCH_TG:-128}
DIR=${GQ_BENCH_DIR:-$(mktemp -d)}
[ -n "${GQ_BENCH_DIR:-}" ] || trap 'rm -rf "$DIR"' EXIT

t0=$(date +%s)
"$GQ_TESTGEN" bigmodel "$DIR/fp" "$L" 4096 11008 32000
gptq-solve -q -m "$DIR/fp" --rtn --all --bits 4 --group-size 128 | gptq-pack -q -m "$DIR/fp" -o "$DIR/int4"
if [ "$ML" -gt 0 ]; then
	"$GQ_TESTGEN" bigmodel "$DIR/moe-fp" "$ML" 4096 14336 32000 8
	gptq-solve -q -m "$DIR/moe-fp" --rtn --all --bits 4 --group-size 128 |
		gptq-pack -q -m "$DIR/moe-fp" -o "$DIR/moe-int4"
fi
echo "checkpoints made in $(( $(date +%s) - t0 )) s" >&2

run() { # name model [flags]: one JSON line
	local name=$1 model=$2
	shift 2
	gptq-run -q -m "$model" --device cuda --bench --pp 512 --tg "$TG" --reps 3 --json "$@" |
		sed "s/^{/{\"case\":\"$name\",/"
}
{
	run fp16 "$DIR/fp"
	run int4 "$DIR/int4"
	run int4-nograph "$DIR/int4" --no-graphs
	if [ "$ML" -gt 0 ]; then
		run moe-int4 "$DIR/moe-int4"
		run moe-int4-nograph "$DIR/moe-int4" --no-graphs
		run moe-fp16 "$DIR/moe-fp"
	fi
} >"$DIR/res.jsonl"
python3 - "$DIR/res.jsonl" "$BW" <<'EOF'
import json, sys
rows = {r["case"]: r for r in map(json.loads, open(sys.argv[1]))}
bw = float(sys.argv[2])
# of the MoE linears a token reads the attention and 2 of the 8 experts
attn, expert = 4 * 4096 * 4096, 3 * 4096 * 14336
active = (attn + 2 * expert) / (attn + 8 * expert)
print("| case             | tg tok/s        | pp tok/s  | GB/token | floor tok/s | of floor |")
print("|------------------|-----------------|-----------|----------|-------------|----------|")
for k, r in rows.items():
    b = r["linear_bytes"] * (active if k.startswith("moe") else 1) + r["head_bytes"]
    print(f"| {k:16} | {r['tg_tok_s']:8.1f} ± {r['tg_sd']:4.1f} | {r['pp_tok_s']:9.0f} | {b / 1e9:8.3f} | {bw / b:11.0f} | {r['tg_tok_s'] * b / bw:8.1%} |")
f, q, n = rows["fp16"], rows["int4"], rows["int4-nograph"]
print(f"int4 / fp16 decode: {q['tg_tok_s'] / f['tg_tok_s']:.2f}x; graphs on / off: {q['tg_tok_s'] / n['tg_tok_s']:.2f}x")
if "moe-int4" in rows:
    print(f"MoE graphs on / off: {rows['moe-int4']['tg_tok_s'] / rows['moe-int4-nograph']['tg_tok_s']:.2f}x")
EOF
if [ "${GQ_BENCH_TORCH:-0}" = 1 ]; then
	python3 - "$DIR/fp" "$TG" <<'EOF' || echo "torch baseline: did not run" >&2
import sys, time, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float16).cuda().eval()
n = int(sys.argv[2])
ids = torch.tensor([[1]], device="cuda")
kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False)
m.generate(ids, **kw)
torch.cuda.synchronize(); t = time.time()
m.generate(ids, **kw)
torch.cuda.synchronize()
print(f"torch transformers fp16 generate: {n / (time.time() - t):.1f} tok/s")
EOF
fi
