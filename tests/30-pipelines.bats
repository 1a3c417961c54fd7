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
	run -0 timeout 120 "$P/quantize.sh" "$M" sh-out --calib t.gqs --group-size 32
	run -0 timeout 120 make -s -f "$P/quantize.mk" MODEL="$M" OUT=mk-out CALIB=t.gqs GROUP=32
	diff -r sh-out mk-out
	ls mk-out.work | grep -q '^q-1.gqs$'
}

@test "quantize.mk resumes after kill -9 anywhere with identical output" {
	timeout 120 make -s -f "$P/quantize.mk" MODEL="$M" OUT=ref CALIB=t.gqs GROUP=32
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
		run -0 timeout 120 make -s -f "$P/quantize.mk" MODEL="$M" OUT=out CALIB=t.gqs GROUP=32
		diff -r ref out
		# no temporary or half-written file survives the resume
		[ "$(ls out.work | grep -c tmp)" -eq 0 ]
		[ "$(ls | grep -c 'out.tmp')" -eq 0 ]
	done
}

@test "quantize.mk without sequential mode solves layers in parallel" {
	run -0 timeout 120 make -s -j 2 -f "$P/quantize.mk" MODEL="$M" OUT=mk-out CALIB=t.gqs GROUP=32 SEQUENTIAL=0
	run -0 timeout 120 "$P/quantize.sh" "$M" sh-out --calib t.gqs --group-size 32 --no-sequential
	diff -r sh-out mk-out
	ls mk-out.work | grep -q '^h-0.gqs$'
}

@test "quantize.sh --save keeps the Hessians and modules for inspection" {
	run -0 timeout 120 "$P/quantize.sh" "$M" out --calib t.gqs --group-size 32 --save keep
	[ "$(gptq-dump keep/hessians.gqs | jq -s length)" -eq 8 ]
	[ "$(gptq-dump keep/qlinear.gqs | jq -r .kind | grep -c qlinear)" -eq 14 ]
}

@test "quantize.sh --rtn needs no calibration" {
	run -0 timeout 60 "$P/quantize.sh" "$M" out --rtn --bits 8 --group-size -1
	[ "$(jq -c '[.bits, .group_size]' out/quantize_config.json)" = "[8,-1]" ]
	[ "$(jq -r '.[] | .method' out/gptq_report.json | sort -u)" = rtn ]
}

@test "a failing stage fails the pipeline, leaves no output and does not hang" {
	run timeout 60 "$P/quantize.sh" "$M" out --calib t.gqs --bits 5
	[ "$status" -ne 0 ] && [ "$status" -ne 124 ]
	[ ! -e out ]
	run timeout 60 "$P/quantize.sh" /nonexistent out --calib t.gqs
	[ "$status" -ne 0 ] && [ "$status" -ne 124 ]
	run timeout 60 make -s -f "$P/quantize.mk" MODEL="$M" OUT=out CALIB=t.gqs BITS=5
	[ "$status" -ne 0 ] && [ "$status" -ne 124 ]
	[ ! -e out ]
	[ "$(ls out.work 2>/dev/null | grep -c '^q-')" -eq 0 ]
}

@test "quantize.sh rejects unknown options" {
	run -2 "$P/quantize.sh" "$M" out --bitz 4
	[ "${lines[0]}" = "quantize.sh: unknown option '--bitz'" ]
	run -0 "$P/quantize.sh" --help
	[[ "${lines[0]}" == "usage: quantize.sh MODEL OUT"* ]]
}
