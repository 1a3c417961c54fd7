#!/usr/bin/env bats
# gptq-eval: the perplexity protocols (token counts, BOS handling), KL against
# a reference, tasks; and the stories260K acceptance: transformers' 7.0878,
# GPTQ below RTN at 4 and 3 bits.

load helpers

setup() {
	setup_tools
	P=$BATS_TEST_DIRNAME/../pipelines
	S=$GQ_SHARED/models/stories260K
	TS=$GQ_SHARED/text/tinystories_val_first.txt
	testgen checkpoint m 1 448 64
	cp "$BATS_TEST_DIRNAME"/data/tokenizer/* m/
	C=$BATS_TEST_DIRNAME/data/corpus.txt
}

@test "stories260K: perplexity as transformers computes it (7.0878 on 65408 tokens)" {
	numerics_only
	require_shared models/stories260K
	require_shared text/tinystories_val_first.txt
	testgen texthalf "$TS" second >second.txt
	run -0 gptq-eval -q -m "$S" --text second.txt --protocol windows --chunks 128 --json
	echo "$output"
	jq -e '.tokens == 65408 and .chunks == 128 and .ctx == 512' <<<"$output"
	jq -e '(.models[0].ppl / 7.0878 - 1) | fabs < 0.001' <<<"$output"
}

@test "stories260K: GPTQ beats RTN at 4 and 3 bits g32 (calibrated on the first half)" {
	numerics_only
	require_shared models/stories260K
	require_shared text/tinystories_val_first.txt
	testgen texthalf "$TS" first >first.txt
	testgen texthalf "$TS" second >second.txt
	gptq-calib -m "$S" -n 128 -l 256 first.txt >calib.gqs
	# 4-bit packing needs widths divisible by 8 (stories' MLP is 172 wide): fake-quant
	for b in 4 3; do
		"$P/quantize.sh" "$S" rtn$b --calib calib.gqs --bits $b --group-size 32 --rtn --fake-quant
		"$P/quantize.sh" "$S" gptq$b --calib calib.gqs --bits $b --group-size 32 --fake-quant
	done
	run -0 gptq-eval -q -m "$S" -m rtn4 -m gptq4 -m rtn3 -m gptq3 --text second.txt \
		--protocol windows --chunks 32 --json
	echo "$output"
	jq -e '[.models[].ppl] as [$fp, $r4, $g4, $r3, $g3] | $fp < $g4 and $g4 < $r4 and $g4 < $g3 and $g3 < $r3' <<<"$output"
}

@test "WikiText-2 runs in both protocols" {
	require_shared models/stories260K
	require_shared text/wiki.test.raw
	run -0 gptq-eval -m "$S" --text "$GQ_SHARED/text/wiki.test.raw" --protocol llamacpp --chunks 6
	[[ $output == *"protocol llamacpp: 6 chunks of 512 tokens, 1530 tokens scored"* ]]
	run -0 gptq-eval -m "$S" --text "$GQ_SHARED/text/wikitext2_test_gptq_join.txt" --protocol gptq --chunks 2 --json
	jq -e '.protocol == "gptq" and .ctx == 2048 and .tokens == 4094 and .models[0].ppl > 1' <<<"$output"
}

@test "protocols score the documented positions" {
	run -0 gptq-eval -m m --text "$C" --protocol llamacpp --ctx 64 --chunks 5 --json
	jq -e '.tokens == 5 * 31 and .chunks == 5' <<<"$output"
	run -0 gptq-eval -m m --text "$C" --protocol gptq --ctx 64 --chunks 5 --json
	jq -e '.tokens == 5 * 63' <<<"$output"
	run -0 gptq-eval -m m --text "$C" --protocol windows --ctx 64 --json
	windows=$output
	n=$(jq .chunks <<<"$windows")
	[ "$n" -gt 100 ]
	# the windows protocol is gptq-calib --eval --bos scored everywhere
	gptq-calib -m m --eval --bos -l 64 --whole-file "$C" >chunks.gqs
	run -0 gptq-eval -m m --tokens chunks.gqs --json
	[ "$(jq .models[0].ppl <<<"$output")" = "$(jq .models[0].ppl <<<"$windows")" ]
	# all chunks of the text; the tail that does not fill one is dropped
	run -1 gptq-eval -m m --text "$C" --ctx 1000000
	[[ $output == *"less than one chunk"* ]]
}

@test "--ref: a model against itself and against its 4-bit quantization" {
	gptq-calib -m m -n 16 -l 64 "$C" >calib.gqs
	"$P/quantize.sh" m q4 --calib calib.gqs --bits 4 --group-size 32
	run -0 gptq-eval -m m -m q4 --ref m --text "$C" --ctx 64 --chunks 8
	echo "$output"
	[[ $output == *"reference m: ppl"* ]]
	run -0 gptq-eval -m m -m q4 --ref m --text "$C" --ctx 64 --chunks 8 --json
	jq -e '.models[0].kl_max == 0 and .models[0].top1 == 1' <<<"$output"
	jq -e '.models[1].kl_mean > 0 and .models[1].top1 < 1 and .models[1].top1 > 0.3' <<<"$output"
	jq -e '.ref_ppl == .models[0].ppl' <<<"$output"
}

@test "tasks: lm, classify, summarize on JSON lines" {
	run -0 gptq-eval -m m --task lm --data "$BATS_TEST_DIRNAME/data/docs.jsonl" --limit 5 --json
	jq -e '.examples == 5 and .models[0].ppl > 1 and .models[0].tokens > 100' <<<"$output"
	printf '%s\n' '{"prompt": "the cat", "choices": [" sat", " ran"], "label": 1}' \
		'{"prompt": "a dog", "choices": [" big", " small", " red"], "label": " red"}' >cls.jsonl
	run -0 gptq-eval -m m --task classify --data cls.jsonl
	[[ $output == *"task classify on cls.jsonl: 2 examples"* ]]
	printf '%s\n' '{"prompt": "x", "choices": ["a", "b"], "label": 5}' >badlabel.jsonl
	run -1 gptq-eval -m m --task classify --data badlabel.jsonl
	[[ $output == *"badlabel.jsonl:1"*"label"* ]]
	printf '{"text": "the cat", "summary": "%s"}\n' "$(gptq-run -q -m m -n 12 -p 'the cat')" >sum.jsonl
	run -0 gptq-eval -m m --task summarize --data sum.jsonl --max-new 12 --json
	jq -e '.models[0].rouge1 == 1 and .models[0].rougeL == 1' <<<"$output"
}

@test "stories260K picks the likelier ending of a story" {
	require_shared models/stories260K
	printf '%s\n' '{"prompt": "Once upon a time, there was a little girl named", "choices": [" Lily", " Table"], "label": 0}' \
		'{"prompt": "She loved to play outside in the", "choices": [" bank", " park"], "label": " park"}' >c.jsonl
	run -0 gptq-eval -m "$S" --task classify --data c.jsonl --json
	jq -e '.models[0].acc == 1' <<<"$output"
}

@test "usage errors" {
	run -2 gptq-eval --text x
	run -2 gptq-eval -m m
	[[ $output == *"one of --text, --tokens or --task"* ]]
	run -2 gptq-eval -m m --text x --task lm --data y
	run -2 gptq-eval -m m --task lm
	run -2 gptq-eval -m m --text x --protocol perplexity
	[[ $output == *"unknown perplexity protocol"* ]]
	run -2 gptq-eval -m m --tokens x --ctx 12
	run -2 gptq-eval -m m --tokens x --protocol gptq
	run -2 gptq-eval -m m --text x --limit 3
	[[ $output == *"apply to --task"* ]]
	run -1 gptq-eval -m m --text /nonexistent
	[[ $output == *"/nonexistent"* ]]
}
