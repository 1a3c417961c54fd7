#!/bin/sh
# corpus.sh OUT BINDIR TESTGEN - build the seed corpora of the fuzz harnesses
# under OUT/<target>/ from tests/data, ../shared (GQ_SHARED, when present)
# and small streams and checkpoints the tools make. Nothing here is
# committed: the corpora are rebuilt at every make fuzz.
set -eu

mkdir -p "$1"
out=$(cd "$1" && pwd) bin=$2 testgen=$3
root=$(cd "$(dirname "$0")/../.." && pwd)
data=$root/tests/data
shared=${GQ_SHARED:-$root/../shared}
work=$out/.work

rm -rf "$work"
mkdir -p "$work"
for t in stream safetensors config tokenizer tokenize checkpoint; do
	mkdir -p "$out/$t"
done

# seed TARGET NAME: stdin becomes OUT/TARGET/NAME
seed() {
	cat >"$out/$1/$2"
}

# header FILE: the JSON header of a safetensors file
header() {
	len=$(od -An -t u8 -N 8 "$1" | tr -d ' ')
	dd if="$1" bs=1 skip=8 count="$len" status=none
}

# rec SEL FILE: one checkpoint-archive record (fuzz_checkpoint.c): the file
# selector byte, the length as u32 little-endian, the bytes
rec() {
	n=$(wc -c <"$2")
	printf "$(printf '\\%03o\\%03o\\%03o\\%03o\\%03o' "$1" $((n & 255)) $((n >> 8 & 255)) \
		$((n >> 16 & 255)) $((n >> 24 & 255)))"
	cat "$2"
}

# ckpt DIR: a model directory as one archive
ckpt() {
	i=0
	for f in config.json model.safetensors model.safetensors.index.json \
		model-00001-of-00002.safetensors model-00002-of-00002.safetensors quantize_config.json; do
		[ -f "$1/$f" ] && rec $i "$1/$f"
		i=$((i + 1))
	done
}

# --- streams the tools make (small: mutations stay fast) ---
cd "$work"
"$testgen" checkpoint ck1 1 32 16
"$testgen" checkpoint ck2 2 32 16
"$testgen" hessian 16 1 2 >hessian.gqs
"$testgen" tokens 2 8 0 32 >tokens.gqs
"$testgen" hframe 16 model.layers.0.self_attn.q_proj,model.layers.0.self_attn.k_proj 0 spd >hframe.gqs
"$testgen" report >report.gqs
"$testgen" dtypes >dtypes.safetensors
PATH=$bin:$PATH
gptq-solve -m ck1 --rtn --all -g 16 -o q.gqs
gptq-pack -m ck1 -o packed <q.gqs
gptq-pack --unpack -m packed -z -o unpacked.gqs.zst
gptq-hessian -m ck1 --no-sequential tokens.gqs >h.gqs
gptq-dump --extract model.layers.0.self_attn.q_proj -o q0.safetensors q.gqs
zstd -q -o tokens.gqs.zst tokens.gqs
cat hessian.gqs tokens.gqs.zst report.gqs >mixed.gqs
for f in hessian.gqs tokens.gqs hframe.gqs report.gqs dtypes.safetensors q0.safetensors \
	unpacked.gqs.zst h.gqs tokens.gqs.zst mixed.gqs; do
	seed stream "$f" <"$f"
done
for f in hessian.gqs tokens.gqs report.gqs dtypes.safetensors q0.safetensors h.gqs \
	ck1/model.safetensors packed/model.safetensors; do
	header "$f" | seed safetensors "$(echo "$f" | tr / _)"
done
ckpt ck1 | seed checkpoint ck1
ckpt ck2 | seed checkpoint ck2
ckpt packed | seed checkpoint packed
{ printf '\377'; cat q0.safetensors; } | seed checkpoint raw-q0
{ printf '\377'; cat dtypes.safetensors; } | seed checkpoint raw-dtypes
{ cat packed/config.json; printf '\0'; cat packed/quantize_config.json; } | seed config packed

# --- tests/data ---
for d in "$data"/models/*/; do
	m=$(basename "$d")
	seed config "$m" <"$d/config.json"
	header "$d/model.safetensors" | seed safetensors "$m"
done
# two whole tiny models for the stream reader and the loader
for m in qwen3 gpt2_layer_scaled; do
	seed stream "$m" <"$data/models/$m/model.safetensors"
	ckpt "$data/models/$m" | seed checkpoint "$m"
done
{ cat "$data/tokenizer/tokenizer.json"; printf '\0'; cat "$data/tokenizer/tokenizer_config.json"; } |
	seed tokenizer bundled
# the tokenize harness: a selector byte (0 the bundled tokenizer, 1 stories260K,
# 2 Qwen2; +3 adds special tokens) and the text
i=0
for sel in 0 1 2 3 4 5; do
	{ printf "\\$(printf %03o $sel)"; head -c $((600 + 300 * i)) "$data/corpus.txt" | tail -c 600; } |
		seed tokenize "corpus-$sel"
	i=$((i + 1))
done

# --- ../shared, when present ---
if [ -d "$shared" ]; then
	for d in "$shared"/fixtures/models/*/ "$shared"/models/stories260K/; do
		[ -f "$d/config.json" ] && seed config "shared-$(basename "$d")" <"$d/config.json"
		[ -f "$d/model.safetensors" ] && header "$d/model.safetensors" |
			seed safetensors "shared-$(basename "$d")"
	done
	for d in "$shared"/tokenizers/llama2 "$shared"/tokenizers/qwen2 "$shared"/models/stories260K; do
		[ -f "$d/tokenizer.json" ] || continue
		{ cat "$d/tokenizer.json"; printf '\0'; cat "$d/tokenizer_config.json"; } |
			seed tokenizer "shared-$(basename "$d")"
	done
	for c in "$shared"/tokenizers/*.cases.json; do
		[ -f "$c" ] || continue
		count=$(jq '.cases | length' "$c")
		n=0
		while [ $n -lt "$count" ] && [ $n -lt 40 ]; do
			{ printf "\\$(printf %03o $((n % 6)))"; jq -j ".cases[$n].text" "$c"; } |
				seed tokenize "$(basename "$c" .cases.json)-$n"
			n=$((n + 1))
		done
	done
fi
rm -rf "$work"
for t in stream safetensors config tokenizer tokenize checkpoint; do
	echo "fuzz corpus: $t: $(ls "$out/$t" | wc -l) seeds"
done
