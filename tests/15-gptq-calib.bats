#!/usr/bin/env bats
# gptq-calib: the three ways to cut samples, the input formats, determinism,
# and the errors for too little or malformed input.

load helpers

setup() {
	setup_tools
	M=$BATS_TEST_DIRNAME/data/tokenizer
	C=$BATS_TEST_DIRNAME/data/corpus.txt
	D=$BATS_TEST_DIRNAME/data/docs.jsonl
}

@test "random windows: N x LEN tokens, recorded in the metadata" {
	gptq-calib -m "$M" -n 16 -l 64 --seed 3 "$C" >c.gqs
	gptq-dump --stats c.gqs >out.json
	[ "$(jq -c '.tensors | map([.name, .dtype, .shape])' out.json)" = '[["input_ids","I32",[16,64]]]' ]
	[ "$(jq -c '.metadata | [.["gptq.kind"], .mode, .seqlen, .nsamples, .seed, .bos]' out.json)" = \
		'["tokens","windows","64","16","3","0"]' ]
	[ "$(jq '.tensors[0].stats.max < 448 and .tensors[0].stats.min >= 0' out.json)" = true ]
}

@test "the same seed gives the same bytes; another seed other windows" {
	gptq-calib -m "$M" -n 8 -l 32 --seed 7 "$C" >a.gqs
	gptq-calib -m "$M" -n 8 -l 32 --seed 7 <"$C" >b.gqs
	cmp a.gqs b.gqs
	gptq-calib -m "$M" -n 8 -l 32 --seed 8 "$C" >c.gqs
	! cmp -s a.gqs c.gqs
}

@test "--eval cuts contiguous chunks of the whole corpus; --bos starts each with BOS" {
	gptq-calib -m "$M" --eval -l 512 "$C" | gptq-dump >e.json
	n=$(jq -r .metadata.nsamples e.json)
	[ "$n" -gt 100 ]
	gptq-calib -m "$M" --eval --bos -l 512 -n 5 "$C" >b.gqs
	gptq-dump --extract input_ids -o ids.safetensors b.gqs
	[ "$(gptq-dump ids.safetensors | jq -c '.tensors[0].shape')" = "[5,512]" ]
	# the first id of every row is BOS (446); nowhere else in this text
	[ "$(gptq-calib -m "$M" --eval --bos -l 512 -n 5 "$C" | gptq-dump --stats | jq .tensors[0].stats.max)" = 446 ]
}

@test "--docs: one padded sample per document with an attention mask" {
	gptq-calib -m "$M" --docs -l 512 --field text "$D" | gptq-dump --stats >d.json
	[ "$(jq -c '.tensors | map(.name)' d.json)" = '["input_ids","attention_mask"]' ]
	[ "$(jq -c '.tensors[0].shape[0]' d.json)" = 40 ]
	# documents shorter than the longest are padded: the mask has zeros
	[ "$(jq '.tensors[1].stats.zeros > 0' d.json)" = true ]
	# all truncated to 64 tokens: nothing padded, no mask
	gptq-calib -m "$M" --docs -l 64 --field text "$D" | gptq-dump | jq -c '.tensors | map([.name, .shape])' >full
	[ "$(cat full)" = '[["input_ids",[40,64]]]' ]
	gptq-calib -m "$M" --docs -n 3 --field text "$D" | gptq-dump | jq -c '.tensors[0].shape' | grep -q '^\[3,'
}

@test "pre-tokenized input needs no tokenizer" {
	printf '[1,2,3]\n{"input_ids":[4,5]}\n' >ids.jsonl
	gptq-calib --ids --docs ids.jsonl | gptq-dump --stats >i.json
	[ "$(jq -c '.tensors[0].shape' i.json)" = "[2,3]" ]
	[ "$(jq '.tensors[1].stats.zeros' i.json)" -eq 1 ]
	seq 0 99 | paste -sd, | sed 's/^/[/; s/$/]/' >long.jsonl
	[ "$(gptq-calib --ids --eval -l 30 long.jsonl | gptq-dump | jq -r .metadata.nsamples)" = 3 ]
}

@test "the joined corpus is what transformers' tokenizer(text) gives: BOS first" {
	printf 'one two\n\nthree\n' >t.txt
	gptq-calib -m "$M" --eval -l 4 t.txt | gptq-dump --extract input_ids -o ids.safetensors
	# the data section starts with the first id: 446 = 0x01be, little-endian
	len=$(od -An -t u8 -N 8 ids.safetensors | tr -d ' ')
	[ "$(od -An -t u4 -j $((8 + len)) -N 4 ids.safetensors | tr -d ' ')" = 446 ]
	[ "$(gptq-dump --stats ids.safetensors | jq -c '.tensors[0].stats | [.count, .max]')" = "[12,446]" ]
}

@test "too little text is a clear error" {
	printf 'short text\n' >s.txt
	run -1 gptq-calib -m "$M" -n 4 -l 2048 s.txt
	[[ "$output" == "gptq-calib: the corpus has "*" tokens; windows of 2048 need at least 2049 (give more text or a shorter -l)" ]]
	run -1 gptq-calib -m "$M" --eval -l 2048 s.txt
	[[ "$output" == *"less than one chunk of 2048"* ]]
	: >empty.txt
	run -1 gptq-calib -m "$M" empty.txt
	[ "$output" = "gptq-calib: no documents in the input" ]
}

@test "malformed input is named by file and line" {
	printf '{"text":"ok"}\n{"text":3}\n' >bad.jsonl
	run -1 gptq-calib -m "$M" --docs --field text bad.jsonl
	[ "$output" = "gptq-calib: bad.jsonl:2: no string field 'text'" ]
	printf '[1,2]\n[1,999]\n' >ids.jsonl
	run -1 gptq-calib -m "$M" --ids --docs ids.jsonl
	[ "$output" = "gptq-calib: ids.jsonl:2: token 1 is not an id in [0, 448)" ]
	printf '\xff\xfe broken\n' >u.txt
	run -1 gptq-calib -m "$M" --eval -l 2 u.txt
	[[ "$output" == "gptq-calib: "*"UTF-8"* ]]
	run -1 gptq-calib -m nowhere "$C"
	[[ "$output" == "gptq-calib: "*"nowhere"* ]]
}

@test "usage errors exit 2" {
	run -2 --separate-stderr gptq-calib "$C"
	[ "${stderr_lines[0]}" = "gptq-calib: -m MODEL is needed to tokenize text" ]
	run -2 --separate-stderr gptq-calib -m "$M" --docs --eval "$C"
	[ "${stderr_lines[0]}" = "gptq-calib: cannot use --docs with --eval" ]
	run -2 --separate-stderr gptq-calib -m "$M" --bos "$C"
	[ "${stderr_lines[0]}" = "gptq-calib: --bos applies to --docs and --eval samples" ]
	run -2 --separate-stderr gptq-calib -m "$M" -l 0 "$C"
	[ "${stderr_lines[0]}" = "gptq-calib: -l: '0' is out of range [1, 16777216]" ]
}

@test "stories260K: windows over TinyStories with the real tokenizer" {
	require_shared models/stories260K
	require_shared text/tinystories_val_first.txt
	gptq-calib -m "$GQ_SHARED/models/stories260K" -n 128 -l 512 --seed 0 \
		"$GQ_SHARED/text/tinystories_val_first.txt" | gptq-dump --stats >s.json
	[ "$(jq -c '.tensors[0].shape' s.json)" = "[128,512]" ]
	[ "$(jq '.tensors[0].stats.max < 512' s.json)" = true ]
}
