#!/usr/bin/env bats
# Fault injection: the disk fills up while a tool writes. Outputs go to a
# small tmpfs (mounting needs root, as in CI; skipped otherwise): every tool
# must fail with "No space left on device" naming the file and leave the
# filesystem as it found it, whatever byte the space runs out at.

load helpers

setup() {
	setup_tools
	M=$BATS_TEST_DIRNAME/data/models/qwen3
	make_streams
	mkdir small
	mount -t tmpfs -o size=64k tmpfs small 2>/dev/null ||
		skip "cannot mount a tmpfs here (needs root): disk-full tests skipped"
}

teardown() {
	if mountpoint -q small 2>/dev/null; then
		umount small
	fi
}

@test "gptq-pack fails cleanly at every point the disk can fill up" {
	gptq-pack -m "$M" -o full q.gqs
	need=$(du -sk --apparent-size full | cut -f1)
	# from the first shard's header to the last config file
	for kb in $(seq 4 4 "$need"); do
		mount -o remount,size=${kb}k small
		run --separate-stderr gptq-pack -m "$M" -o small/out q.gqs
		if [ "$status" -eq 0 ]; then
			# it fit after all: then it is complete
			diff -r full small/out
			rm -rf small/out
			continue
		fi
		[ "$status" -eq 1 ]
		[[ "$stderr" == "gptq-pack: cannot write 'small/out.tmp."*"': No space left on device" ]]
		[ -z "$(ls -A small)" ]
	done
}

@test "stream outputs on a full disk fail naming the file and leave nothing" {
	run -1 --separate-stderr gptq-solve -m "$M" -g 32 -o small/q.gqs h.gqs
	[ "$stderr" = "gptq-solve: cannot write 'small/q.gqs': No space left on device" ]
	run -1 --separate-stderr gptq-hessian -m "$M" --no-sequential -o small/h.gqs t.gqs
	[ "$stderr" = "gptq-hessian: cannot write 'small/h.gqs': No space left on device" ]
	run -1 --separate-stderr gptq-calib -m "$BATS_TEST_DIRNAME/data/tokenizer" -n 200 -l 128 \
		-o small/t.gqs "$BATS_TEST_DIRNAME/data/corpus.txt"
	[ "$stderr" = "gptq-calib: cannot write 'small/t.gqs': No space left on device" ]
	run -1 --separate-stderr gptq-dump --split small/d h.gqs
	[[ "$stderr" == "gptq-dump: cannot write 'small/d.tmp."*"': No space left on device" ]]
	gptq-pack -m "$M" -o packed q.gqs
	run -1 --separate-stderr gptq-pack --unpack -m packed -o small/u.gqs
	[ "$stderr" = "gptq-pack: cannot write 'small/u.gqs': No space left on device" ]
	[ -z "$(ls -A small)" ]
}
