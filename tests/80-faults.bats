#!/usr/bin/env bats
# Fault injection at the CLI: every tool fed truncated, corrupt, empty and
# wrong-kind input on stdin, missing and unreadable files, and outputs that
# cannot be written. Each failure must exit 1 with one clear line naming the
# input (frame and byte offset for streams) and leave no named output behind.

load helpers

setup_file() {
	cd "$BATS_FILE_TMPDIR" && make_streams
}

setup() {
	setup_tools
	M=$BATS_TEST_DIRNAME/data/models/qwen3
	cp "$BATS_FILE_TMPDIR"/*.gqs .
}

# input_for TOOL: the stream kind each tool consumes
input_for() {
	case $1 in
	gptq-hessian) echo t.gqs ;;
	gptq-solve) echo h.gqs ;;
	gptq-pack) echo q.gqs ;;
	*) echo h.gqs ;;
	esac
}

# tool TOOL: the command line that reads stdin
tool() {
	case $1 in
	gptq-dump) echo "gptq-dump" ;;
	gptq-hessian) echo "gptq-hessian -m $M --no-sequential" ;;
	gptq-solve) echo "gptq-solve -m $M -g 32" ;;
	gptq-pack) echo "gptq-pack -m $M -o out" ;;
	esac
}

# frame_offset FILE N: byte offset of frame N
frame_offset() {
	gptq-dump "$1" | jq -s ".[$2].offset"
}

@test "every stream tool names a truncated stdin by frame and offset, exits 1 and writes nothing" {
	for t in gptq-dump gptq-hessian gptq-solve gptq-pack; do
		in=$(input_for $t)
		# inside the length field, inside the header, inside the first frame's data
		for cut in 5 40 $(($(frame_offset "$in" 1) - 7)); do
			head -c $cut "$in" >cut.gqs
			for how in file pipe; do
				if [ $how = file ]; then
					run -1 --separate-stderr sh -c "$(tool $t) <cut.gqs >/dev/null"
				else
					run -1 --separate-stderr sh -c "cat cut.gqs | $(tool $t) >/dev/null"
				fi
				[ "${#stderr_lines[@]}" -eq 1 ]
				[[ "$stderr" == "$t: <stdin>: frame 0 at byte 0: truncated: "* ]]
				no_output
			done
		done
	done
}

@test "a stream cut after complete frames names the first incomplete frame" {
	for t in gptq-dump gptq-hessian gptq-solve gptq-pack; do
		in=$(input_for $t)
		[ "$(gptq-dump "$in" | wc -l)" -ge 2 ] || continue
		off=$(frame_offset "$in" 1)
		head -c $((off + 30)) "$in" >cut.gqs
		run -1 --separate-stderr sh -c "$(tool $t) <cut.gqs >/dev/null"
		[[ "${stderr_lines[0]}" == "$t: <stdin>: frame 1 at byte $off: truncated: "* ]]
		no_output
	done
}

@test "corrupt stdin is named, never parsed as data" {
	for t in gptq-dump gptq-hessian gptq-solve gptq-pack; do
		cp "$(input_for $t)" bad.gqs
		printf 'X' | dd of=bad.gqs bs=1 seek=8 conv=notrunc status=none
		run -1 --separate-stderr sh -c "$(tool $t) <bad.gqs >/dev/null"
		[ "$stderr" = "$t: <stdin>: frame 0 at byte 0: header is not valid JSON (error at byte 8)" ]
		no_output
		# text is not a stream: its first 8 bytes make an absurd header length
		run -1 --separate-stderr sh -c "$(tool $t) <'$BATS_TEST_DIRNAME/data/corpus.txt' >/dev/null"
		[[ "$stderr" == "$t: <stdin>: frame 0 at byte 0: header length "*" exceeds the limit of 100000000 bytes (not a safetensors frame?)" ]]
		no_output
	done
}

@test "a damaged zstd stdin fails every stream tool" {
	for t in gptq-dump gptq-hessian gptq-solve gptq-pack; do
		zstd -q -c "$(input_for $t)" >z.zst
		size=$(wc -c <z.zst)
		head -c $((size / 2)) z.zst >cut.zst
		run -1 --separate-stderr sh -c "$(tool $t) <cut.zst >/dev/null"
		[ "$stderr" = "$t: <stdin>: compressed input ends inside a zstd frame" ]
		no_output
		# damaged compressed bytes: zstd's format check or its checksum at the end
		# fails, or the garbage they decode to fails as a frame first
		cp z.zst bad.zst
		printf '\377\377\377\377' | dd of=bad.zst bs=1 seek=$((size / 2)) conv=notrunc status=none
		run -1 --separate-stderr sh -c "$(tool $t) <bad.zst >/dev/null"
		[ "${#stderr_lines[@]}" -eq 1 ]
		[[ "$stderr" == "$t: <stdin>: corrupt zstd data near byte "* || "$stderr" == "$t: <stdin>: frame "* ]]
		no_output
	done
}

@test "a qlinear frame with codes past its bit width is refused by gptq-pack" {
	# the first frame's codes start right after its header; 0xff is no 4-bit code
	len=$(od -An -t u8 -N 8 q.gqs | tr -d ' ')
	begin=$(dd if=q.gqs bs=1 skip=8 count="$len" status=none | jq '.codes.data_offsets[0]')
	name=$(gptq-dump q.gqs | jq -r -s '.[0].metadata.name')
	printf '\377' | dd of=q.gqs bs=1 seek=$((8 + len + begin)) conv=notrunc status=none
	run -1 --separate-stderr gptq-pack -m "$M" -o out <q.gqs
	[ "$stderr" = "gptq-pack: <stdin>: frame 0 at byte 0: $name: code 255 at 0 exceeds 4 bits" ]
	no_output
}

@test "empty stdin: a clear error where input is required, an empty result where not" {
	run -0 --separate-stderr gptq-dump </dev/null
	[ -z "$output" ] && [ -z "$stderr" ]
	run -1 --separate-stderr gptq-hessian -m "$M" --no-sequential </dev/null
	[ "$stderr" = "gptq-hessian: no tokens frames in the input (make them with gptq-calib)" ]
	run -1 --separate-stderr gptq-pack -m "$M" -o out </dev/null
	[ "$stderr" = "gptq-pack: the input has no qlinear frames (make them with gptq-solve)" ]
	no_output
	run -1 --separate-stderr gptq-calib -m "$BATS_TEST_DIRNAME/data/tokenizer" -n 2 -l 16 -o out </dev/null
	[ "$stderr" = "gptq-calib: no documents in the input" ]
	no_output
	# gptq-solve is a filter: no Hessians in, an empty report out
	gptq-solve -m "$M" </dev/null | gptq-dump >r.json
	[ "$(jq -c '[.kind, .metadata.modules]' r.json)" = '["report","{}"]' ]
}

@test "wrong-kind stdin: consumers refuse it, filters pass it through unchanged" {
	for in in h.gqs q.gqs; do
		run -1 --separate-stderr gptq-hessian -m "$M" --no-sequential <$in
		[ "$stderr" = "gptq-hessian: no tokens frames in the input (make them with gptq-calib)" ]
	done
	for in in t.gqs h.gqs; do
		run -1 --separate-stderr gptq-pack -m "$M" -o out <$in
		[ "$stderr" = "gptq-pack: the input has no qlinear frames (make them with gptq-solve)" ]
		no_output
	done
	# a model file is a one-frame stream, but not one of Hessians
	run -1 --separate-stderr gptq-pack -m "$M" -o out <"$M/model.safetensors"
	[ "$stderr" = "gptq-pack: the input has no qlinear frames (make them with gptq-solve)" ]
	run -1 --separate-stderr gptq-calib -m "$BATS_TEST_DIRNAME/data/tokenizer" -n 2 -l 16 <q.gqs
	[[ "$stderr" == "gptq-calib: text is not valid UTF-8 (byte "*")" ]]
	run -1 --separate-stderr gptq-calib --ids -n 2 -l 16 <t.gqs
	[[ "$stderr" == "gptq-calib: <stdin>:1: "* ]]
	# tokens and qlinear frames flow through gptq-solve byte for byte, before its report
	cat t.gqs q.gqs | gptq-solve -m "$M" >s.gqs
	head -c $(($(wc -c <t.gqs) + $(wc -c <q.gqs))) s.gqs | cmp - <(cat t.gqs q.gqs)
	[ "$(gptq-dump s.gqs | jq -r .kind | tail -1)" = report ]
}

@test "named outputs never appear when the input is bad" {
	head -c 3000 h.gqs >cut.gqs
	run -1 gptq-solve -m "$M" -o out.gqs cut.gqs
	run -1 gptq-dump --split out.d cut.gqs
	run -1 gptq-dump --frame 1 -o out.st cut.gqs
	head -c 100 t.gqs >tcut.gqs
	run -1 gptq-hessian -m "$M" --no-sequential -o out.h tcut.gqs
	head -c 3000 q.gqs >qcut.gqs
	run -1 gptq-pack -m "$M" -o out qcut.gqs
	printf 'caf\xe9\n' >bad.txt
	run -1 gptq-calib -m "$BATS_TEST_DIRNAME/data/tokenizer" -n 1 -l 2 -o out.t bad.txt
	no_output
}

@test "missing inputs, directories and unreadable files are named" {
	for t in gptq-dump gptq-hessian gptq-solve gptq-pack; do
		run -1 --separate-stderr sh -c "$(tool $t) nope.gqs"
		[ "$stderr" = "$t: cannot open 'nope.gqs': No such file or directory" ]
	done
	mkdir d
	for t in gptq-hessian gptq-solve gptq-pack; do
		run -1 --separate-stderr sh -c "$(tool $t) d"
		[ "$stderr" = "$t: 'd' is a directory" ]
	done
	run -1 --separate-stderr gptq-calib -m "$BATS_TEST_DIRNAME/data/tokenizer" nope.txt
	[[ "$stderr" == "gptq-calib: cannot open 'nope.txt'"* ]]
	no_output
	[ "$(id -u)" -ne 0 ] || skip "running as root: permissions do not stop reads"
	cp h.gqs locked.gqs
	chmod 000 locked.gqs
	run -1 --separate-stderr gptq-solve -m "$M" locked.gqs
	[ "$stderr" = "gptq-solve: cannot open 'locked.gqs': Permission denied" ]
}

@test "a broken model directory is named before any work" {
	run -1 --separate-stderr gptq-solve -m nonexistent h.gqs
	[[ "$stderr" == "gptq-solve: cannot open 'nonexistent"* ]]
	mkdir m
	cp "$M/model.safetensors" m/
	run -1 --separate-stderr gptq-solve -m m h.gqs
	[[ "$stderr" == "gptq-solve: cannot open 'm/config.json'"* ]]
	printf '{"model_type": "qwen3",' >m/config.json
	run -1 --separate-stderr gptq-solve -m m h.gqs
	[ "$stderr" = "gptq-solve: m/config.json: not valid JSON" ]
	cp "$M/config.json" m/
	size=$(wc -c <"$M/model.safetensors")
	head -c $((size - 10)) "$M/model.safetensors" >m/model.safetensors
	run -1 --separate-stderr gptq-hessian -m m --no-sequential t.gqs
	[ "$stderr" = "gptq-hessian: m/model.safetensors: truncated: tensors need $((size - 8 - $(od -An -t u8 -N 8 "$M/model.safetensors"))) bytes of data but the file has $((size - 18 - $(od -An -t u8 -N 8 "$M/model.safetensors")))" ]
	rm m/model.safetensors
	run -1 --separate-stderr gptq-pack -m m -o out q.gqs
	[[ "$stderr" == "gptq-pack: 'm' has no model.safetensors, model.safetensors.index.json"* ]]
	no_output
}

@test "outputs that cannot be written fail with the reason" {
	touch plainfile
	run -1 --separate-stderr gptq-solve -m "$M" -o plainfile/q.gqs h.gqs
	[[ "$stderr" == "gptq-solve: cannot create 'plainfile/q.gqs"*"Not a directory" ]]
	run -1 --separate-stderr gptq-pack -m "$M" -o plainfile/out q.gqs
	[[ "$stderr" == "gptq-pack: cannot create directory 'plainfile/out'"*"Not a directory" ]]
	# stdout on a full device: the write error, not a silent truncation
	[ -w /dev/full ] || skip "no /dev/full"
	for t in gptq-hessian gptq-solve gptq-dump; do
		run -1 --separate-stderr sh -c "$(tool $t) $(input_for $t) >/dev/full"
		[[ "$stderr" == "$t: cannot write '<stdout>': No space left on device" ]]
	done
}
