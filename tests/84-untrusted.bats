#!/usr/bin/env bats
# Untrusted checkpoints and streams: headers that lie about sizes, shapes and
# names. Every claim is checked against the bytes actually there before
# anything is allocated or mapped, and no name from a file ever becomes a
# path outside the output the user named.

load helpers

setup() {
	setup_tools
	M=$BATS_TEST_DIRNAME/data/models/qwen3
}

@test "a header bomb is refused without reading or allocating its claim" {
	# 100 MB claimed (the limit) on a 19-byte file: refused from the file size
	printf '\x00\xe1\xf5\x05\x00\x00\x00\x00{"a":1}    ' >bomb.st
	run -1 --separate-stderr timeout $(limit 10) gptq-dump bomb.st
	[ "$stderr" = "gptq-dump: bomb.st: frame 0 at byte 0: truncated: header needs 100000000 bytes but the input has 11 left" ]
	# on a pipe nothing tells the size: at most the limit is buffered
	run -1 --separate-stderr timeout $(limit 10) sh -c 'cat bomb.st | gptq-dump'
	[ "$stderr" = "gptq-dump: <stdin>: frame 0 at byte 0: truncated: header needs 100000000 bytes but the input ends after 11" ]
	printf '\x01\xe1\xf5\x05\x00\x00\x00\x00{}' >over.st
	run -1 --separate-stderr timeout $(limit 10) sh -c 'cat over.st | gptq-dump'
	[ "$stderr" = "gptq-dump: <stdin>: frame 0 at byte 0: header length 100000001 exceeds the limit of 100000000 bytes (not a safetensors frame?)" ]
	# deeply nested JSON is a syntax error, not a stack overflow
	mkst deep.st "{\"__metadata__\":$(printf '%.0s[' $(seq 20000))$(printf '%.0s]' $(seq 20000))}" 0
	run -1 --separate-stderr timeout $(limit 10) gptq-dump deep.st
	[[ "$stderr" == "gptq-dump: deep.st: frame 0 at byte 0: header is not valid JSON (error at byte "* ]]
	# a checkpoint shard with the same lie
	mkdir m
	cp bomb.st m/model.safetensors
	run -1 --separate-stderr timeout $(limit 10) gptq-dump m
	[ "$stderr" = "gptq-dump: m/model.safetensors: truncated: header needs 100000000 bytes but the file has 11 left" ]
}

@test "tensor data claimed past the end of the file is refused before use" {
	mkmodel m '{"model.embed_tokens.weight":{"dtype":"F32","shape":[1000000,1000],"data_offsets":[0,4000000000]}}' 64
	for t in "gptq-dump m" "gptq-dump --model-info m" "gptq-solve -m m --rtn --all"; do
		run -1 --separate-stderr timeout $(limit 10) $t
		[ "${stderr#*: }" = "m/model.safetensors: truncated: tensors need 4000000000 bytes of data but the file has 64" ]
	done
	# a stream frame: the same claim fails as truncated, without a 4 GB allocation
	cp m/model.safetensors big.gqs
	run -1 --separate-stderr timeout $(limit 10) sh -c 'cat big.gqs | gptq-dump --stats'
	[[ "$stderr" == "gptq-dump: <stdin>: frame 0 at byte 0: truncated: tensor data needs 4000000000 bytes but the input ends after 64 (tensor 'model.embed_tokens.weight' incomplete)" ]]
}

@test "huge shapes are refused by arithmetic, and empty ones allocate nothing" {
	mkmodel m '{"x":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}' 0
	run -1 --separate-stderr gptq-dump m
	[ "$stderr" = "gptq-dump: m/model.safetensors: tensor 'x': shape overflows 64 bits" ]
	# 2^52 samples of no tokens: valid safetensors, but no token frame
	mkst z.gqs '{"__metadata__":{"gptq.kind":"tokens"},"input_ids":{"dtype":"I32","shape":[4503599627370496,0],"data_offsets":[0,0]}}' 0
	run -1 --separate-stderr timeout $(limit 10) gptq-hessian -m "$M" --no-sequential z.gqs
	[ "$stderr" = "gptq-hessian: z.gqs: frame 0 at byte 0: input_ids must be an integer [n, seqlen] tensor" ]
	mkst h.gqs '{"__metadata__":{"gptq.kind":"hessian","modules":"model.layers.0.self_attn.q_proj","nsamples":"1"},"H":{"dtype":"F32","shape":[0,4503599627370496],"data_offsets":[0,0]}}' 0
	run -1 --separate-stderr timeout $(limit 10) gptq-solve -m "$M" h.gqs
	[ "$stderr" = "gptq-solve: h.gqs: frame 0 at byte 0: H is not a square matrix" ]
	# a model whose embedding has the right name but not the config's shape
	mkmodel e '{"model.embed_tokens.weight":{"dtype":"F32","shape":[0,4503599627370496],"data_offsets":[0,0]}}' 0
	run -1 --separate-stderr timeout $(limit 10) gptq-dump --model-info e
	[[ "$stderr" == "gptq-dump: "*"model.embed_tokens.weight"* ]]
}

@test "duplicate tensor names are refused in a header and across shards" {
	mkmodel m '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}' 8
	run -1 --separate-stderr gptq-dump m
	[ "$stderr" = "gptq-dump: m/model.safetensors: duplicate tensor name 'a'" ]
	mkdir s
	mkst s/model-00001-of-00002.safetensors '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}' 4
	cp s/model-00001-of-00002.safetensors s/model-00002-of-00002.safetensors
	run -1 --separate-stderr gptq-dump s
	[ "$stderr" = "gptq-dump: s: tensor 'a' appears in both model-00001-of-00002.safetensors and model-00002-of-00002.safetensors" ]
	printf '{"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}' \
		>s/model.safetensors.index.json
	run -1 --separate-stderr gptq-dump s
	[ "$stderr" = "gptq-dump: s: tensor 'a' appears in both model-00001-of-00002.safetensors and model-00002-of-00002.safetensors" ]
}

@test "names with path separators never leave the output directory" {
	# an index pointing outside the checkpoint
	mkdir s
	mkst s/model.safetensors '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}' 4
	printf '{"weight_map":{"a":"../../etc/passwd"}}' >s/model.safetensors.index.json
	run -1 --separate-stderr gptq-dump s
	[ "$stderr" = "gptq-dump: s/model.safetensors.index.json: tensor 'a' maps to an invalid file name" ]
	# frames whose kind and name attributes are paths: --split keeps them inside its directory
	mkst evil.gqs '{"__metadata__":{"gptq.kind":"../../kind","name":"../../../escape/x"},"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}' 1
	run -0 gptq-dump --split parts evil.gqs
	[ "$(ls parts)" = "00000-.._.._kind-.._.._.._escape_x.safetensors" ]
	cmp evil.gqs parts/*
	# a qlinear frame naming a module by a path is not a module of the model
	testgen tokens 4 32 0 128 >t.gqs
	gptq-hessian -m "$M" --no-sequential t.gqs | gptq-solve -m "$M" -g 32 >q.gqs
	gptq-dump --frame 0 -o q0.safetensors q.gqs
	sed 's|"name":"model.layers.0.self_attn.q_proj"|"name":"../../../../tmp/q_proj_escape01"|' q0.safetensors >qe.gqs
	run -1 --separate-stderr gptq-pack -m "$M" -o out q.gqs qe.gqs
	[ "$stderr" = "gptq-pack: two qlinear frames for ../../../../tmp/q_proj_escape01 (or a module the model lacks)" ]
	[ ! -e out ]
	[ ! -e /tmp/q_proj_escape01 ] && [ ! -e ../escape ] && [ ! -e ../../escape ]
}
