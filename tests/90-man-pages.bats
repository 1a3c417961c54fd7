#!/usr/bin/env bats
# Man pages: their EXAMPLES run (in a sandbox holding the files they name),
# and every tool's --help and man page document the same options.

load helpers

setup() {
	setup_tools
	# vocab 448: the bundled tokenizer's, so the model can read text
	testgen checkpoint model 1 448 16
	cp "$BATS_TEST_DIRNAME"/data/tokenizer/* model/
	cp "$BATS_TEST_DIRNAME"/data/corpus.txt "$BATS_TEST_DIRNAME"/data/docs.jsonl .
	testgen hessian 24 1 2 >h.gqs
	testgen tokens 4 16 0 40 >t.gqs
	testgen report >r.gqs
	cat h.gqs t.gqs r.gqs >stream.gqs
	gptq-hessian -m model --no-sequential t.gqs >h-model.gqs
	gptq-solve -m model -g 8 h-model.gqs >q.gqs
}

# examples PAGE: the "$ " command lines of the EXAMPLES section, unescaped.
examples() {
	sed -n '/^\.Sh EXAMPLES/,/^\.Sh /p' "$1" | sed -n 's/^\$ //p' |
		sed -e 's/\\e/\\/g' -e 's/\\-/-/g' -e "s/\\\\(aq/'/g"
}

run_examples() {
	local page=$1 n=0 cmd
	while IFS= read -r cmd; do
		n=$((n + 1))
		run bash -o pipefail -c "$cmd"
		if [ "$status" -ne 0 ]; then
			echo "example failed ($status): $cmd"
			echo "$output"
			return 1
		fi
	done < <(examples "$page")
	[ "$n" -gt 0 ]
}

@test "gptq-dump(1) examples run" {
	run_examples "$BATS_TEST_DIRNAME/../man/man1/gptq-dump.1"
}

@test "gptq-calib(1) examples run" {
	run_examples "$BATS_TEST_DIRNAME/../man/man1/gptq-calib.1"
}

@test "gptq-solve(1) examples run" {
	run_examples "$BATS_TEST_DIRNAME/../man/man1/gptq-solve.1"
}

@test "gptq-hessian(1) examples run" {
	run_examples "$BATS_TEST_DIRNAME/../man/man1/gptq-hessian.1"
}

@test "gptq-pack(1) examples run" {
	run_examples "$BATS_TEST_DIRNAME/../man/man1/gptq-pack.1"
}

@test "gptq-run(1) examples run" {
	run_examples "$BATS_TEST_DIRNAME/../man/man1/gptq-run.1"
}

@test "gptq-eval(1) examples run" {
	run_examples "$BATS_TEST_DIRNAME/../man/man1/gptq-eval.1"
}

@test "gptq-pipelines(7) examples run" {
	ln -s "$BATS_TEST_DIRNAME/../pipelines" pipelines
	run_examples "$BATS_TEST_DIRNAME/../man/man7/gptq-pipelines.7"
}

@test "gptq-stream(5) examples run" {
	run_examples "$BATS_TEST_DIRNAME/../man/man5/gptq-stream.5"
}

@test "gptq(7) examples run" {
	run_examples "$BATS_TEST_DIRNAME/../man/man7/gptq.7"
}

@test "every tool has a man page documenting exactly the options of its --help" {
	for tool in "$GQ_BINDIR"/gptq-*; do
		name=${tool##*/}
		page="$BATS_TEST_DIRNAME/../man/man1/$name.1"
		[ -f "$page" ] || { echo "no man page for $name"; return 1; }
		help_opts=$("$tool" --help | grep -oE -- '--[a-z][a-z-]*' | sort -u)
		man_opts=$(sed -n '/^\.Sh OPTIONS/,/^\.Sh /p' "$page" | grep -oE 'Fl -[a-z][a-z-]*' |
			sed 's/Fl -/--/' | sort -u)
		diff <(echo "$help_opts") <(echo "$man_opts") || { echo "in $name"; return 1; }
	done
}

@test "the stream format page's Python reader parses a real stream" {
	command -v python3 >/dev/null || skip "python3 not installed"
	sed -n '/^import json/,/^\.Ed/p' "$BATS_TEST_DIRNAME/../man/man5/gptq-stream.5" |
		sed -e '/^\.Ed/d' -e 's/\\e/\\/g' >reader.py
	run -0 python3 reader.py <stream.gqs
	[ "$output" = "$(printf "hessian ['H']\ntokens ['attention_mask', 'input_ids']\nreport []")" ]
}
