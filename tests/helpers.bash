# helpers.bash - shared setup for the bats CLI tests.
#
# The Makefile exports GQ_BINDIR (the tools under test), GQ_TESTGEN (the
# input generator), GQ_SHARED (../shared) and GQ_VALGRIND=1 to run every tool
# under valgrind memcheck: then PATH points at wrappers that fail a test on
# any memory error or definite leak (exit 99) while passing the tool's own exit
# status through. Blocks only possibly lost (the stacks of pool threads still
# running when die() exits) are neither counted nor shown: stderr stays the
# tool's own.

bats_require_minimum_version 1.5.0

: "${GQ_BINDIR:=$BATS_TEST_DIRNAME/../bin}"
: "${GQ_SHARED:=$BATS_TEST_DIRNAME/../../shared}"
# run by hand (bats tests/x.bats): the generator of whichever build exists
: "${GQ_TESTGEN:=$(ls "$BATS_TEST_DIRNAME"/../build/*/tests/gq-testgen 2>/dev/null | head -1)}"

setup_tools() {
	if [ "${GQ_VALGRIND:-0}" = 1 ]; then
		local wrap="$BATS_TEST_TMPDIR/vg"
		mkdir -p "$wrap"
		for tool in "$GQ_BINDIR"/gptq-*; do
			printf '#!/bin/sh\nexec valgrind -q --error-exitcode=99 --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite "%s" "$@"\n' \
				"$tool" >"$wrap/${tool##*/}"
			chmod +x "$wrap/${tool##*/}"
		done
		PATH="$wrap:$PATH"
	else
		PATH="$GQ_BINDIR:$PATH"
	fi
	export PATH
	cd "$BATS_TEST_TMPDIR" || return 1
}

testgen() {
	"$GQ_TESTGEN" "$@"
}

# limit SECONDS: a hang guard for timeout(1), ten times longer under valgrind
limit() {
	if [ "${GQ_VALGRIND:-0}" = 1 ]; then
		echo $(($1 * 10))
	else
		echo "$1"
	fi
}

# numerics_only: skip a long, purely numerical acceptance test under the
# sanitizers or valgrind (they find memory errors; the plain run checks the
# numbers, and the same code paths run in the shorter tests).
numerics_only() {
	if [ "${GQ_SANITIZE:-0}" = 1 ] || [ "${GQ_VALGRIND:-0}" = 1 ]; then
		skip "numerical acceptance: checked by the plain make check"
	fi
}

# require_shared REL: skip the test unless ../shared/REL exists (call it
# directly, not in $(...): a skip in a subshell does not skip the test).
require_shared() {
	[ -e "$GQ_SHARED/$1" ] || skip "../shared/$1 not present"
}

# mkst FILE HEADER_JSON DATA_BYTES: a safetensors blob with that exact header
# and DATA_BYTES zero bytes of data, for hand-made corrupt inputs.
mkst() {
	local file=$1 header=$2 nbytes=$3 len
	len=$(printf '%s' "$header" | wc -c)
	{
		printf '%016x' "$len" | sed 's/\(..\)/\1 /g' | awk '{for (i = NF; i >= 1; i--) printf "\\x%s", $i}' |
			xargs -0 printf
		printf '%s' "$header"
		head -c "$nbytes" /dev/zero
	} >"$file"
}

# make_streams: t.gqs (tokens), h.gqs (Hessians) and q.gqs (qlinear frames) of
# the qwen3 fixture in the current directory, made by the plain tools (inputs
# for the fault tests, not under test themselves)
make_streams() {
	local M=$BATS_TEST_DIRNAME/data/models/qwen3
	"$GQ_TESTGEN" tokens 4 32 0 128 >t.gqs
	"$GQ_BINDIR"/gptq-hessian -m "$M" --no-sequential t.gqs >h.gqs
	"$GQ_BINDIR"/gptq-solve -m "$M" -g 32 h.gqs >q.gqs 2>/dev/null
}

# no_output: nothing named out*, and no temporary left beside it
no_output() {
	[ "$(ls | grep -c -e '^out' -e '\.tmp\.')" -eq 0 ]
}

# mkmodel DIR HEADER_JSON DATA_BYTES: a model directory whose model.safetensors
# has that header and data (mkst), with the qwen3 fixture's config.json
mkmodel() {
	mkdir "$1"
	cp "$BATS_TEST_DIRNAME/data/models/qwen3/config.json" "$1"/
	mkst "$1/model.safetensors" "$2" "$3"
}

# poke FILE TENSOR nan|inf|1e6|-1|BYTES [INDEX]: overwrite element INDEX (default 0)
# of TENSOR in the safetensors FILE with that value in the tensor's own dtype, or
# with BYTES as printf escapes ('\x40\x00\x00\x00')
poke() {
	local f=$1 len off dtype bytes size
	len=$(od -An -t u8 -N 8 "$f" | tr -d ' ')
	off=$(dd if="$f" bs=1 skip=8 count="$len" status=none | jq ".\"$2\".data_offsets[0]")
	dtype=$(dd if="$f" bs=1 skip=8 count="$len" status=none | jq -r ".\"$2\".dtype")
	case $dtype:$3 in
	F32:nan) bytes='\x00\x00\xc0\x7f' ;;
	F32:inf) bytes='\x00\x00\x80\x7f' ;;
	F32:1e6) bytes='\x00\x24\x74\x49' ;;
	BF16:nan) bytes='\xc0\x7f' ;;
	BF16:inf) bytes='\x80\x7f' ;;
	BF16:1e6) bytes='\x74\x49' ;;
	F16:nan) bytes='\x00\x7e' ;;
	F16:inf) bytes='\x00\x7c' ;;
	F16:-1) bytes='\x00\xbc' ;;
	I32:-1) bytes='\xff\xff\xff\xff' ;;
	*:\\x*) bytes=$3 ;;
	*) echo "poke: no $3 in $dtype" >&2; return 1 ;;
	esac
	size=$(printf "$bytes" | wc -c)
	printf "$bytes" | dd of="$f" bs=1 seek=$((8 + len + off + ${4:-0} * size)) conv=notrunc status=none
}

# wait_for GLOB: until a path matching GLOB exists (5 s at most, limit 5 under valgrind)
wait_for() {
	for _ in $(seq $((100 * $(limit 5)))); do
		compgen -G "$1" >/dev/null && return 0
		sleep 0.01
	done
	return 1
}

# header_keys FILE: tensor names of a plain safetensors file, read with dd+jq
# (independent of the code under test).
header_keys() {
	local len
	len=$(od -An -t u8 -N 8 "$1" | tr -d ' ')
	dd if="$1" bs=1 skip=8 count="$len" status=none | jq -r 'keys[] | select(. != "__metadata__")' | sort
}
