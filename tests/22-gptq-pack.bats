#!/usr/bin/env bats
# gptq-pack: the AutoGPTQ layout, both zero formats, shards, exact unpacking,
# and refusals that leave nothing behind.

load helpers

setup() {
	setup_tools
	M=$BATS_TEST_DIRNAME/data/models/qwen3
	testgen tokens 4 32 0 128 >t.gqs
	gptq-hessian -m "$M" --no-sequential t.gqs >h.gqs
}

# tensors: name -> fnv1a64 of the codes, scales, zeros and g_idx of every module
qsums() {
	gptq-dump --checksum "$1" |
		jq -r 'select(.kind=="qlinear") | .metadata.name as $n | .tensors[] | "\($n) \(.name) \(.fnv1a64)"' | sort
}

@test "packs an AutoGPTQ checkpoint with configs and copies the rest" {
	gptq-solve -m "$M" -g 32 h.gqs >q.gqs
	run -0 gptq-pack -m "$M" -o out q.gqs
	[ "$(ls out | tr '\n' ' ')" = "config.json generation_config.json gptq_report.json model.safetensors quantize_config.json " ]
	[ "$(jq -c '[.bits, .group_size, .desc_act, .sym, .static_groups, .true_sequential, .quant_method, .checkpoint_format, .model_file_base_name]' out/quantize_config.json)" = \
		'[4,32,false,true,false,true,"gptq","gptq","model"]' ]
	[ "$(jq -c '.quantization_config.bits, .torch_dtype' out/config.json | tr '\n' ' ')" = '4 "float16" ' ]
	gptq-dump out/model.safetensors >d.json
	[ "$(jq -r '.metadata.format' d.json)" = pt ]
	[ "$(jq -c '[.tensors[] | select(.name | startswith("model.layers.0.self_attn.q_proj")) | [.name, .dtype, .shape]]' d.json)" = \
		'[["model.layers.0.self_attn.q_proj.qweight","I32",[8,64]],["model.layers.0.self_attn.q_proj.qzeros","I32",[2,8]],["model.layers.0.self_attn.q_proj.scales","F16",[2,64]],["model.layers.0.self_attn.q_proj.g_idx","I32",[64]]]' ]
	# unquantized tensors are float16 copies; no .weight remains for quantized modules
	[ "$(jq -r '.tensors[] | select(.name == "model.norm.weight") | .dtype' d.json)" = F16 ]
	[ "$(jq -r '.tensors[].name' d.json | grep -c 'q_proj.weight')" -eq 0 ]
	[ "$(jq '.tensors | length' d.json)" -eq $((14 * 4 + 2 * 4 + 3)) ]
}

@test "unpack(pack(x)) == x for every bit width and both formats" {
	for bits in 2 3 4 8; do
		for fmt in gptq gptq_v2; do
			gptq-solve -m "$M" -b "$bits" -g 32 h.gqs >q.gqs
			rm -rf out
			gptq-pack -m "$M" -o out --format "$fmt" q.gqs
			gptq-pack --unpack -m out >u.gqs
			diff <(qsums q.gqs) <(qsums u.gqs)
			[ "$(jq -r .checkpoint_format out/quantize_config.json)" = "$fmt" ]
		done
	done
}

@test "asymmetric quantization needs gptq_v2" {
	gptq-solve -m "$M" -g 32 --asym h.gqs >q.gqs
	run -1 gptq-pack -m "$M" -o out q.gqs
	[ "$output" = "gptq-pack: model.layers.0.self_attn.q_proj is asymmetric: checkpoint_format gptq stores zero - 1 and cannot hold a zero of 0; use --format gptq_v2" ]
	[ ! -e out ]
	run -0 gptq-pack -m "$M" -o out --format gptq_v2 q.gqs
	gptq-pack --unpack -m out >u.gqs
	diff <(qsums q.gqs) <(qsums u.gqs)
}

@test "--shard-size splits into shards with an index that covers every tensor" {
	gptq-solve -m "$M" -g 32 h.gqs >q.gqs
	gptq-pack -m "$M" -o out --shard-size 64K q.gqs
	ls out/model-0000*-of-0000*.safetensors >shards
	[ "$(wc -l <shards)" -ge 2 ]
	[ "$(jq '.weight_map | length' out/model.safetensors.index.json)" -eq $((14 * 4 + 2 * 4 + 3)) ]
	diff <(jq -r '.weight_map | keys[]' out/model.safetensors.index.json | sort) \
		<(gptq-dump out | jq -r '.tensors[].name' | sort)
	gptq-pack --unpack -m out >u.gqs
	diff <(qsums q.gqs) <(qsums u.gqs)
}

@test "missing, duplicate and foreign qlinear frames are refused, writing nothing" {
	gptq-solve -m "$M" -g 32 h.gqs >q.gqs
	gptq-dump --split parts q.gqs
	run -1 gptq-pack -m "$M" -o out parts/0000[0-5]*
	[ "$output" = "gptq-pack: the input has no qlinear frame for model.layers.0.mlp.down_proj" ]
	[ ! -e out ]
	run -1 gptq-pack -m "$M" -o out q.gqs parts/00003-qlinear*
	[[ "$output" == "gptq-pack: two qlinear frames for model.layers.0.self_attn.o_proj"* ]]
	gptq-solve -m "$M" -g 16 h.gqs >q16.gqs
	run -1 gptq-pack -m "$M" -o out parts/00000* q16.gqs
	[[ "$output" == *"quantized with other settings than"* ]]
	run -1 gptq-pack -m "$M" -o out t.gqs
	[ "$output" = "gptq-pack: the input has no qlinear frames (make them with gptq-solve)" ]
	[ ! -e out ]
}

@test "shapes that cannot be packed at the bit width are named" {
	testgen checkpoint small
	gptq-solve -m small --rtn --all -b 3 -g 8 >q.gqs
	run -1 gptq-pack -m small -o out q.gqs
	[ "$output" = "gptq-pack: model.layers.0.self_attn.q_proj: [16, 16] cannot be packed at 3 bits (both dimensions must be multiples of 32)" ]
	[ ! -e out ]
	gptq-solve -m small --rtn --all -b 4 -g 8 >q4.gqs
	run -0 gptq-pack -m small -o out q4.gqs
}

@test "an existing output is replaced only with -f" {
	gptq-solve -m "$M" -g 32 h.gqs >q.gqs
	gptq-pack -m "$M" -o out q.gqs
	run -1 gptq-pack -m "$M" -o out q.gqs
	[ "$output" = "gptq-pack: 'out' already exists (not replacing it)" ]
	run -0 gptq-pack -m "$M" -o out -f q.gqs
	[ "$(ls | grep -c tmp)" -eq 0 ]
}

@test "a Conv1D model (gpt2) packs its transposed weights" {
	M2=$BATS_TEST_DIRNAME/data/models/gpt2_layer_scaled
	gptq-solve -m "$M2" --rtn --all -g 32 >q.gqs
	gptq-pack -m "$M2" -o out q.gqs
	gptq-dump out | jq -c '.tensors[] | select(.name == "transformer.h.0.attn.c_attn.qweight") | .shape' >s
	[ "$(cat s)" = "[8,192]" ]
	gptq-dump out | jq -c '.tensors[] | select(.name == "transformer.h.0.attn.c_attn.bias") | .dtype' | grep -q F16
}
