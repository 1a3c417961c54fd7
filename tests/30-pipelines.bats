#!/usr/bin/env bats
# pipelines/: quantize.sh (one pipeline) and quantize.mk (a make target per
# layer): same bytes either way, resumable after kill -9, nothing on failure.

load helpers

setup() {
	setup_tools
	M=$BATS_TEST_DIRNAME/data/models/qwen3
	P=$BATS_TEST_DIRNAME/../pipelines
	testgen tokens 8 64 0 128 >t.gqs
}

@test "quantize.sh and quantize.mk give byte-identical checkpoints" {
	run -0 timeout $(limit 120) "$P/quantize.sh" "$M" sh-out --calib t.gqs --group-size 32
	run -0 timeout $(limit 120) make -s -f "$P/quantize.mk" MODEL="$M" OUT=mk-out CALIB=t.gqs GROUP=32
	diff -r sh-out mk-out
	ls mk-out.work | grep -q '^q-1.gqs$'
}

@test "quantize.mk resumes after kill -9 anywhere with identical output" {
	timeout $(limit 120) make -s -f "$P/quantize.mk" MODEL="$M" OUT=ref CALIB=t.gqs GROUP=32
	# kill when each of these appears, and at a few random moments
	for point in act-0.gqs q-0.gqs.tmp q-0.gqs act-1.gqs q-1.gqs.tmp 0.05 0.12 0.2; do
		rm -rf out out.work
		setsid make -s -f "$P/quantize.mk" MODEL="$M" OUT=out CALIB=t.gqs GROUP=32 >/dev/null 2>&1 &
		pid=$!
		case $point in
		*.gqs*) for i in $(seq 400); do [ -e "out.work/$point" ] && break; sleep 0.005; done ;;
		*) sleep "$point" ;;
		esac
		kill -9 -- -"$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		run -0 timeout $(limit 120) make -s -f "$P/quantize.mk" MODEL="$M" OUT=out CALIB=t.gqs GROUP=32
		diff -r ref out
		# no temporary or half-written file survives the resume
		ls out.work | grep tmp && return 1
		[ "$(ls | grep -c 'out.tmp')" -eq 0 ]
	done
}

@test "quantize.mk without sequential mode solves every group of linears as its own target" {
	run -0 timeout $(limit 120) make -s -j 2 -f "$P/quantize.mk" MODEL="$M" OUT=mk-out CALIB=t.gqs GROUP=32 SEQUENTIAL=0
	run -0 timeout $(limit 120) "$P/quantize.sh" "$M" sh-out --calib t.gqs --group-size 32 --no-sequential
	diff -r sh-out mk-out
	ls mk-out.work | grep -q '^h-0.gqs$'
	# q/k/v, o, gate/up, down in each of the two layers
	[ "$(ls mk-out.work | grep -c '^q-[01]-[0-3].gqs$')" -eq 8 ]
	# experts are groups too: attention 2 + 4 experts x 2, a layer
	mx=$BATS_TEST_DIRNAME/data/models/mixtral_top2of4
	run -0 timeout $(limit 120) make -s -j 2 -f "$P/quantize.mk" MODEL="$mx" OUT=mx-mk CALIB=t.gqs GROUP=32 SEQUENTIAL=0
	run -0 timeout $(limit 120) "$P/quantize.sh" "$mx" mx-sh --calib t.gqs --group-size 32 --no-sequential
	diff -r mx-sh mx-mk
	[ "$(ls mx-mk.work | grep -c '^q-1-[0-9]*.gqs$')" -eq 10 ]
}

@test "quantize.mk -j resumes after kill -9 anywhere with identical output" {
	mk=(make -s -j 2 -f "$P/quantize.mk" MODEL="$M" CALIB=t.gqs GROUP=32 SEQUENTIAL=0)
	timeout $(limit 120) "${mk[@]}" OUT=ref
	( cd ref && sha256sum -- * ) >ref.sum
	# kill when each of these appears, and at random moments (the seed is printed on failure)
	seed=${GQ_TEST_SEED:-$RANDOM}
	echo "RANDOM seed $seed"
	RANDOM=$seed
	for point in h-0.gqs q-0-2.gqs q-0.gqs h-1.gqs q-1-3.gqs r r r r; do
		rm -rf out out.work
		setsid "${mk[@]}" OUT=out >/dev/null 2>&1 &
		pid=$!
		case $point in
		*.gqs) for i in $(seq 400); do [ -e "out.work/$point" ] && break; sleep 0.005; done ;;
		r) ms=$((RANDOM % 2500)); sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))" ;;
		esac
		kill -9 -- -"$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		run -0 timeout $(limit 120) "${mk[@]}" OUT=out
		( cd out && sha256sum -c --quiet ../ref.sum )
		[ "$(ls out | wc -l)" -eq "$(wc -l <ref.sum)" ]
		ls out.work | grep tmp && return 1
		[ "$(ls | grep -c 'out.tmp')" -eq 0 ]
	done
}

@test "slurm/submit.sh --local gives quantize.sh's checkpoint in every mode" {
	S=$P/slurm/submit.sh
	mx=$BATS_TEST_DIRNAME/data/models/mixtral_top2of4
	run -0 timeout $(limit 120) "$P/quantize.sh" "$M" ref --calib t.gqs --group-size 32
	# the step chain: every step's Hessians from quantized earlier steps, outside the loop
	run -0 timeout $(limit 120) "$S" "$M" steps --calib t.gqs --group-size 32 --chain steps --local
	diff -r ref steps
	run -0 timeout $(limit 120) "$S" "$M" layers --calib t.gqs --group-size 32 --chain layers --local
	diff -r ref layers
	run -0 timeout $(limit 120) "$P/quantize.sh" "$M" ref-ns --calib t.gqs --group-size 32 --no-sequential
	run -0 timeout $(limit 120) "$S" "$M" ns --calib t.gqs --group-size 32 --no-sequential --local
	diff -r ref-ns ns
	# steps of several groups (experts)
	run -0 timeout $(limit 120) "$P/quantize.sh" "$mx" mx-ref --calib t.gqs --group-size 32
	run -0 timeout $(limit 120) "$S" "$mx" mx --calib t.gqs --group-size 32 --chain steps --local
	diff -r mx-ref mx
}

@test "slurm/submit.sh checks its arguments before submitting anything" {
	S=$P/slurm/submit.sh
	run -2 "$S" "$M" out
	[ "${lines[0]}" = "submit.sh: --calib TOKENS.gqs is required" ]
	run -1 "$S" "$M" out --calib nope.gqs
	[ "${lines[0]}" = "submit.sh: cannot read calibration shard 'nope.gqs'" ]
	run -2 "$S" "$M" out --calib t.gqs --bitz 4
	[ "${lines[0]}" = "submit.sh: unknown option '--bitz'" ]
	run -2 "$S" "$M" out --calib t.gqs --no-sequential --chain steps
	[ "${lines[0]}" = "submit.sh: cannot use --chain with --no-sequential" ]
	run -2 "$S" "$M" out --calib t.gqs --wait --local
	[ "${lines[0]}" = "submit.sh: cannot use --wait with --local" ]
	run -2 "$S" "$M" out --calib
	[ "${lines[0]}" = "submit.sh: --calib needs an argument" ]
	[ ! -e out.work ]
	run -0 "$S" --help
	[[ "${lines[0]}" == "usage: submit.sh MODEL OUT"* ]]
}

@test "quantize.sh --save keeps the Hessians (whole) and modules for inspection, same checkpoint" {
	run -0 timeout $(limit 120) "$P/quantize.sh" "$M" out --calib t.gqs --group-size 32 --save keep
	[ "$(gptq-dump keep/hessians.gqs | jq -s length)" -eq 8 ]
	[ "$(gptq-dump keep/hessians.gqs | jq -r '.tensors[].name' | sort -u)" = H ]
	[ "$(gptq-dump keep/qlinear.gqs | jq -r .kind | grep -c qlinear)" -eq 14 ]
	# without --save the Hessians cross the pipe packed: the same checkpoint
	run -0 timeout $(limit 120) "$P/quantize.sh" "$M" out2 --calib t.gqs --group-size 32
	cmp out/model.safetensors out2/model.safetensors
}

@test "quantize.sh -v times every layer's phases, in either mode, with the same checkpoint" {
	run -0 timeout $(limit 120) "$P/quantize.sh" "$M" quiet --calib t.gqs --group-size 32
	run -0 timeout $(limit 120) "$P/quantize.sh" "$M" loud --calib t.gqs --group-size 32 -v
	cmp quiet/model.safetensors loud/model.safetensors
	layers=$(jq .num_hidden_layers "$M/config.json")
	[ "$(grep -c '^gptq-hessian: layer [0-9]*: load .* feedback wait' <<<"$output")" -eq "$layers" ]
	run -0 timeout $(limit 120) "$P/quantize.sh" "$M" loud-ns --calib t.gqs --group-size 32 -v --no-sequential
	[ "$(grep -c '^gptq-hessian: layer [0-9]*: load .* hessians out' <<<"$output")" -eq "$layers" ]
}

@test "quantize.sh --rtn needs no calibration" {
	run -0 timeout $(limit 60) "$P/quantize.sh" "$M" out --rtn --bits 8 --group-size -1
	[ "$(jq -c '[.bits, .group_size]' out/quantize_config.json)" = "[8,-1]" ]
	[ "$(jq -r '.[] | .method' out/gptq_report.json | sort -u)" = rtn ]
}

@test "a failing stage fails the pipeline, leaves no output and does not hang" {
	run timeout $(limit 60) "$P/quantize.sh" "$M" out --calib t.gqs --bits 5
	[ "$status" -ne 0 ] && [ "$status" -ne 124 ]
	[ ! -e out ]
	run timeout $(limit 60) "$P/quantize.sh" /nonexistent out --calib t.gqs
	[ "$status" -ne 0 ] && [ "$status" -ne 124 ]
	run timeout $(limit 60) make -s -f "$P/quantize.mk" MODEL="$M" OUT=out CALIB=t.gqs BITS=5
	[ "$status" -ne 0 ] && [ "$status" -ne 124 ]
	[ ! -e out ]
	[ "$(ls out.work 2>/dev/null | grep -c '^q-')" -eq 0 ]
}

@test "the pipelines ask glibc for huge pages, and keep a caller's GLIBC_TUNABLES" {
	# stand-in tools that report the environment the stages see
	mkdir stub
	printf '#!/bin/sh\necho "$GLIBC_TUNABLES" >stub/seen\n' >stub/gptq-solve
	printf '#!/bin/sh\ncat >/dev/null\n' >stub/gptq-pack
	chmod +x stub/gptq-solve stub/gptq-pack
	PATH=$PWD/stub:$PATH env -u GLIBC_TUNABLES "$P/quantize.sh" "$M" out --rtn
	[ "$(cat stub/seen)" = glibc.malloc.hugetlb=1 ]
	PATH=$PWD/stub:$PATH GLIBC_TUNABLES=glibc.malloc.check=0 "$P/quantize.sh" "$M" out --rtn
	[ "$(cat stub/seen)" = glibc.malloc.check=0 ]
	env -u GLIBC_TUNABLES make -s -f "$P/quantize.mk" MODEL="$M" OUT=out CALIB=t.gqs --eval 'seen: ; @echo "$$GLIBC_TUNABLES"' seen >mk
	[ "$(cat mk)" = glibc.malloc.hugetlb=1 ]
	GLIBC_TUNABLES=glibc.malloc.check=0 make -s -f "$P/quantize.mk" MODEL="$M" OUT=out CALIB=t.gqs --eval 'seen: ; @echo "$$GLIBC_TUNABLES"' seen >mk
	[ "$(cat mk)" = glibc.malloc.check=0 ]
}

@test "quantize.sh rejects unknown options" {
	run -2 "$P/quantize.sh" "$M" out --bitz 4
	[ "${lines[0]}" = "quantize.sh: unknown option '--bitz'" ]
	run -0 "$P/quantize.sh" --help
	[[ "${lines[0]}" == "usage: quantize.sh MODEL OUT"* ]]
}
