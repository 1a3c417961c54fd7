#!/usr/bin/env bats
# gptq-dump: listing, statistics, extraction and splitting of frame streams,
# and the errors every kind of broken input must produce.

load helpers

setup() {
	setup_tools
	testgen hessian 24 1 2 >h.gqs
	testgen tokens 2 8 >t.gqs
	testgen report >r.gqs
	cat h.gqs t.gqs r.gqs >stream.gqs
}

@test "prints one valid JSON line per frame" {
	run -0 gptq-dump stream.gqs
	[ "${#lines[@]}" -eq 3 ]
	gptq-dump stream.gqs >out.json
	[ "$(jq -s length out.json)" -eq 3 ]
	[ "$(jq -r .kind out.json | tr '\n' ' ')" = "hessian tokens report " ]
	[ "$(jq -r '.tensors[0].shape | join("x")' out.json | head -1)" = "24x24" ]
	[ "$(jq -r '.metadata.nsamples' out.json | head -1)" = "96" ]
}

@test "frame offsets are byte positions in the stream" {
	gptq-dump stream.gqs >out.json
	[ "$(jq -s '.[1].offset' out.json)" -eq "$(wc -c <h.gqs)" ]
	[ "$(jq -s '.[2].offset' out.json)" -eq "$(($(wc -c <h.gqs) + $(wc -c <t.gqs)))" ]
	[ "$(jq -s '[.[].index] | join(",")' out.json)" = '"0,1,2"' ]
}

@test "reads stdin, '-', pipes and concatenations alike" {
	a=$(gptq-dump stream.gqs | jq -c 'del(.file)')
	b=$(gptq-dump <stream.gqs | jq -c 'del(.file)')
	c=$(cat h.gqs t.gqs r.gqs | gptq-dump - | jq -c 'del(.file)')
	[ "$a" = "$b" ]
	[ "$a" = "$c" ]
	[ "$(gptq-dump - <stream.gqs | jq -r .file | head -1)" = "<stdin>" ]
}

@test "reads zstd-compressed streams, whole or in parts" {
	zstd -q -c stream.gqs >stream.gqs.zst
	zstd -q -c t.gqs >t.gqs.zst
	a=$(gptq-dump stream.gqs | jq -c 'del(.file)')
	[ "$a" = "$(gptq-dump stream.gqs.zst | jq -c 'del(.file)')" ]
	[ "$a" = "$(cat stream.gqs.zst | gptq-dump | jq -c 'del(.file)')" ]
	[ "$a" = "$(cat h.gqs t.gqs.zst r.gqs | gptq-dump | jq -c 'del(.file)')" ]
}

@test "several files are dumped in order, each with its own indices" {
	run -0 gptq-dump h.gqs t.gqs
	[ "$(printf '%s\n' "$output" | jq -r '"\(.file):\(.index)"' | tr '\n' ' ')" = "h.gqs:0 t.gqs:0 " ]
}

@test "an empty input lists nothing and succeeds" {
	: >empty
	run -0 gptq-dump empty
	[ -z "$output" ]
}

@test "every shared fixture checkpoint dumps with the tensors its header lists" {
	require_shared fixtures/models
	dir=$GQ_SHARED/fixtures/models
	for m in "$dir"/*/model.safetensors; do
		gptq-dump "$m" >out.json
		[ "$(jq -s length out.json)" -eq 1 ]
		diff <(jq -r '.tensors[].name' out.json | sort) <(header_keys "$m")
		[ "$(jq -r '.metadata.format' out.json)" = pt ]
		# the bytes of all tensors add up to the data section
		[ "$(jq '[.tensors[].bytes] | add' out.json)" -eq "$(jq .data_bytes out.json)" ]
	done
}

@test "a checkpoint directory dumps its shards in index order" {
	testgen checkpoint ck 3
	run -0 gptq-dump ck
	[ "${#lines[@]}" -eq 3 ]
	[ "$(printf '%s\n' "$output" | jq -r .file | xargs -n1 basename | tr '\n' ' ')" = \
		"model-00001-of-00003.safetensors model-00002-of-00003.safetensors model-00003-of-00003.safetensors " ]
}

@test "--stats summarises tensors and hessians" {
	gptq-dump --stats h.gqs t.gqs >out.json
	[ "$(jq -s '.[0].hessian.dead' out.json)" -eq 2 ]
	[ "$(jq -s -c '.[0].hessian.dead_columns' out.json)" = "[0,1]" ]
	[ "$(jq -s '.[0].hessian.symmetry_error' out.json)" = 0 ]
	[ "$(jq -s '.[0].hessian.cond > 1' out.json)" = true ]
	[ "$(jq -s '.[0].hessian.cond_damped < .[0].hessian.cond' out.json)" = true ]
	[ "$(jq -s '.[0].tensors[0].stats.count' out.json)" -eq 576 ]
	[ "$(jq -s '.[1].tensors[1].stats.mean' out.json)" = 1 ]
	[ "$(jq -s '.[1] | has("hessian")' out.json)" = false ]
}

@test "--stats counts NaN and Inf and converts every dtype" {
	testgen dtypes >d.safetensors
	gptq-dump --stats d.safetensors >out.json
	[ "$(jq '.tensors | length' out.json)" -eq 15 ]
	for t in F64 F32 F16 BF16 F8_E4M3 F8_E5M2 I64 I32 I16 I8; do
		[ "$(jq -c --arg n "t_$t" '.tensors[] | select(.name == $n) | [.stats.min, .stats.max, .stats.mean]' out.json)" = "[-2,3,0.5]" ]
	done
	printf '\x00\x00\xc0\x7f\x00\x00\x80\x7f\x00\x00\x80\x3f' >payload
	mkst nan.st '{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}' 0
	cat payload >>nan.st
	[ "$(gptq-dump --stats nan.st | jq -c '.tensors[0].stats | [.nan, .inf, .min, .max]')" = "[1,1,1,1]" ]
}

@test "--extract writes a frame by module name, byte for byte" {
	run -0 gptq-dump --extract model.layers.0.self_attn.k_proj -o k.safetensors stream.gqs
	cmp k.safetensors h.gqs
	gptq-dump --extract model.layers.0.self_attn.q_proj -o - stream.gqs | cmp - h.gqs
}

@test "--extract of a tensor name writes that tensor with its frame's metadata" {
	run -0 gptq-dump --extract input_ids -o ids.safetensors stream.gqs
	[ "$(gptq-dump ids.safetensors | jq -c '[.kind, [.tensors[].name]]')" = '["tokens",["input_ids"]]' ]
	# the data is the same bytes as in the stream
	[ "$(gptq-dump --stats ids.safetensors | jq .tensors[0].stats.mean)" = \
		"$(gptq-dump --stats t.gqs | jq .tensors[0].stats.mean)" ]
}

@test "--extract refuses an ambiguous or unknown name" {
	cat t.gqs t.gqs >tt.gqs
	run -1 gptq-dump --extract input_ids -o x.safetensors tt.gqs
	[ "$output" = "gptq-dump: 'input_ids' matches frames 0 and 1 (choose one with --frame)" ]
	[ ! -e x.safetensors ]
	run -0 gptq-dump --extract input_ids --frame 1 -o x.safetensors tt.gqs
	run -1 gptq-dump --extract nothing -o y.safetensors stream.gqs
	[ "$output" = "gptq-dump: no frame or tensor named 'nothing'" ]
	[ ! -e y.safetensors ]
}

@test "--frame N writes frame N across several inputs" {
	run -0 gptq-dump --frame 2 -o f2.safetensors h.gqs t.gqs r.gqs
	cmp f2.safetensors r.gqs
	run -1 gptq-dump --frame 7 -o f7.safetensors stream.gqs
	[ "$output" = "gptq-dump: no frame 7 (the input has 3)" ]
}

@test "--split writes one file per frame that concatenate back to the stream" {
	run -0 gptq-dump --split parts stream.gqs
	[ "$(ls parts | tr '\n' ' ')" = \
		"00000-hessian-model.layers.0.self_attn.q_proj.safetensors 00001-tokens.safetensors 00002-report.safetensors " ]
	cat parts/* | cmp - stream.gqs
	# an existing directory is not overwritten
	run -1 gptq-dump --split parts stream.gqs
	[[ "$output" == *"'parts' already exists"* ]]
}

@test "--split leaves no directory behind when the input is corrupt" {
	head -c -5 stream.gqs >cut.gqs
	run -1 gptq-dump --split parts cut.gqs
	[ ! -e parts ]
	[ "$(ls | grep -c parts)" -eq 0 ]
}

@test "a truncated stream fails naming the file, frame, offset and tensor" {
	size=$(wc -c <h.gqs)
	head -c $((size + 100)) stream.gqs >cut.gqs
	run -1 --separate-stderr gptq-dump cut.gqs
	[ "${#lines[@]}" -eq 1 ]
	[ "$stderr" = "gptq-dump: cut.gqs: frame 1 at byte $size: truncated: header needs 176 bytes but the input has 92 left" ]
	head -c $(($(wc -c <h.gqs) + $(wc -c <t.gqs) - 3)) stream.gqs >cut1.gqs
	run -1 --separate-stderr gptq-dump cut1.gqs
	[ "$stderr" = "gptq-dump: cut1.gqs: frame 1 at byte $size: truncated: tensor data needs 80 bytes but the input has 77 left (tensor 'attention_mask' incomplete)" ]
	head -c 5 stream.gqs >cut2.gqs
	run -1 gptq-dump cut2.gqs
	[ "$output" = "gptq-dump: cut2.gqs: frame 0 at byte 0: truncated: the input ends after 5 of the 8 length bytes" ]
}

@test "a truncated stream on a pipe fails the same way" {
	head -c 300 stream.gqs >cut.gqs
	run -1 sh -c 'cat cut.gqs | gptq-dump'
	[ "$output" = "gptq-dump: <stdin>: frame 0 at byte 0: truncated: tensor data needs 2304 bytes but the input ends after 12 (tensor 'H' incomplete)" ]
	head -c 100 stream.gqs >cut2.gqs
	run -1 sh -c 'cat cut2.gqs | gptq-dump'
	[ "$output" = "gptq-dump: <stdin>: frame 0 at byte 0: truncated: header needs 280 bytes but the input ends after 92" ]
}

@test "corrupt headers are named precisely" {
	mkst bad.st '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]' 8
	run -1 gptq-dump bad.st
	[[ "$output" == "gptq-dump: bad.st: frame 0 at byte 0: header is not valid JSON (error at byte "* ]]
	mkst bad.st '{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}' 8
	run -1 gptq-dump bad.st
	[ "$output" = "gptq-dump: bad.st: frame 0 at byte 0: tensor 'a': unknown dtype 'Q4'" ]
	mkst bad.st '{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}' 8
	run -1 gptq-dump bad.st
	[ "$output" = "gptq-dump: bad.st: frame 0 at byte 0: tensor 'a': data_offsets [0, 8] hold 8 bytes but shape [3] x F32 needs 12" ]
	mkst bad.st '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}' 8
	run -1 gptq-dump bad.st
	[ "$output" = "gptq-dump: bad.st: frame 0 at byte 0: tensor 'b': data_offsets [4, 8] overlap tensor 'a'" ]
	mkst bad.st '{"a":{"dtype":"U8","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}' 8
	run -1 gptq-dump bad.st
	[ "$output" = "gptq-dump: bad.st: frame 0 at byte 0: tensor 'a': shape overflows 64 bits" ]
	printf '\xff\xff\xff\xff\xff\xff\xff\x7f{}' >bad.st
	run -1 gptq-dump bad.st
	[ "$output" = "gptq-dump: bad.st: frame 0 at byte 0: header length 9223372036854775807 exceeds the limit of 100000000 bytes (not a safetensors frame?)" ]
}

@test "garbage after valid frames is reported at the right frame" {
	cat stream.gqs >g.gqs
	printf 'not a frame at all' >>g.gqs
	run -1 --separate-stderr gptq-dump g.gqs
	[ "${#lines[@]}" -eq 3 ]
	[[ "$stderr" == "gptq-dump: g.gqs: frame 3 at byte $(wc -c <stream.gqs): header length"* ]]
}

@test "a corrupt zstd stream is an error, not garbage" {
	zstd -q -c stream.gqs >z.zst
	size=$(wc -c <z.zst)
	head -c $((size - 6)) z.zst >zc.zst
	run -1 gptq-dump zc.zst
	[[ "$output" == *"compressed input ends inside a zstd frame"* ]]
}

@test "missing and unreadable inputs fail with the path" {
	run -1 gptq-dump nope.gqs
	[ "$output" = "gptq-dump: cannot open 'nope.gqs': No such file or directory" ]
	mkdir emptydir
	run -1 gptq-dump emptydir
	[[ "$output" == "gptq-dump: 'emptydir' has no model.safetensors"* ]]
}

@test "usage errors exit 2 and name the problem" {
	run -2 --separate-stderr gptq-dump --frame x -o a stream.gqs
	[ "${stderr_lines[0]}" = "gptq-dump: --frame: 'x' is not an integer" ]
	run -2 --separate-stderr gptq-dump --extract a stream.gqs
	[ "${stderr_lines[0]}" = "gptq-dump: --extract and --frame need -o OUT.safetensors" ]
	run -2 --separate-stderr gptq-dump --split d --extract a -o x stream.gqs
	[ "${stderr_lines[0]}" = "gptq-dump: cannot use --split with --extract, --frame or -o" ]
	run -2 --separate-stderr gptq-dump --no-such-option
	[[ "${stderr_lines[0]}" == *"unrecognized option"* ]]
	[[ "$stderr" == *"usage: gptq-dump"* ]]
}

@test "--help prints the synopsis to stdout, --version the build" {
	run -0 --separate-stderr gptq-dump --help
	[ "${lines[0]}" = "usage: gptq-dump [--stats] [--damp F] [--checksum] [FILE|DIR|-]..." ]
	[ -z "$stderr" ]
	run -0 gptq-dump --version
	[[ "${lines[0]}" == "gptq-dump (gptq) "* ]]
	[[ "${lines[1]}" == "backends: cpu (openblas)"* ]]
}

@test "--checksum hashes each tensor's bytes, so equal tensors compare equal across files" {
	gptq-dump --extract model.layers.0.self_attn.k_proj -o k.safetensors stream.gqs
	[ "$(gptq-dump --checksum k.safetensors | jq -r '.tensors[0].fnv1a64')" = \
		"$(gptq-dump --checksum stream.gqs | jq -r 'select(.kind=="hessian") | .tensors[0].fnv1a64')" ]
	[ "$(gptq-dump --checksum t.gqs | jq -r '.tensors[].fnv1a64' | sort -u | wc -l)" -eq 2 ]
	[[ "$(gptq-dump --checksum t.gqs | jq -r '.tensors[0].fnv1a64')" =~ ^[0-9a-f]{16}$ ]]
}

@test "--model-info describes a model as the tools read it" {
	run -0 gptq-dump --model-info "$BATS_TEST_DIRNAME/data/models/mixtral_top2of4"
	[ "$(echo "$output" | jq -c '[.model_type, .n_layers, .experts, .steps, (.modules | length)]')" = '["mixtral",2,4,4,17]' ]
	[ "$(echo "$output" | jq -c '.modules[4]')" = '{"name":"block_sparse_moe.gate","in":64,"out":4,"group":-1,"step":-1}' ]
	[ "$(echo "$output" | jq -r .layer_prefix)" = 'model.layers.%d.' ]
	run -1 gptq-dump --model-info emptydir-nope
	[[ "$output" == "gptq-dump: cannot open"* ]]
}

@test "a closed pipe downstream does not hang or report an error" {
	for i in 1 2 3 4 5 6 7 8; do cat stream.gqs; done >big.gqs
	run -0 sh -c 'gptq-dump big.gqs | head -1 >/dev/null'
}
