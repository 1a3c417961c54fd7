#!/usr/bin/env bats
# gptq-solve: qlinear frames from Hessians, RTN, the report, and its errors.

load helpers

setup() {
	setup_tools
	M=$BATS_TEST_DIRNAME/data/models/qwen3
	testgen tokens 4 32 0 128 >t.gqs
	gptq-hessian -m "$M" --no-sequential t.gqs >h.gqs
}

# report: the report frame's modules object, one line
report() {
	gptq-dump "$1" | jq -r 'select(.kind == "report") | .metadata.modules'
}

@test "writes one qlinear frame per module of every Hessian, then a report" {
	gptq-solve -m "$M" -g 32 h.gqs >q.gqs
	gptq-dump q.gqs >out.json
	[ "$(jq -r .kind out.json | sort | uniq -c | awk '{ printf "%s %s;", $1, $2 }')" = "14 qlinear;1 report;" ]
	[ "$(jq -s -r '.[0].metadata.name' out.json)" = model.layers.0.self_attn.q_proj ]
	[ "$(jq -s -c '.[0].tensors | map([.name, .dtype, .shape])' out.json)" = \
		'[["g_idx","I32",[64]],["scales","F16",[2,64]],["codes","U8",[64,64]],["zeros","U8",[2,64]]]' ]
	[ "$(jq -s -c '.[0].metadata | [.bits, .group_size, .sym, .desc_act, .method]' out.json)" = \
		'["4","32","1","0","gptq"]' ]
	[ "$(report q.gqs | jq 'length')" -eq 14 ]
}

@test "--feedback writes each qlinear frame there too, to a FIFO as it goes or a file when complete" {
	gptq-solve -m "$M" -g 32 --feedback fb.gqs h.gqs >q.gqs
	gptq-dump --checksum q.gqs | jq -c 'select(.kind == "qlinear") | [.metadata.name, .tensors]' >want
	[ "$(wc -l <want)" -eq 14 ]
	gptq-dump --checksum fb.gqs | jq -c '[.metadata.name, .tensors]' >got
	cmp want got
	mkfifo fifo
	gptq-dump --checksum fifo >fifo.json &
	gptq-solve -m "$M" -g 32 --feedback fifo h.gqs >/dev/null
	wait $!
	jq -c '[.metadata.name, .tensors]' fifo.json | cmp want -
	run -1 gptq-solve -m "$M" --feedback /nonexistent/fb h.gqs
	[[ "$output" == "gptq-solve: cannot "*"/nonexistent/fb"* ]]
}

@test "GPTQ's objective is below round-to-nearest's on every module" {
	gptq-solve -m "$M" -g 32 --objective h.gqs | tee q.gqs >/dev/null
	gptq-solve -m "$M" -g 32 --rtn --objective h.gqs >r.gqs
	report q.gqs | jq -r 'to_entries[] | "\(.key) \(.value.objective)"' >g.txt
	report r.gqs | jq -r 'to_entries[] | "\(.key) \(.value.objective)"' >n.txt
	[ "$(wc -l <g.txt)" -eq 14 ]
	[ "$(paste g.txt n.txt | awk '$2 >= $4' | wc -l)" -eq 0 ]
}

@test "the float64 reference agrees with the fast solver" {
	gptq-solve -m "$M" -g 32 --desc-act h.gqs | gptq-dump --checksum >fast.json
	gptq-solve -m "$M" -g 32 --desc-act --reference h.gqs | gptq-dump --checksum >ref.json
	# g_idx (act order) is identical; losses within a percent
	diff <(jq -c 'select(.kind=="qlinear") | .tensors[] | select(.name=="g_idx") | .fnv1a64' fast.json) \
		<(jq -c 'select(.kind=="qlinear") | .tensors[] | select(.name=="g_idx") | .fnv1a64' ref.json)
	paste <(jq -r 'select(.kind=="qlinear") | .metadata.loss' fast.json) \
		<(jq -r 'select(.kind=="qlinear") | .metadata.loss' ref.json) |
		awk '{ d = ($1 - $2) / $2; if (d > 0.01 || d < -0.01) bad++ } END { exit bad }'
}

@test "--rtn --all quantizes every module without input" {
	run -0 --separate-stderr sh -c "gptq-solve -m '$M' --rtn --all -b 3 -g 32 | gptq-dump"
	[ "$(printf '%s\n' "$output" | jq -r 'select(.kind=="qlinear") | .metadata.method' | sort -u)" = rtn ]
	[ "$(printf '%s\n' "$output" | grep -c qlinear)" -eq 14 ]
}

@test "other frames pass through unchanged" {
	testgen report >r.gqs
	cat r.gqs h.gqs | gptq-solve -m "$M" -g 32 | gptq-dump --frame 0 -o first.safetensors
	cmp first.safetensors r.gqs
}

@test "an indefinite Hessian raises damp x1.25 until Cholesky succeeds, and says so once" {
	testgen hframe 64 model.layers.0.self_attn.q_proj 0 indefinite >bad.gqs
	run -0 --separate-stderr gptq-solve -m "$M" -g 32 -o q.gqs bad.gqs
	[ "$stderr" = "gptq-solve: model.layers.0.self_attn.q_proj: cholesky failed at damp 0.01, succeeded at 1.0842" ]
	[ "$(gptq-dump q.gqs | jq -s -r '.[0].metadata.damp')" = 1.0842021724855044 ]
	# q, k and v share one Hessian, prepared once: one warning naming them all
	qkv=model.layers.0.self_attn.q_proj,model.layers.0.self_attn.k_proj,model.layers.0.self_attn.v_proj
	testgen hframe 64 "$qkv" 0 indefinite >bad3.gqs
	run -0 --separate-stderr gptq-solve -m "$M" -g 32 -o qkv.gqs bad3.gqs
	[ "$stderr" = "gptq-solve: $qkv: cholesky failed at damp 0.01, succeeded at 1.0842" ]
	[ "$(gptq-dump qkv.gqs | jq -s -r '[.[] | select(.kind == "qlinear") | .metadata.damp] | unique | .[]')" = 1.0842021724855044 ]
}

@test "a Hessian no token reached falls back to round-to-nearest with a warning" {
	testgen hframe 64 model.layers.1.mlp.gate_proj,model.layers.1.mlp.up_proj 1 empty >e.gqs
	run -0 --separate-stderr gptq-solve -m "$M" -g 32 -o q.gqs e.gqs
	[ "${stderr_lines[0]}" = "gptq-solve: model.layers.1.mlp.gate_proj: no calibration token reached it, rounded to nearest" ]
	[ "$(gptq-dump q.gqs | jq -r 'select(.kind=="qlinear") | .metadata.method' | sort -u)" = rtn ]
}

@test "a Hessian stored as F16 solves as its float32 copy does" {
	testgen hframe 64 model.layers.0.self_attn.q_proj 0 spd >h32.gqs
	testgen hframe 64 model.layers.0.self_attn.q_proj 0 spd16 >h16.gqs
	[ "$(gptq-dump h16.gqs | jq -r '.tensors[0].dtype')" = F16 ]
	gptq-solve -q -m "$M" h32.gqs | gptq-dump --checksum - | grep -v report >q32.txt
	gptq-solve -q -m "$M" h16.gqs | gptq-dump --checksum - | grep -v report >q16.txt
	cmp q32.txt q16.txt
}

@test "bad Hessians are named precisely and leave no output" {
	testgen hframe 64 model.layers.0.self_attn.q_proj 0 nan >n.gqs
	run -1 gptq-solve -m "$M" -o q.gqs n.gqs
	[ "$output" = "gptq-solve: n.gqs: frame 0 at byte 0: H has a non-finite entry at [1, 1]" ]
	[ ! -e q.gqs ]
	testgen hframe 32 model.layers.0.self_attn.q_proj 0 spd >w.gqs
	run -1 gptq-solve -m "$M" w.gqs
	[ "${lines[0]}" = "gptq-solve: w.gqs: frame 0 at byte 0: H is 32 x 32 but model.layers.0.self_attn.q_proj has 64 inputs" ]
	testgen hframe 64 model.layers.9.self_attn.q_proj 9 spd >u.gqs
	run -1 gptq-solve -m "$M" u.gqs
	[[ "${lines[0]}" == "gptq-solve: "*": no linear module 'model.layers.9.self_attn.q_proj' in this qwen3 model" ]]
	head -c 1000 h.gqs >cut.gqs
	run -1 gptq-solve -m "$M" cut.gqs
	[[ "${lines[0]}" == "gptq-solve: cut.gqs: frame 0 at byte 0: truncated"* ]]
}

@test "usage errors exit 2" {
	run -2 --separate-stderr gptq-solve h.gqs
	[ "${stderr_lines[0]}" = "gptq-solve: -m MODEL is required" ]
	run -2 --separate-stderr gptq-solve -m "$M" --bits 5 h.gqs
	[ "${stderr_lines[0]}" = "gptq-solve: --bits: 5 is not 2, 3, 4 or 8" ]
	run -2 --separate-stderr gptq-solve -m "$M" -g -1 --static-groups h.gqs
	[ "${stderr_lines[0]}" = "gptq-solve: cannot use --static-groups without a group size" ]
	run -2 --separate-stderr gptq-solve -m "$M" --all
	[ "${stderr_lines[0]}" = "gptq-solve: --all quantizes without Hessians: it needs --rtn" ]
	run -2 --separate-stderr gptq-solve -m "$M" --damp 2 h.gqs
	[ "${stderr_lines[0]}" = "gptq-solve: --damp: '2' is out of range [0, 1]" ]
}

@test "--device cuda without a CUDA GPU fails naming the device and leaves no output" {
	if gptq-solve --version | grep -q 'cuda ([1-9]'; then
		skip "a CUDA GPU is present"
	fi
	run -1 --separate-stderr gptq-solve -m "$M" --device cuda -o q.gqs h.gqs
	if gptq-solve --version | grep -q cuda; then
		[ "$stderr" = "gptq-solve: device 'cuda': 0 GPUs visible" ]
	else
		[ "$stderr" = "gptq-solve: device 'cuda': built without CUDA" ]
	fi
	[ ! -e q.gqs ]
	run -1 --separate-stderr gptq-solve -m "$M" --device tpu h.gqs
	[ "$stderr" = "gptq-solve: unknown device 'tpu' (use cpu, cuda[:N] or hip[:N])" ]
}

@test "--device cuda solves like the CPU: g_idx exact, losses within 1%, 99% of codes" {
	gptq-solve --version | grep -q 'cuda ([1-9]' || skip "no CUDA GPU"
	run -2 --separate-stderr gptq-solve -m "$M" --device cuda --reference h.gqs
	[ "${stderr_lines[0]}" = "gptq-solve: cannot use --reference with --device cuda:0: it runs on the CPU" ]
	gptq-solve -m "$M" -g 32 --desc-act h.gqs >cpu.gqs
	gptq-solve -m "$M" -g 32 --desc-act --device cuda h.gqs >gpu.gqs
	gptq-dump --checksum cpu.gqs >cpu.json
	gptq-dump --checksum gpu.gqs >gpu.json
	diff <(jq -c 'select(.kind=="qlinear") | [.metadata.name, (.tensors[] | select(.name=="g_idx") | .fnv1a64)]' cpu.json) \
		<(jq -c 'select(.kind=="qlinear") | [.metadata.name, (.tensors[] | select(.name=="g_idx") | .fnv1a64)]' gpu.json)
	paste <(jq -r 'select(.kind=="qlinear") | .metadata.loss' cpu.json) \
		<(jq -r 'select(.kind=="qlinear") | .metadata.loss' gpu.json) |
		awk '{ d = ($1 - $2) / $1; if (d > 0.01 || d < -0.01) bad++ } END { exit bad }'
	differ=0 total=0
	for i in $(seq 0 13); do
		gptq-dump -x codes --frame "$i" -o c.st cpu.gqs
		gptq-dump -x codes --frame "$i" -o g.st gpu.gqs
		differ=$((differ + $(cmp -l c.st g.st | wc -l)))
		total=$((total + $(stat -c %s c.st)))
	done
	echo "codes differing: $differ of $total bytes"
	[ "$((differ * 100))" -le "$total" ]
}

@test "--mse and --static-groups change the solution and keep it valid" {
	gptq-solve -m "$M" -g 32 --objective h.gqs >plain.gqs
	gptq-solve -m "$M" -g 32 --mse --objective h.gqs >mse.gqs
	gptq-solve -m "$M" -g 32 --static-groups --desc-act --objective h.gqs >st.gqs
	s1=$(gptq-dump --checksum plain.gqs | jq -r 'select(.kind=="qlinear") | .tensors[] | select(.name=="scales") | .fnv1a64' | head -1)
	s2=$(gptq-dump --checksum mse.gqs | jq -r 'select(.kind=="qlinear") | .tensors[] | select(.name=="scales") | .fnv1a64' | head -1)
	[ "$s1" != "$s2" ]
	# static groups with act order keep g_idx in original column order: i / 32
	gptq-dump --extract model.layers.0.self_attn.o_proj -o o.safetensors st.gqs
	[ "$(gptq-dump --stats o.safetensors | jq -c '.tensors[] | select(.name=="g_idx") | [.stats.min, .stats.max, .stats.mean]')" = "[0,1,0.5]" ]
	[ "$(gptq-dump o.safetensors | jq -r '.metadata | [.static_groups, .desc_act] | join(",")')" = "1,1" ]
	for f in mse st; do
		[ "$(gptq-dump $f.gqs | jq -r 'select(.kind=="report") | .metadata.modules' | jq '[.[].objective] | all(. > 0)')" = true ]
	done
}
