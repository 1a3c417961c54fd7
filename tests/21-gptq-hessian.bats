#!/usr/bin/env bats
# gptq-hessian: Hessian frames, the sequential feedback loop, slices and
# resumption, merging, and failures that must not hang the pipeline.

load helpers

setup() {
	setup_tools
	M=$BATS_TEST_DIRNAME/data/models/qwen3
	testgen tokens 4 32 0 128 >t.gqs
}

@test "one frame per group of linears per layer, with their modules and token count" {
	gptq-hessian -m "$M" --no-sequential t.gqs >h.gqs
	gptq-dump --stats h.gqs >out.json
	[ "$(jq -s length out.json)" -eq 8 ]
	[ "$(jq -s -r '.[0].metadata.modules' out.json)" = \
		"model.layers.0.self_attn.q_proj,model.layers.0.self_attn.k_proj,model.layers.0.self_attn.v_proj" ]
	[ "$(jq -r .metadata.nsamples out.json | sort -u)" = 128 ]
	[ "$(jq -s -c '[.[] | .metadata.layer] | unique' out.json)" = '["0","1"]' ]
	[ "$(jq -s -c '.[3].tensors[0].shape' out.json)" = "[96,96]" ]
	[ "$(jq -r '.hessian.symmetry_error' out.json | sort -u)" = 0 ]
}

@test "padding does not count: n is the number of real tokens" {
	printf '[1,2,3,4,5]\n[6,7]\n' | gptq-calib --ids --docs >p.gqs
	gptq-hessian -m "$M" --no-sequential p.gqs | gptq-dump >out.json
	[ "$(jq -r .metadata.nsamples out.json | sort -u)" = 7 ]
}

@test "the sequential loop through a FIFO finishes and matches a layer-by-layer run" {
	mkfifo fb
	run -0 timeout $(limit 60) sh -c "gptq-hessian -m '$M' --feedback fb t.gqs | gptq-solve -m '$M' -g 32 | tee fb > q.gqs"
	run -0 timeout $(limit 60) sh -c "gptq-hessian -m '$M' --feedback fb --layers 0 --save-state a1.gqs t.gqs | gptq-solve -m '$M' -g 32 | tee fb > q0.gqs"
	[ "$(gptq-dump a1.gqs | jq -r '[.kind, .metadata.layer] | join(" ")' | sort -u)" = "activations 1" ]
	run -0 timeout $(limit 60) sh -c "gptq-hessian -m '$M' --feedback fb a1.gqs | gptq-solve -m '$M' -g 32 | tee fb > q1.gqs"
	diff <(gptq-dump --checksum q.gqs | jq -c 'select(.kind=="qlinear") | [.metadata.name, [.tensors[].fnv1a64]]') \
		<(cat q0.gqs q1.gqs | gptq-dump --checksum | jq -c 'select(.kind=="qlinear") | [.metadata.name, [.tensors[].fnv1a64]]')
}

@test "sequential Hessians differ from full-precision ones after the first step" {
	mkfifo fb
	timeout $(limit 60) sh -c "gptq-hessian -m '$M' --feedback fb t.gqs | tee hs.gqs | gptq-solve -m '$M' -g 32 | tee fb >/dev/null"
	gptq-hessian -m "$M" --no-sequential t.gqs >hn.gqs
	a=$(gptq-dump --checksum hs.gqs | jq -r '.tensors[0].fnv1a64')
	b=$(gptq-dump --checksum hn.gqs | jq -r '.tensors[0].fnv1a64')
	[ "$(echo "$a" | head -1)" = "$(echo "$b" | head -1)" ]
	[ "$(paste <(echo "$a") <(echo "$b") | awk '$1 != $2' | wc -l)" -eq 7 ]
}

@test "--layers keeps the Hessians of a slice" {
	gptq-hessian -m "$M" --no-sequential --layers 1-1 t.gqs | gptq-dump >out.json
	[ "$(jq -r .metadata.layer out.json | sort -u)" = 1 ]
	[ "$(jq -s length out.json)" -eq 4 ]
}

@test "--merge of two halves is the nsamples-weighted average of the whole" {
	testgen tokens 2 32 1 128 >a.gqs
	testgen tokens 2 32 2 128 >b.gqs
	gptq-hessian -m "$M" --no-sequential a.gqs >ha.gqs
	gptq-hessian -m "$M" --no-sequential b.gqs >hb.gqs
	gptq-hessian -m "$M" --no-sequential a.gqs b.gqs >hab.gqs
	gptq-hessian --merge ha.gqs hb.gqs >hm.gqs
	paste <(gptq-dump --stats hm.gqs | jq -r '.hessian.trace') <(gptq-dump --stats hab.gqs | jq -r '.hessian.trace') |
		awk '{ d = ($1 - $2) / $2; if (d > 1e-5 || d < -1e-5) bad++ } END { exit bad }'
	[ "$(gptq-dump hm.gqs | jq -r .metadata.nsamples | sort -u)" = 128 ]
	run -1 gptq-hessian --merge ha.gqs t.gqs
	[[ "$output" == *"merge needs hessian frames"* ]]
}

@test "--triangle sends H's lower triangle in half the bytes; every reader unfolds it to the same H" {
	gptq-hessian -m "$M" --no-sequential t.gqs >h.gqs
	gptq-hessian -m "$M" --no-sequential --triangle t.gqs >ht.gqs
	# 96 x 96 becomes 96 x 97 / 2 values
	[ "$(gptq-dump ht.gqs | jq -s -c '[.[3].tensors[0].name, .[3].tensors[0].shape]')" = '["H_lower",[4656]]' ]
	[ "$(stat -c %s ht.gqs)" -lt "$(( $(stat -c %s h.gqs) * 6 / 10 ))" ]
	# the same bytes of H: statistics, solutions and merges
	diff <(gptq-dump --stats h.gqs | jq -c .hessian) <(gptq-dump --stats ht.gqs | jq -c .hessian)
	gptq-solve -m "$M" -g 32 --desc-act h.gqs | gptq-dump --checksum | jq -c 'select(.kind == "qlinear") | [.tensors[].fnv1a64]' >q.json
	gptq-solve -m "$M" -g 32 --desc-act ht.gqs | gptq-dump --checksum | jq -c 'select(.kind == "qlinear") | [.tensors[].fnv1a64]' >qt.json
	[ "$(wc -l <q.json)" -eq 14 ]
	diff q.json qt.json
	gptq-hessian --merge h.gqs h.gqs >m.gqs
	gptq-hessian --merge --triangle ht.gqs h.gqs >mt.gqs
	[ "$(gptq-dump mt.gqs | jq -r '.tensors[0].name' | sort -u)" = H_lower ]
	diff <(gptq-dump --stats m.gqs | jq -c .hessian) <(gptq-dump --stats mt.gqs | jq -c .hessian)
	# sequential, through the loop
	mkfifo fb
	run -0 timeout $(limit 60) sh -c "gptq-hessian -m '$M' --feedback fb --triangle t.gqs | gptq-solve -m '$M' -g 32 --feedback fb >qs.gqs"
	run -0 timeout $(limit 60) sh -c "gptq-hessian -m '$M' --feedback fb t.gqs | gptq-solve -m '$M' -g 32 --feedback fb >qw.gqs"
	diff <(gptq-dump --checksum qs.gqs | jq -c 'select(.kind == "qlinear") | [.tensors[].fnv1a64]') \
		<(gptq-dump --checksum qw.gqs | jq -c 'select(.kind == "qlinear") | [.tensors[].fnv1a64]')
}

@test "a packed Hessian of the wrong length is named; a packed F16 one solves as the whole F32" {
	testgen hframe 64 model.layers.0.self_attn.o_proj 0 badtri >bad.gqs
	run -1 --separate-stderr gptq-solve -m "$M" -g 32 -o q.gqs bad.gqs
	[ "$stderr" = "gptq-solve: bad.gqs: frame 0 at byte 0: H_lower is not a packed triangle (n (n + 1) / 2 values)" ]
	[ ! -e q.gqs ]
	run -1 --separate-stderr gptq-dump --stats bad.gqs
	[[ "$stderr" == *"H_lower is not a packed triangle"* ]]
	testgen hframe 64 model.layers.0.self_attn.o_proj 0 spdtri16 >h16.gqs
	testgen hframe 64 model.layers.0.self_attn.o_proj 0 spd >h32.gqs
	diff <(gptq-solve -m "$M" -g 32 h16.gqs | gptq-dump --checksum | jq -c 'select(.kind == "qlinear") | [.tensors[].fnv1a64]') \
		<(gptq-solve -m "$M" -g 32 h32.gqs | gptq-dump --checksum | jq -c 'select(.kind == "qlinear") | [.tensors[].fnv1a64]')
}

@test "a process that fails early does not leave the loop hanging" {
	mkfifo fb
	run timeout $(limit 30) sh -c "gptq-hessian -m /nonexistent --feedback fb t.gqs | gptq-solve -m '$M' | tee fb >/dev/null"
	[ "$status" -ne 124 ]
	run timeout $(limit 30) sh -c "gptq-hessian -m '$M' --feedback fb t.gqs | gptq-solve -m '$M' --bits 5 | tee fb >/dev/null"
	[ "$status" -ne 124 ]
	run timeout $(limit 30) bash -c "set -o pipefail; gptq-hessian -m '$M' --feedback fb t.gqs | gptq-solve -m /nonexistent | tee fb >/dev/null"
	[ "$status" -ne 0 ] && [ "$status" -ne 124 ]
	# the same with gptq-solve writing the FIFO itself; the group holds the pipe
	# open after gptq-solve's death (as quantize.sh's function does), so that
	# gptq-hessian gets its Hessian out and waits on the FIFO
	rm fb && mkfifo fb
	run timeout $(limit 30) sh -c "gptq-hessian -m /nonexistent --feedback fb t.gqs | gptq-solve -m '$M' --feedback fb >/dev/null"
	[ "$status" -ne 124 ] && [ -p fb ]
	run timeout $(limit 30) bash -c "set -o pipefail; gptq-hessian -m '$M' --feedback fb t.gqs | { gptq-solve -m '$M' --bits 5 --feedback fb; sleep 2; } >/dev/null"
	[ "$status" -ne 0 ] && [ "$status" -ne 124 ] && [ -p fb ]
	run timeout $(limit 30) bash -c "set -o pipefail; gptq-hessian -m '$M' --feedback fb t.gqs | gptq-solve -m /nonexistent --feedback fb >/dev/null"
	[ "$status" -ne 0 ] && [ "$status" -ne 124 ] && [ -p fb ]
}

@test "bad input is named" {
	testgen tokens 2 8 0 320 >big.gqs
	run -1 gptq-hessian -m "$M" --no-sequential big.gqs
	[[ "$output" == "gptq-hessian: big.gqs: frame 0 at byte 0: input_ids[0][0] = "*" is not a token of this model (vocab 128)" ]]
	testgen report >r.gqs
	run -1 --separate-stderr gptq-hessian -m "$M" --no-sequential r.gqs
	[ "$stderr" = "gptq-hessian: no tokens frames in the input (make them with gptq-calib)" ]
	run -2 --separate-stderr gptq-hessian -m "$M" t.gqs
	[ "${stderr_lines[0]}" = "gptq-hessian: sequential mode needs --feedback FILE (or use --no-sequential)" ]
	run -2 --separate-stderr gptq-hessian -m "$M" --no-sequential --layers 3 t.gqs
	[[ "${stderr_lines[0]}" == "gptq-hessian: --layers: '3': "*"(the model has 2 layers)" ]]
	run -2 --separate-stderr gptq-hessian -m "$M" --feedback fb --recompute t.gqs
	[ "${stderr_lines[0]}" = "gptq-hessian: --recompute is for sequential mode on a GPU (--device)" ]
	run -2 --separate-stderr gptq-hessian -m "$M" --no-sequential --device cpu --recompute t.gqs
	[ "${stderr_lines[0]}" = "gptq-hessian: --recompute is for sequential mode on a GPU (--device)" ]
}

@test "--device cuda without a CUDA GPU fails naming the device and leaves no output" {
	if gptq-hessian --version | grep -q 'cuda ([1-9]'; then
		skip "a CUDA GPU is present"
	fi
	run -1 --separate-stderr gptq-hessian -m "$M" --no-sequential --device cuda -o h.gqs t.gqs
	if gptq-hessian --version | grep -q cuda; then
		[ "$stderr" = "gptq-hessian: device 'cuda': 0 GPUs visible" ]
	else
		[ "$stderr" = "gptq-hessian: device 'cuda': built without CUDA" ]
	fi
	[ ! -e h.gqs ]
	run -2 --separate-stderr gptq-hessian --merge --device cpu t.gqs
	[ "${stderr_lines[0]}" = "gptq-hessian: --merge takes only input files and output options" ]
}
