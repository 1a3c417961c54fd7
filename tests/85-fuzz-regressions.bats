#!/usr/bin/env bats
# Replays every input the fuzzers ever crashed on (tests/fuzz/regressions/)
# and the committed seeds through the same harnesses built with the normal
# compiler (tests/fuzz/fuzz.mk): under SANITIZE=1 with ASan and UBSan, under
# VALGRIND=1 with memcheck. A harness aborts on a broken invariant, so a
# reappearing bug fails here, not only in `make fuzz`.

load helpers

setup() {
	REPLAY=$(dirname "$GQ_TESTGEN")
	FUZZ=$BATS_TEST_DIRNAME/fuzz
}

# replay TARGET: runs the target's replay binary over its regressions and seeds
replay() {
	local bin=$REPLAY/fuzz-replay-$1 dirs=() d
	[ -x "$bin" ] || skip "$bin not built (make check builds it)"
	for d in "$FUZZ/regressions/$1" "$FUZZ/seeds/$1"; do
		[ -d "$d" ] && dirs+=("$d")
	done
	[ "${#dirs[@]}" -gt 0 ] || skip "no regressions or seeds for $1"
	if [ "${GQ_VALGRIND:-0}" = 1 ]; then
		run -0 valgrind -q --error-exitcode=99 --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
			"$bin" "${dirs[@]}"
	else
		run -0 "$bin" "${dirs[@]}"
	fi
	[[ "${lines[-1]}" == "replayed "*" input"* ]]
}

@test "stream regressions replay cleanly" { replay stream; }
@test "safetensors regressions replay cleanly" { replay safetensors; }
@test "config regressions replay cleanly" { replay config; }
@test "tokenizer regressions replay cleanly" { replay tokenizer; }
@test "tokenize regressions replay cleanly" { replay tokenize; }
@test "checkpoint regressions replay cleanly" { replay checkpoint; }
