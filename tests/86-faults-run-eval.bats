#!/usr/bin/env bats
# Fault injection for the tools that load a whole model: gptq-run (prompts,
# --batch, --forward) and gptq-eval (--text, --tokens, --ref). Bad streams,
# files and checkpoints fail with one line naming them and exit 1, nothing
# named is left half-written, and an interrupted run leaves whole JSON lines
# or nothing. Under VALGRIND=1 every run here is also checked for reads out
# of bounds (a corrupt g_idx, hostile shapes).

load helpers

setup_file() {
	PATH="$GQ_BINDIR:$PATH"
	cd "$BATS_FILE_TMPDIR" || return 1
	# the random llama of make demo, and its 4-bit act-order GPTQ checkpoint
	"$GQ_TESTGEN" checkpoint m 1 448 64
	cp "$BATS_TEST_DIRNAME"/data/tokenizer/* m/
	"$GQ_TESTGEN" tokens 3 20 5 448 >t.gqs
	"$GQ_TESTGEN" tokens 4 32 1 448 >calib.gqs
	"$BATS_TEST_DIRNAME/../pipelines/quantize.sh" m q --calib calib.gqs --bits 4 --group-size 32 \
		--desc-act >/dev/null 2>&1
}

setup() {
	setup_tools
	cp -r "$BATS_FILE_TMPDIR"/m "$BATS_FILE_TMPDIR"/q "$BATS_FILE_TMPDIR"/t.gqs .
	C=$BATS_TEST_DIRNAME/data/corpus.txt
}

# tokens_frame FILE HEADER_TAIL DATA: a tokens frame whose header ends with
# HEADER_TAIL (the tensors) followed by DATA (printf escapes)
tokens_frame() {
	mkst "$1" "{\"__metadata__\":{\"gptq.kind\":\"tokens\"},$2}" 0
	printf "$3" >>"$1"
}

@test "--forward and --tokens name a truncated stdin by frame and offset and write nothing" {
	# inside the length field, inside the header, inside the data
	for cut in 5 40 300; do
		head -c $cut t.gqs >cut.gqs
		run -1 --separate-stderr sh -c "gptq-run -m m --forward -o out.gqs <cut.gqs"
		[[ "$stderr" == "gptq-run: <stdin>: frame 0 at byte 0: truncated: "* ]]
		run -1 --separate-stderr sh -c "cat cut.gqs | gptq-eval -m m --tokens - --json"
		[[ "$stderr" == "gptq-eval: <stdin>: frame 0 at byte 0: truncated: "* ]]
		[ -z "$output" ]
		no_output
	done
	# a whole frame, then a cut one: the second is named
	off=$(wc -c <t.gqs)
	cat t.gqs t.gqs | head -c $((off + 100)) >cut.gqs
	run -1 --separate-stderr gptq-eval -m m --tokens cut.gqs --json
	[[ "$stderr" == "gptq-eval: cut.gqs: frame 1 at byte $off: truncated: "* ]]
	[ -z "$output" ]
}

@test "corrupt, empty and wrong-kind streams are refused by --forward and --tokens" {
	cp t.gqs bad.gqs
	printf 'X' | dd of=bad.gqs bs=1 seek=8 conv=notrunc status=none
	run -1 --separate-stderr sh -c "gptq-run -m m --forward -o out.gqs <bad.gqs"
	[ "$stderr" = "gptq-run: <stdin>: frame 0 at byte 0: header is not valid JSON (error at byte 8)" ]
	run -1 --separate-stderr gptq-eval -m m --tokens bad.gqs
	[ "$stderr" = "gptq-eval: bad.gqs: frame 0 at byte 0: header is not valid JSON (error at byte 8)" ]
	# text is not a stream
	run -1 --separate-stderr gptq-eval -m m --tokens "$C"
	[[ "$stderr" == "gptq-eval: $C: frame 0 at byte 0: header length "*" exceeds the limit of 100000000 bytes (not a safetensors frame?)" ]]
	# empty, and a model file: valid streams without tokens frames
	for in in /dev/null m/model.safetensors; do
		run -1 --separate-stderr sh -c "gptq-run -m m --forward -o out.gqs <$in"
		[ "$stderr" = "gptq-run: no tokens frames in the input (make them with gptq-calib)" ]
		run -1 --separate-stderr sh -c "gptq-eval -m m --tokens - <$in"
		[ "$stderr" = "gptq-eval: <stdin>: no tokens frames (make them with gptq-calib --eval)" ]
	done
	no_output
}

@test "tokens frames with a wrong dtype, shape, id or mask are named before any forward pass" {
	tokens_frame f32.gqs '"input_ids":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]}' '\0\0\0\0\0\0\0\0'
	tokens_frame flat.gqs '"input_ids":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}' '\0\0\0\0\0\0\0\0'
	for f in f32 flat; do
		run -1 --separate-stderr gptq-run -m m --forward -o out.gqs $f.gqs
		[ "$stderr" = "gptq-run: $f.gqs: frame 0 at byte 0: input_ids must be an integer [n, seqlen] tensor" ]
		run -1 --separate-stderr gptq-eval -m m --tokens $f.gqs
		[ "$stderr" = "gptq-eval: $f.gqs: frame 0 at byte 0: input_ids must be an integer [n, seqlen] tensor" ]
	done
	# a negative id would index the embedding before its start
	tokens_frame neg.gqs '"input_ids":{"dtype":"I32","shape":[1,2],"data_offsets":[0,8]}' '\0\0\0\0\377\377\377\377'
	run -1 --separate-stderr gptq-run -m m --forward -o out.gqs neg.gqs
	[ "$stderr" = "gptq-run: neg.gqs: frame 0 at byte 0: input_ids[0][1] = -1 is not a token of this model (vocab 448)" ]
	run -1 --separate-stderr gptq-eval -m m --tokens neg.gqs
	[ "$stderr" = "gptq-eval: neg.gqs: frame 0 at byte 0: input_ids[0][1] = -1 is not a token of this model (vocab 448)" ]
	# a mask of another shape, and one with a token after padding
	tokens_frame short.gqs '"input_ids":{"dtype":"I32","shape":[1,2],"data_offsets":[0,8]},"attention_mask":{"dtype":"U8","shape":[1,1],"data_offsets":[8,9]}' '\0\0\0\0\0\0\0\0\1'
	run -1 --separate-stderr gptq-run -m m --forward -o out.gqs short.gqs
	[ "$stderr" = "gptq-run: short.gqs: frame 0 at byte 0: attention_mask must have input_ids' shape" ]
	tokens_frame left.gqs '"input_ids":{"dtype":"I32","shape":[1,2],"data_offsets":[0,8]},"attention_mask":{"dtype":"U8","shape":[1,2],"data_offsets":[8,10]}' '\0\0\0\0\0\0\0\0\0\1'
	run -1 --separate-stderr gptq-run -m m --forward -o out.gqs left.gqs
	[ "$stderr" = "gptq-run: left.gqs: frame 0 at byte 0: attention_mask row 0 is not right padding (a real token at 1 after padding at 0)" ]
	run -1 --separate-stderr gptq-eval -m m --tokens left.gqs
	[ "$stderr" = "gptq-eval: left.gqs: row 0: attention_mask is not right padding (a real token at 1 after padding at 0)" ]
	# rows of one token predict nothing
	tokens_frame one.gqs '"input_ids":{"dtype":"I32","shape":[2,1],"data_offsets":[0,8]}' '\0\0\0\0\0\0\0\0'
	run -1 --separate-stderr gptq-run -m m --forward -o out.gqs one.gqs
	[ "$stderr" = "gptq-run: one.gqs: frame 0 at byte 0: sequences of 1 token predict nothing" ]
	run -1 --separate-stderr gptq-eval -m m --tokens one.gqs
	[ "$stderr" = "gptq-eval: one.gqs: no token was scored: the chunks are too short" ]
	no_output
}

@test "prompt files: missing, a directory, binary and unreadable are named; empty is BOS alone" {
	run -1 --separate-stderr gptq-run -m m -f nope.txt
	[ "$stderr" = "gptq-run: cannot open 'nope.txt': No such file or directory" ]
	mkdir d
	run -1 --separate-stderr gptq-run -m m -f d
	[ "$stderr" = "gptq-run: 'd' is not a regular file" ]
	run -1 --separate-stderr gptq-run -m m -f t.gqs
	[ "$stderr" = "gptq-run: t.gqs: text is not valid UTF-8 (byte 0)" ]
	run -1 --separate-stderr sh -c "gptq-run -m m -f - <t.gqs"
	[ "$stderr" = "gptq-run: <stdin>: text is not valid UTF-8 (byte 0)" ]
	# the documented default: an empty prompt is the BOS token alone
	: >empty.txt
	a=$(gptq-run -q -m m -n 4 --print-ids -f empty.txt)
	b=$(gptq-run -q -m m -n 4 --print-ids)
	[ "$a" = "$b" ] && [ "$(wc -w <<<"$a")" -eq 4 ]
	[ "$(id -u)" -ne 0 ] || skip "running as root: permissions do not stop reads"
	printf 'the cat' >locked.txt
	chmod 000 locked.txt
	run -1 --separate-stderr gptq-run -m m -f locked.txt
	[ "$stderr" = "gptq-run: cannot open 'locked.txt': Permission denied" ]
}

@test "--batch: malformed lines are named by line before anything is generated" {
	printf '%s\n' '{"prompt": "the cat"}' 'not json' >b.jsonl
	run -1 --separate-stderr gptq-run -m m -n 4 --batch b.jsonl
	[ "$stderr" = "gptq-run: b.jsonl:2: not valid JSON" ]
	[ -z "$output" ]
	for line in '{"prompt": 3}' '["the cat"]' '{"text": "the cat"}'; do
		printf '%s\n' "$line" >b.jsonl
		run -1 --separate-stderr gptq-run -m m -n 4 --batch b.jsonl
		[ "$stderr" = "gptq-run: b.jsonl:1: no string field 'prompt'" ]
	done
	# a last line cut short, and a stream instead of JSON lines
	printf '{"prompt": "the cat"}\n{"prompt": "a d' >b.jsonl
	run -1 --separate-stderr gptq-run -m m -n 4 --batch b.jsonl
	[ "$stderr" = "gptq-run: b.jsonl:2: not valid JSON" ]
	run -1 --separate-stderr gptq-run -m m -n 4 --batch t.gqs
	[ "$stderr" = "gptq-run: t.gqs:1: not valid JSON" ]
	# a NUL would end the prompt early without a word (regression: it did)
	printf '%s\n' '{"prompt": "the\u0000 cat"}' >b.jsonl
	run -1 --separate-stderr gptq-run -m m -n 4 --batch b.jsonl
	[ "$stderr" = 'gptq-run: b.jsonl:1: \u0000 in a string: text cannot hold NUL characters' ]
	# an escaped backslash before u0000 is text, not a NUL
	printf '%s\n' '{"prompt": "the\\u0000 cat"}' >b.jsonl
	run -0 gptq-run -q -m m -n 4 --batch b.jsonl
	[ "$(jq -r .prompt <<<"$output")" = 'the\u0000 cat' ]
	# valid JSON whose prompt is not UTF-8
	printf '{"prompt": "caf\351"}\n' >b.jsonl
	run -1 --separate-stderr gptq-run -m m -n 4 --batch b.jsonl
	[ "$stderr" = "gptq-run: b.jsonl: prompt 1: text is not valid UTF-8 (byte 3)" ]
	run -1 --separate-stderr gptq-run -m m --batch nope.jsonl
	[ "$stderr" = "gptq-run: cannot open 'nope.jsonl': No such file or directory" ]
}

@test "gptq-eval --text: missing, a directory, binary, too short and unreadable files are named" {
	run -1 --separate-stderr gptq-eval -m m --text nope.txt --json
	[ "$stderr" = "gptq-eval: cannot open 'nope.txt': No such file or directory" ]
	[ -z "$output" ]
	mkdir d
	run -1 --separate-stderr gptq-eval -m m --text d
	[ "$stderr" = "gptq-eval: 'd' is not a regular file" ]
	run -1 --separate-stderr gptq-eval -m m --text t.gqs
	[ "$stderr" = "gptq-eval: t.gqs: text is not valid UTF-8 (byte 0)" ]
	: >empty.txt
	run -1 --separate-stderr gptq-eval -m m --text empty.txt --ctx 64
	[ "$stderr" = "gptq-eval: empty.txt: the corpus has 1 tokens, less than one chunk of 64" ]
	run -1 --separate-stderr sh -c "gptq-eval -m m --text - --ctx 64 </dev/null"
	[ "$stderr" = "gptq-eval: <stdin>: the corpus has 1 tokens, less than one chunk of 64" ]
	# task data go through the same checks, line by line
	printf '%s\n' '{"prompt": "x\u0000", "choices": ["a", "b"], "label": 0}' >c.jsonl
	run -1 --separate-stderr gptq-eval -m m --task classify --data c.jsonl
	[ "$stderr" = 'gptq-eval: m: c.jsonl:1: \u0000 in a string: text cannot hold NUL characters' ]
	[ "$(id -u)" -ne 0 ] || skip "running as root: permissions do not stop reads"
	cp "$C" locked.txt
	chmod 000 locked.txt
	run -1 --separate-stderr gptq-eval -m m --text locked.txt
	[ "$stderr" = "gptq-eval: cannot open 'locked.txt': Permission denied" ]
}

@test "--ref of another vocabulary or a broken reference is refused, naming it" {
	testgen checkpoint v500 1 500 64
	run -1 --separate-stderr gptq-eval -m m --ref v500 --tokens t.gqs --json
	[ "$stderr" = "gptq-eval: m has a vocabulary of 448, the reference v500 500 (chunk 0)" ]
	[ -z "$output" ]
	# a reference cut short, and one whose shapes disagree with its config
	mkdir cut
	cp m/config.json cut/
	size=$(wc -c <m/model.safetensors)
	head -c $((size / 2)) m/model.safetensors >cut/model.safetensors
	run -1 --separate-stderr gptq-eval -m m --ref cut --tokens t.gqs
	[[ "$stderr" == "gptq-eval: cut/model.safetensors: truncated: tensors need "*" bytes of data but the file has "* ]]
	cp -r m wide
	jq '.hidden_size = 128' m/config.json >wide/config.json
	run -1 --separate-stderr gptq-eval -m m --ref wide --tokens t.gqs
	[ "$stderr" = "gptq-eval: wide: tensor 'model.embed_tokens.weight' has shape [448, 64] but config.json implies [448, 128]" ]
	# the scored model's own vocabulary bounds the ids, whatever the first model's was
	testgen tokens 3 20 5 500 >t500.gqs
	run -1 --separate-stderr gptq-eval -m v500 -m m --tokens t500.gqs
	[[ "$stderr" == "gptq-eval: token "*": m: index "*" out of range [0, 448) in 'model.embed_tokens.weight' (chunk 0)" ]]
}

@test "the hostile checkpoints of 84-untrusted are refused by gptq-run and gptq-eval" {
	printf '\x00\xe1\xf5\x05\x00\x00\x00\x00{"a":1}    ' >bomb.st
	mkdir bomb
	cp m/config.json bomb/
	cp bomb.st bomb/model.safetensors
	mkmodel past '{"model.embed_tokens.weight":{"dtype":"F32","shape":[1000000,1000],"data_offsets":[0,4000000000]}}' 64
	mkmodel huge '{"x":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}' 0
	mkmodel empty '{"model.embed_tokens.weight":{"dtype":"F32","shape":[0,4503599627370496],"data_offsets":[0,0]}}' 0
	mkmodel dup '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}' 8
	mkmodel escape '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}' 4
	printf '{"weight_map":{"a":"../../etc/passwd"}}' >escape/model.safetensors.index.json
	for d in bomb past huge empty dup escape; do
		case $d in
		bomb) want="bomb/model.safetensors: truncated: header needs 100000000 bytes but the file has 11 left" ;;
		past) want="past/model.safetensors: truncated: tensors need 4000000000 bytes of data but the file has 64" ;;
		huge) want="huge/model.safetensors: tensor 'x': shape overflows 64 bits" ;;
		empty) want="empty: tensor 'model.embed_tokens.weight' has shape [0, 4503599627370496] but config.json implies [128, 64]" ;;
		dup) want="dup/model.safetensors: duplicate tensor name 'a'" ;;
		escape) want="escape/model.safetensors.index.json: tensor 'a' maps to an invalid file name" ;;
		esac
		run -1 --separate-stderr timeout $(limit 60) gptq-run -m $d --prompt-ids 1
		[ "$stderr" = "gptq-run: $want" ]
		run -1 --separate-stderr timeout $(limit 60) gptq-run -m $d --forward -o out.gqs t.gqs
		[ "$stderr" = "gptq-run: $want" ]
		run -1 --separate-stderr timeout $(limit 60) gptq-eval -m $d --tokens t.gqs --json
		[ "$stderr" = "gptq-eval: $want" ]
		[ -z "$output" ]
		run -1 --separate-stderr timeout $(limit 60) gptq-eval -m m --ref $d --tokens t.gqs
		[ "$stderr" = "gptq-eval: $want" ]
	done
	no_output
}

@test "NaN or Inf weights stop generation and scoring at the first non-finite logits" {
	for v in nan inf; do
		rm -rf bad
		cp -r m bad
		poke bad/model.safetensors model.layers.1.mlp.up_proj.weight $v
		why="the logits at position 2 are not finite (NaN or Inf in the weights, or activations beyond float range)"
		for how in "" "--temp 0.8" "--beams 2"; do
			run -1 --separate-stderr gptq-run -m bad --prompt-ids 1,2,3 -n 4 --print-ids $how
			[ "$stderr" = "gptq-run: bad: $why" ]
			[ -z "$output" ]
		done
		run -1 --separate-stderr gptq-run -m bad --forward -o out.gqs t.gqs
		[ "$stderr" = "gptq-run: t.gqs: frame 0, sequence 0: bad: the logits at position 0 are not finite (NaN or Inf in the weights, or activations beyond float range)" ]
		run -1 --separate-stderr gptq-eval -m bad --tokens t.gqs --json
		[ "$stderr" = "gptq-eval: bad: the logits at position 0 are not finite (NaN or Inf in the weights, or activations beyond float range) (chunk 0)" ]
		[ -z "$output" ]
		# a poisoned reference is no yardstick either
		run -1 --separate-stderr gptq-eval -m m --ref bad --tokens t.gqs
		[ "$stderr" = "gptq-eval: bad: the logits at position 0 are not finite (NaN or Inf in the weights, or activations beyond float range) (chunk 0)" ]
	done
	no_output
}

@test "packed checkpoints: g_idx out of range and non-finite scales are refused at load" {
	N=model.layers.0.mlp.down_proj
	# past the last group, negative, and the most negative int32
	for g in '\x04\x00\x00\x00:4' '\xff\xff\xff\xff:-1' '\x00\x00\x00\x80:-2147483648'; do
		rm -rf bad
		cp -r q bad
		poke bad/model.safetensors $N.g_idx "${g%%:*}" 5
		run -1 --separate-stderr gptq-run -m bad --prompt-ids 1,2,3 -n 4
		[ "$stderr" = "gptq-run: bad: $N: g_idx[5] = ${g#*:} outside [0, 4)" ]
		run -1 --separate-stderr gptq-eval -m bad --tokens t.gqs
		[ "$stderr" = "gptq-eval: bad: $N: g_idx[5] = ${g#*:} outside [0, 4)" ]
	done
	# NaN and Inf scales poison every output (they did, silently: regression)
	for v in nan inf; do
		rm -rf bad
		cp -r q bad
		poke bad/model.safetensors $N.scales $v 65
		want="bad: $N: scales[1, 1] is $([ $v = nan ] && echo NaN || echo infinite)"
		run -1 --separate-stderr gptq-run -m bad --prompt-ids 1,2,3 -n 4
		[ "$stderr" = "gptq-run: $want" ]
		run -1 --separate-stderr gptq-eval -m m --ref bad --tokens t.gqs
		[ "$stderr" = "gptq-eval: $want" ]
	done
}

@test "corrupt qweight and qzeros bits are codes like any other: the run completes" {
	N=model.layers.1.self_attn.o_proj
	for t in qweight qzeros; do
		rm -rf bad
		cp -r q bad
		for i in 0 3 7; do
			poke bad/model.safetensors $N.$t '\xff\xff\xff\xff' $i
		done
		run -0 gptq-run -q -m bad --prompt-ids 1,2,3 -n 4 --print-ids --ignore-eos
		[ "$(wc -w <<<"$output")" -eq 4 ]
		run -0 gptq-eval -q -m bad --tokens t.gqs --json
		jq -e '.models[0].ppl > 1' <<<"$output"
	done
}

@test "a full stdout is an error for every output mode" {
	[ -w /dev/full ] || skip "no /dev/full"
	printf '%s\n' '{"prompt": "the cat"}' >p.jsonl
	for cmd in "gptq-run -q -m m -n 4 -p the" "gptq-run -q -m m -n 4 --batch p.jsonl" \
		"gptq-run -m m --forward t.gqs" "gptq-eval -m m --tokens t.gqs" \
		"gptq-eval -m m --tokens t.gqs --json"; do
		run -1 --separate-stderr sh -c "$cmd >/dev/full"
		[ "$stderr" = "${cmd%% *}: cannot write '<stdout>': No space left on device" ]
	done
}

@test "SIGINT, TERM and KILL of gptq-run --forward -o leave no final output" {
	mkfifo fifo
	testgen tokens 64 128 1 448 >big.gqs
	for sig in INT TERM KILL; do
		env --default-signal gptq-run -m m --forward -o out.gqs <fifo 2>/dev/null &
		pid=$!
		exec 8>fifo
		head -c 20000 big.gqs >&8
		wait_for 'out.gqs.tmp.*'
		kill -s $sig $pid
		st=0
		wait $pid || st=$?
		exec 8>&-
		[ "$st" -eq $((128 + $(kill -l $sig))) ]
		[ ! -e out.gqs ]
		# only the uncatchable kill leaves its temporary name behind
		[ "$(ls | grep -c '\.tmp\.')" -eq $([ $sig = KILL ] && echo 1 || echo 0) ]
		rm -f out.gqs.tmp.*
	done
}

@test "gptq-run killed mid-generation fails the pipeline under pipefail" {
	for sig in INT KILL; do
		# the stage records its pid, then generates far more than is read before the kill
		run bash -c "set -o pipefail
			sh -c 'echo \$\$ >pid; exec env --default-signal gptq-run -q -m m -n 20000 --ignore-eos -p the --print-ids' |
			{ head -c 100 >/dev/null; kill -$sig \$(cat pid); cat >/dev/null; }"
		[ "$status" -eq $((128 + $(kill -l $sig))) ]
	done
	# --forward's frames downstream: the reader names the cut
	# one frame larger than the pipe (logits: 1.4 MB; the tools grow pipes to 1 MB): the tool
	# blocks inside it, and dies there
	testgen tokens 8 100 1 448 >big.gqs
	run --separate-stderr bash -c "set -o pipefail
		sh -c 'echo \$\$ >pid; exec gptq-run -m m --forward --logits big.gqs' |
		{ head -c 100 >head.gqs; kill -KILL \$(cat pid); cat head.gqs - | gptq-dump >/dev/null; }"
	[ "$status" -ne 0 ]
	[[ "$stderr" == *"gptq-dump: <stdin>: frame 0 at byte 0: truncated: "* ]]
}

@test "an interrupted --batch or --json ends with a whole JSON line or says nothing" {
	# --batch: a line longer than the pipe, stopped while it is being written
	# (regression: it was cut there). Timing-driven, so the tool runs unwrapped.
	python3 -c "import json; print(json.dumps({'prompt': 'the cat sat on the mat. ' * 300}))" >long.jsonl
	printf '%s\n' '{"prompt": "the dog"}' >>long.jsonl
	st=0
	python3 - "$GQ_BINDIR/gptq-run" -q -m m -n 2 --batch long.jsonl >out.jsonl <<'EOF' || st=$?
import array, fcntl, os, signal, subprocess, sys, termios, time
# stdout: a pipe of 4096 bytes that nobody reads until the tool blocks on it
r, w = os.pipe()
fcntl.fcntl(w, 1031, 4096)  # F_SETPIPE_SZ
p = subprocess.Popen(sys.argv[1:], stdout=w,
                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
os.close(w)
n = array.array('i', [0])
while n[0] < 4096:
    if p.poll() is not None:
        sys.exit('the tool ended before it filled the pipe')
    time.sleep(0.01)
    fcntl.ioctl(r, termios.FIONREAD, n)
time.sleep(0.2)
p.send_signal(signal.SIGINT)
sys.stdout.buffer.write(os.fdopen(r, 'rb').read())
st = p.wait()
sys.exit(128 - st if st < 0 else st)
EOF
	[ "$st" -eq 130 ]
	[ "$(wc -l <out.jsonl)" -eq 1 ]
	jq -e '.index == 0' out.jsonl
	# --json: one line at the end, so a run cut short prints none
	# (a background job starts with SIGINT ignored, nohup with SIGHUP; a terminal's do not)
	env --default-signal gptq-eval -m m -m m -m m --text "$C" --protocol windows --ctx 64 \
		--json >out.json &
	pid=$!
	sleep 0.3
	kill -INT $pid
	st=0
	wait $pid || st=$?
	if [ "$st" -eq 0 ]; then
		jq -e '.models | length == 3' out.json
	else
		[ "$st" -eq 130 ] && [ ! -s out.json ]
	fi
}
