#!/usr/bin/env bats
# Fault injection: tools and pipelines interrupted by signals. A caught
# signal (INT, TERM, HUP) removes the temporary output and the process dies
# of that signal; SIGKILL cannot be caught, so it may leave a temporary name
# behind, but never the final one. Under `set -o pipefail` a killed or
# failing stage fails the whole pipeline and nothing downstream completes.

load helpers

setup_file() {
	cd "$BATS_FILE_TMPDIR" && make_streams
}

setup() {
	setup_tools
	M=$BATS_TEST_DIRNAME/data/models/qwen3
	cp "$BATS_FILE_TMPDIR"/*.gqs .
	mkfifo fifo
}

# interrupt SIG FILE CMD...: start CMD reading the FIFO, feed it the first
# 20000 bytes of FILE (less than a whole stream, so it is still working),
# wait for its temporary output, send SIG; sets $st to its exit status
interrupt() {
	local sig=$1 file=$2 pid
	shift 2
	# (a background job starts with SIGINT ignored, nohup with SIGHUP; a terminal's do not)
	env --default-signal "$@" <fifo 2>/dev/null &
	pid=$!
	exec 8>fifo
	head -c 20000 "$file" >&8
	wait_for '*.tmp.*'
	kill -s "$sig" "$pid"
	st=0
	wait "$pid" || st=$?
	exec 8>&-
}

@test "INT, TERM and HUP while gptq-pack writes remove its temporary directory" {
	for sig in INT TERM HUP; do
		interrupt $sig q.gqs gptq-pack -m "$M" -o out
		[ "$st" -eq $((128 + $(kill -l $sig))) ]
		[ ! -e out ]
		[ "$(ls | grep -c '\.tmp\.')" -eq 0 ]
	done
}

@test "SIGINT while a stream is written to -o removes the temporary file" {
	interrupt INT h.gqs gptq-solve -m "$M" -g 32 -o out.gqs
	[ "$st" -eq 130 ]
	interrupt INT h.gqs gptq-dump --split out.d
	[ "$st" -eq 130 ]
	[ "$(ls | grep -c -e '^out' -e '\.tmp\.')" -eq 0 ]
}

@test "signals ignored from the start stay ignored, as under nohup" {
	gptq-solve -m "$M" -g 32 -o want.gqs h.gqs 2>/dev/null
	for sig in INT TERM HUP; do
		sh -c "trap '' $sig; exec gptq-solve -m '$M' -g 32 -o out.gqs" <fifo 2>/dev/null &
		pid=$!
		exec 8>fifo
		head -c 20000 h.gqs >&8
		wait_for 'out.gqs.tmp.*'
		kill -s $sig $pid
		# the rest of the input: the run goes on to the end (regression: it died)
		tail -c +20001 h.gqs >&8
		exec 8>&-
		wait $pid
		# the same frames (the report's timings aside)
		[ "$(gptq-dump out.gqs | jq -c '[.kind, .metadata.name, .data_bytes]')" = \
			"$(gptq-dump want.gqs | jq -c '[.kind, .metadata.name, .data_bytes]')" ]
		rm out.gqs
	done
}

@test "SIGKILL leaves no final output, and the next run succeeds" {
	gptq-pack -m "$M" -o out <fifo 2>/dev/null &
	pid=$!
	exec 8>fifo
	head -c 20000 q.gqs >&8
	wait_for 'out.tmp.*'
	kill -KILL $pid
	wait $pid || st=$?
	exec 8>&-
	[ "$st" -eq 137 ]
	[ ! -e out ]
	# the uncatchable kill leaves only the temporary name, which nothing takes as done
	ls -d out.tmp.*
	run -0 gptq-pack -m "$M" -o out q.gqs
	[ -f out/model.safetensors ]
}

@test "a stage killed mid-stream fails the pipeline under pipefail and nothing is packed" {
	# kill_after N: passes N bytes through, then dies of SIGKILL
	kill_after() { head -c "$1"; kill -KILL $BASHPID; }
	off=$(gptq-dump h.gqs | jq -s '.[2].offset')
	# mid-frame (solve sees a truncated frame) and at a frame boundary (a clean
	# end of input: only pack notices the modules that never came)
	for n in $((off - 100)) $off; do
		run --separate-stderr bash -c "set -o pipefail; $(declare -f kill_after)
			gptq-hessian -m '$M' --no-sequential t.gqs | kill_after $n |
			gptq-solve -m '$M' -g 32 | gptq-pack -m '$M' -o out"
		[ "$status" -eq 1 ]
		# stages die in any order: find pack's line among the others'
		printf '%s\n' "$stderr" | grep -q '^gptq-pack: '
		[ "$(ls | grep -c -e '^out' -e '\.tmp\.')" -eq 0 ]
	done
	printf '%s\n' "$stderr" | grep -q '^gptq-pack: the input has no qlinear frame for '
	# at the boundary gptq-solve saw a clean end, not a truncated frame
	[ "$(printf '%s\n' "$stderr" | grep -c truncated)" -eq 0 ]
	# the last stage killed: its own status, 128 + 9
	run bash -c "set -o pipefail; gptq-solve -m '$M' -g 32 h.gqs | { kill -KILL \$BASHPID; }"
	[ "$status" -eq 137 ]
}

@test "Ctrl-C on quantize.sh stops every stage and leaves nothing behind" {
	mkdir tmp
	# calibration from a FIFO held open: every stage is up and waiting when the
	# signal comes; a background job starts with SIGINT ignored, a terminal's does not
	TMPDIR=$PWD/tmp env --default-signal setsid "$BATS_TEST_DIRNAME/../pipelines/quantize.sh" "$M" out --calib fifo \
		--group-size 32 >/dev/null 2>&1 &
	pid=$!
	exec 8>fifo
	cat t.gqs >&8
	wait_for 'tmp/quantize.*'
	for _ in $(seq 500); do
		[ "$(pgrep -g "$pid" | wc -l)" -ge 5 ] && break
		sleep 0.01
	done
	# the terminal's SIGINT goes to the whole foreground process group
	kill -INT -- -"$pid"
	st=0
	wait "$pid" || st=$?
	exec 8>&-
	[ "$st" -ne 0 ]
	[ "$(ls | grep -c -e '^out' -e '\.tmp\.')" -eq 0 ]
	[ -z "$(ls tmp)" ]
	# no stage outlives the interrupted pipeline
	sleep 0.1
	! pgrep -g "$pid" >/dev/null
}
