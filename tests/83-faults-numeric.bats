#!/usr/bin/env bats
# Fault injection: non-finite and degenerate numbers. NaN or Inf in weights,
# activations, Hessians or scales is an error naming the module and element,
# never quietly quantized; singular and indefinite Hessians are damped more
# until Cholesky succeeds, within a bound, as AutoGPTQ does.

load helpers

setup() {
	setup_tools
	M=$BATS_TEST_DIRNAME/data/models/qwen3
	testgen tokens 4 32 0 128 >t.gqs
}

# copy_model DIR: a writable copy of the qwen3 fixture
copy_model() {
	mkdir "$1"
	cp "$M"/config.json "$M"/model.safetensors "$1"/
}

# hmat FILE DIAG OFF: a 64 x 64 hessian frame for o_proj with every diagonal
# entry DIAG and every other entry OFF (little-endian float32 as printf escapes)
hmat() {
	local i
	mkst "$1" '{"__metadata__":{"gptq.kind":"hessian","layer":"0","name":"model.layers.0.self_attn.o_proj","modules":"model.layers.0.self_attn.o_proj","nsamples":"100"},"H":{"dtype":"F32","shape":[64,64],"data_offsets":[0,16384]}}' 0
	for i in $(seq 0 63); do
		for j in $(seq 0 63); do
			[ "$i" -eq "$j" ] && printf "$2" || printf "$3"
		done
	done >>"$1"
}

@test "a NaN or Inf weight is named by gptq-solve, with GPTQ and round-to-nearest" {
	gptq-hessian -m "$M" --no-sequential t.gqs >h.gqs
	for v in nan inf; do
		rm -rf m
		copy_model m
		poke m/model.safetensors model.layers.1.mlp.up_proj.weight $v
		run -1 --separate-stderr gptq-solve -m m -g 32 -o q.gqs h.gqs
		[ "$stderr" = "gptq-solve: model.layers.1.mlp.up_proj: weight [0, 0] is $v" ]
		[ ! -e q.gqs ]
		run -1 --separate-stderr gptq-solve -m m --rtn --all -g 32 -o q.gqs
		[ "$stderr" = "gptq-solve: model.layers.1.mlp.up_proj: weight [0, 0] is $v" ]
		[ ! -e q.gqs ]
	done
}

@test "a NaN weight upstream stops gptq-hessian at the first poisoned Hessian" {
	copy_model m
	poke m/model.safetensors model.layers.0.mlp.down_proj.weight nan
	# layer 0's Hessians are computed before down_proj runs; layer 1's see the NaN
	run -1 --separate-stderr gptq-hessian -m m --no-sequential -o h.gqs t.gqs
	[[ "$stderr" == "gptq-hessian: model.layers.1.self_attn.q_proj: Hessian entry [0, 0] is "*"nan: the activations reaching layer 1 are not finite (NaN or Inf in the weights before it?)" ]]
	[ ! -e h.gqs ]
}

@test "Inf in a Hessian is refused like NaN" {
	hmat h.gqs '\x00\x00\x00\x40' '\x00\x00\x00\x3f'
	len=$(od -An -t u8 -N 8 h.gqs | tr -d ' ')
	printf '\x00\x00\x80\x7f' | dd of=h.gqs bs=1 seek=$((8 + len + 4 * 65)) conv=notrunc status=none
	run -1 --separate-stderr gptq-solve -m "$M" -g 32 -o q.gqs h.gqs
	[ "$stderr" = "gptq-solve: h.gqs: frame 0 at byte 0: H has a non-finite entry at [1, 1]" ]
	[ ! -e q.gqs ]
}

@test "weights beyond float16's range are refused instead of packed as infinite scales" {
	copy_model m
	# 1e6: a 4-bit group's scale of about 1.3e5 is past float16's 65504
	poke m/model.safetensors model.layers.0.self_attn.q_proj.weight 1e6
	run -1 --separate-stderr gptq-solve -m m --rtn --all -g 32 -o q.gqs
	[[ "$stderr" == "gptq-solve: model.layers.0.self_attn.q_proj: scale "*" of row 0, group 0 does not fit float16 (weights too large or too small for a float16 checkpoint)" ]]
	[ ! -e q.gqs ]
}

@test "non-finite or zero scales in a qlinear frame are refused by gptq-pack" {
	gptq-hessian -m "$M" --no-sequential t.gqs >h.gqs
	gptq-solve -m "$M" -g 32 h.gqs >q.gqs
	len=$(od -An -t u8 -N 8 q.gqs | tr -d ' ')
	begin=$(dd if=q.gqs bs=1 skip=8 count="$len" status=none | jq '.scales.data_offsets[0]')
	name=$(gptq-dump q.gqs | jq -r -s '.[0].metadata.name')
	for v in '\x00\x7c:inf' '\x00\x7e:nan' '\x00\x00:0' '\x00\xbc:-1'; do
		cp q.gqs bad.gqs
		printf "${v%%:*}" | dd of=bad.gqs bs=1 seek=$((8 + len + begin)) conv=notrunc status=none
		run -1 --separate-stderr gptq-pack -m "$M" -o out bad.gqs
		[ "$stderr" = "gptq-pack: bad.gqs: frame 0 at byte 0: $name: scale ${v#*:} is not a positive finite number" ]
		[ ! -e out ]
	done
}

@test "singular Hessians are solved at the base damp" {
	# all ones: rank one, positive semi-definite; all zeros: every column dead
	hmat ones.gqs '\x00\x00\x80\x3f' '\x00\x00\x80\x3f'
	hmat zeros.gqs '\x00\x00\x00\x00' '\x00\x00\x00\x00'
	for h in ones zeros; do
		run -0 --separate-stderr gptq-solve -m "$M" -g 32 -o q.gqs $h.gqs
		[ -z "$stderr" ]
		[ "$(gptq-dump q.gqs | jq -r -s '.[0].metadata | [.method, .damp] | join(" ")')" = "gptq 0.01" ]
		gptq-dump --stats q.gqs | jq -e -s '.[0].tensors[] | select(.name == "scales") | .stats.nan == 0 and .stats.inf == 0 and .stats.min > 0'
	done
}

@test "damp escalation is bounded: a Hessian no damping can fix is a clear error" {
	# J - 0.99 I: eigenvalue -0.99 against a mean diagonal of 0.01 needs damp > 99;
	# 40 raises of x1.25 stop at 0.01 x 1.25^40 = 75.2
	hmat bad.gqs '\x0a\xd7\x23\x3c' '\x00\x00\x80\x3f'
	run -1 --separate-stderr gptq-solve -m "$M" -g 32 -o q.gqs bad.gqs
	[ "$stderr" = "gptq-solve: model.layers.0.self_attn.o_proj: Hessian is not positive definite even at damp 75.2316" ]
	[ ! -e q.gqs ]
	# negative definite: raising damp cannot help, so it stops at once
	hmat neg.gqs '\x00\x00\x80\xbf' '\x00\x00\x00\x00'
	run -1 --separate-stderr gptq-solve -m "$M" -g 32 neg.gqs
	[ "$stderr" = "gptq-solve: model.layers.0.self_attn.o_proj: Hessian is not positive definite even at damp 0.01" ]
}
