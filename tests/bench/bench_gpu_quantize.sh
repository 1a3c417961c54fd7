#!/bin/bash
# bench_gpu_quantize.sh - quantizing end to end on the GPU: a llama-7B-shaped
# random checkpoint (32 layers, 4096, 11008, vocab 32000), 128 x 2048 random
# calibration tokens, sequential GPTQ int4 g128, the pipeline quantize.sh runs
# (gptq-hessian --triangle | gptq-solve --feedback | gptq-pack, both on the
# device). The baseline in the same run is that pipeline with gptq-hessian
# --recompute (every sequential step from the layer's input, as before
# activations were kept), which must give the same checkpoint. Prints both
# totals, their ratio, the aim (60 s at 32 layers), and
# where a layer's time goes (gptq-hessian -v, the mean over the layers after
# the first, whose load nothing hides). GQ_BENCH_LAYERS shrinks the model,
# GQ_BENCH_SAMPLES the calibration; GQ_BENCH_DEVICE picks the GPU (cuda).
#
# Needs gptq-* on PATH and GQ_TESTGEN (make bench-gpu sets both); writes
# under GQ_BENCH_DIR (default a temporary directory, removed at the end).
set -euo pipefail
L=${GQ_BENCH_LAYERS:-32}
N=${GQ_BENCH_SAMPLES:-128}
DEV=${GQ_BENCH_DEVICE:-cuda}
DIR=${GQ_BENCH_DIR:-$(mktemp -d)}
[ -n "${GQ_BENCH_DIR:-}" ] || trap 'rm -rf "$DIR"' EXIT
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1} # as quantize.sh does

t0=$(date +%s)
"$GQ_TESTGEN" bigmodel "$DIR/fp" "$L" 4096 11008 32000
python3 -c "
import random; random.seed(1)
print('[' + ','.join(str(random.randrange(3, 32000)) for _ in range($N * 2048 + 1)) + ']')" >"$DIR/ids.json"
gptq-calib -q --ids -n "$N" -l 2048 "$DIR/ids.json" -o "$DIR/calib.gqs"
echo "checkpoint and calibration made in $(($(date +%s) - t0)) s" >&2

# name [gptq-hessian flags]: the seconds on stdout, the stages' -v lines in $DIR/name.log
quantize() {
	local name=$1 t=$EPOCHREALTIME
	shift
	rm -rf "$DIR/fb" "${DIR:?}/$name"
	mkfifo "$DIR/fb"
	{ gptq-hessian -v -m "$DIR/fp" --feedback "$DIR/fb" --device "$DEV" --triangle "$@" "$DIR/calib.gqs" |
		gptq-solve -v -m "$DIR/fp" --bits 4 --group-size 128 --device "$DEV" --feedback "$DIR/fb" |
		gptq-pack -q -m "$DIR/fp" -o "$DIR/$name"; } 2>"$DIR/$name.log"
	awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $t }"
}
kept=$(quantize kept)
recompute=$(quantize recompute --recompute)
# the same Hessians either way, so the same checkpoint
cmp "$DIR/kept/model.safetensors" "$DIR/recompute/model.safetensors" >&2

python3 - "$DIR" "$kept" "$recompute" "$L" <<'PY'
import re, sys
d, kept, base, layers = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
phases = ["load", "upload", "forward and H", "hessians out", "feedback wait"]

def breakdown(name):
    rows, solve = [], 0.0
    for line in open(f"{d}/{name}.log"):
        m = re.match(r"gptq-hessian: layer (\d+): (.*)", line)
        if m and int(m.group(1)) > 0:
            rows.append(dict(zip(phases, map(float, re.findall(r"([\d.]+) s", m.group(2))))))
        s = re.search(r"gptq loss \S+ in ([\d.]+)s", line)
        if s:
            solve += float(s.group(1))
    return [sum(r[p] for r in rows) / max(len(rows), 1) for p in phases], solve

print("| schedule  | total s | vs recompute | per layer s: " + " | ".join(phases) + " | solving |")
print("|-----------|---------|--------------|-" + "-|-".join("-" * len(p) for p in phases) + "-|---------|")
for name, total in (("kept", kept), ("recompute", base)):
    mean, solve = breakdown(name)
    print(f"| {name:9} | {total:7.1f} | {base / total:11.2f}x | " +
          " | ".join(f"{m:{len(p)}.2f}" for m, p in zip(mean, phases)) + f" | {solve / layers:7.2f} |")
print(f"kept: {kept:.1f} s for {layers} layers; the aim is 60 s at 32 layers: "
      f"{kept * 32 / layers / 60:.2f}x of it, scaled to 32")
PY
