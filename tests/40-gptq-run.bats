#!/usr/bin/env bats
# gptq-run: generation (greedy, sampling, beams, batch), --forward frames,
# --bench, and GPTQ checkpoints of every bit width matching their dequantized
# float twins.

load helpers

setup() {
	setup_tools
	P=$BATS_TEST_DIRNAME/../pipelines
	S=$GQ_SHARED/models/stories260K
	# a bundled random llama with the bundled tokenizer (as make demo builds it)
	testgen checkpoint m 1 448 64
	cp "$BATS_TEST_DIRNAME"/data/tokenizer/* m/
}

@test "stories260K greedy from BOS tells the story in ../shared/README.md" {
	require_shared models/stories260K
	run -0 gptq-run -q -m "$S" -n 64
	[[ $output == "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball."* ]]
	# the same continuation as ids, and from the ids as a prompt
	run -0 gptq-run -q -m "$S" -n 5 --print-ids --prompt-ids 1
	[ "$output" = "403 407 261 378 432" ]
	run -0 gptq-run -q -m "$S" -n 3 --print-ids -p "Once upon a time"
	first=$output
	run -0 gptq-run -q -m "$S" -n 3 --print-ids --prompt-ids "1 403 407 261 378"
	[ "$output" = "$first" ]
}

@test "sampling is reproducible by seed; top-k 1 and one beam are greedy" {
	run -0 gptq-run -q -m m -n 24 --print-ids -p "the"
	greedy=$output
	run -0 gptq-run -q -m m -n 24 --print-ids -p "the" --temp 0.8 --top-k 1
	[ "$output" = "$greedy" ]
	run -0 gptq-run -q -m m -n 24 --print-ids -p "the" --beams 1
	[ "$output" = "$greedy" ]
	run -0 gptq-run -q -m m -n 24 --print-ids -p "the" --temp 1.5 --seed 7
	a=$output
	run -0 gptq-run -q -m m -n 24 --print-ids -p "the" --temp 1.5 --seed 7
	[ "$output" = "$a" ]
	run -0 gptq-run -q -m m -n 24 --print-ids -p "the" --temp 1.5 --seed 8
	[ "$output" != "$a" ]
	run -0 gptq-run -q -m m -n 24 --print-ids -p "the" --temp 1.5 --seed 7 --top-p 0.5 --repeat-penalty 1.3
	[ "$output" != "$a" ]
	[ "$(wc -w <<<"$output")" -le 24 ]
}

@test "repetition penalty stops a greedy loop, beams find a likelier continuation" {
	require_shared models/stories260K
	run -0 gptq-run -q -m "$S" -n 60 --print-ids --ignore-eos
	plain=$output
	run -0 gptq-run -q -m "$S" -n 60 --print-ids --ignore-eos --repeat-penalty 1.5
	[ "$output" != "$plain" ]
	run -0 gptq-run -q -m "$S" -n 12 --beams 4 -p "Once upon a time"
	[ -n "$output" ]
	run -0 gptq-run -q -m "$S" -n 12 --beams 4 -p "Once upon a time"
	beam=$output
	run -0 gptq-run -q -m "$S" -n 12 --beams 4 -p "Once upon a time"
	[ "$output" = "$beam" ]
}

@test "beam search with few candidates (regression: read an unset slot)" {
	for b in 2 3 5; do
		run -0 gptq-run -q -m m -n 6 --beams $b -p the --print-ids --ignore-eos
		[ "$(wc -w <<<"$output")" -eq 6 ]
	done
}

@test "--batch: one JSON line per prompt, the same text as single runs" {
	printf '%s\n' '{"prompt": "the cat"}' '{"prompt": "a dog", "id": 2}' >p.jsonl
	run -0 gptq-run -q -m m -n 8 --batch p.jsonl
	[ "${#lines[@]}" -eq 2 ]
	jq -e '.index == 0 and .prompt == "the cat" and (.output_ids | length) <= 8' <<<"${lines[0]}"
	jq -e '.index == 1 and .prompt == "a dog"' <<<"${lines[1]}"
	single=$(gptq-run -q -m m -n 8 -p "a dog")
	[ "$(jq -r .output <<<"${lines[1]}")" = "$single" ]
	printf '%s\n' 'not json' >bad.jsonl
	run -1 gptq-run -q -m m --batch bad.jsonl
	[[ $output == *bad.jsonl:1* ]]
}

@test "prompt from a file or stdin, --echo, --no-bos" {
	printf 'the cat' >prompt.txt
	a=$(gptq-run -q -m m -n 6 -f prompt.txt)
	b=$(gptq-run -q -m m -n 6 -f - <prompt.txt)
	c=$(gptq-run -q -m m -n 6 -p "the cat")
	[ "$a" = "$b" ] && [ "$a" = "$c" ]
	run -0 gptq-run -q -m m -n 6 -p "the cat" --echo
	[[ $output == "the cat"* ]]
	d=$(gptq-run -q -m m -n 6 -p "the cat" --no-bos --print-ids)
	e=$(gptq-run -q -m m -n 6 -p "the cat" --print-ids)
	[ "$d" != "$e" ]
}

@test "--forward: logprobs frames agree with --logits and pass other frames through" {
	testgen tokens 3 20 5 448 >t.gqs
	testgen report >>t.gqs
	run -0 gptq-run -m m --forward t.gqs -o lp.gqs
	gptq-dump lp.gqs | jq -se '.[0].kind == "logprobs" and .[1].kind == "report"'
	gptq-dump lp.gqs | jq -se '.[0].tensors[] | select(.name == "logprobs") | .shape == [3, 19]'
	run -0 gptq-run -m m --forward --logits t.gqs -o lg.gqs
	gptq-dump lg.gqs | jq -se '.[0].tensors[] | select(.name == "logits") | .shape == [3, 20, 448]'
	# the log-probabilities are the same with and without logits
	gptq-dump --extract logprobs lp.gqs -o a.safetensors
	gptq-dump --extract logprobs lg.gqs -o b.safetensors
	cmp a.safetensors b.safetensors
	run -0 gptq-dump --stats lp.gqs
	jq -se '.[0].tensors[] | select(.name == "logprobs") | .stats.max <= 0 and .stats.nan == 0' <<<"$output"
}

@test "--forward rejects ids outside the vocabulary, naming the frame" {
	testgen tokens 2 8 0 1000 >big.gqs
	run -1 gptq-run -m m --forward big.gqs
	[[ $output == *"big.gqs: frame 0"*"not a token of this model"* ]]
	run -1 gptq-run -m m --forward /dev/null
	[[ $output == *"no tokens frames"* ]]
}

@test "GPTQ checkpoints of every bit width run as their dequantized float twins" {
	testgen tokens 6 48 1 128 >calib.gqs
	testgen tokens 4 40 2 128 >eval.gqs
	for arch in qwen3 gpt2_layer_scaled falcon_new_arch mixtral_top2of4; do
		M=$BATS_TEST_DIRNAME/data/models/$arch
		for q in "--bits 4 --group-size 32 --desc-act" "--bits 3 --group-size -1" \
			"--bits 8 --group-size 32 --asym" "--bits 2 --group-size 16 --desc-act --static-groups"; do
			rm -rf packed fake
			run -0 "$P/quantize.sh" "$M" packed --calib calib.gqs $q --keep-dtype
			run -0 "$P/quantize.sh" "$M" fake --calib calib.gqs $q --keep-dtype --fake-quant
			jq -e '.quantization_config.bits' packed/config.json
			jq -e 'has("quantization_config") | not' fake/config.json
			[ ! -e fake/quantize_config.json ]
			run -0 gptq-eval -q -m packed --ref fake --tokens eval.gqs --json
			echo "$arch $q: $output"
			jq -e '.models[0].kl_max < 1e-6 and .models[0].top1 == 1' <<<"$output"
			# decoding one token at a time goes through the GEMV kernels instead
			a=$(gptq-run -q -m packed --prompt-ids 3,1,4,1,5 -n 12 --print-ids --ignore-eos)
			b=$(gptq-run -q -m fake --prompt-ids 3,1,4,1,5 -n 12 --print-ids --ignore-eos)
			[ "$a" = "$b" ]
		done
	done
}

@test "--bench prints a table and JSON with positive rates" {
	run -0 gptq-run -m m --bench --pp 16 --tg 8 --reps 2
	[[ $output == *"| pp16"* ]] && [[ $output == *"| tg8"* ]]
	run -0 gptq-run -m m --bench --pp 16 --tg 8 --reps 2 --json
	jq -e '.pp_tok_s > 0 and .tg_tok_s > 0 and .pp == 16 and .tg == 8 and .quant == "fp"' <<<"$output"
}

@test "usage errors and bad models are reported" {
	run -2 gptq-run -p x
	[[ $output == *"-m MODEL is required"* ]]
	run -2 gptq-run -m m -p a --prompt-ids 1
	run -2 gptq-run -m m --prompt-ids 9999
	[[ $output == *"--prompt-ids"* ]]
	run -2 gptq-run -m m --beams 2 --temp 1
	run -2 gptq-run -m m -p x -z
	[[ $output == *"apply to --forward"* ]]
	run -1 gptq-run -m nonexistent -p x
	[[ $output == *nonexistent* ]]
	testgen checkpoint bare 1 64 16
	run -1 gptq-run -m bare -p hello
	[[ $output == *"no tokenizer.json"* ]]
	run -0 gptq-run -q -m bare --prompt-ids 1,2,3 -n 4 --print-ids
	[ "$(wc -w <<<"$output")" -eq 4 ]
}

@test "AutoGPTQ's file naming (gptq_model-4bit-32g.safetensors) loads; two candidates do not" {
	testgen tokens 4 32 1 448 >calib.gqs
	"$P/quantize.sh" m q --calib calib.gqs --bits 4 --group-size 32
	a=$(gptq-run -q -m q --prompt-ids 1,2,3 -n 8 --print-ids)
	mv q/model.safetensors q/gptq_model-4bit-32g.safetensors
	b=$(gptq-run -q -m q --prompt-ids 1,2,3 -n 8 --print-ids)
	[ "$a" = "$b" ]
	cp q/gptq_model-4bit-32g.safetensors q/other.safetensors
	run -1 gptq-run -m q --prompt-ids 1
	[[ $output == *"several .safetensors files"* ]]
}
