#!/usr/bin/env bats
# Real-model acceptance: stories260K (../shared) calibrated on the first half
# of TinyStories; GPTQ's layer objective below round-to-nearest's on every
# module at 4-bit and 3-bit, group size 32.

load helpers

setup() {
	# 128 x 256 tokens through two sequential pipelines: past its hour under
	# valgrind (ASan runs it in CI; 20-30 run the same tools on small inputs)
	[ "${GQ_VALGRIND:-0}" = 0 ] || skip "over an hour under valgrind"
	setup_tools
	require_shared models/stories260K
	require_shared text/tinystories_val_first.txt
	S=$GQ_SHARED/models/stories260K
	T=$GQ_SHARED/text/tinystories_val_first.txt
	head -c $(($(wc -c <"$T") / 2)) "$T" >half.txt
	gptq-calib -m "$S" -n 128 -l 256 half.txt >calib.gqs
}

objectives() {
	gptq-dump "$1" | jq -r 'select(.kind == "report") | .metadata.modules' |
		jq -r 'to_entries[] | "\(.key) \(.value.objective)"'
}

@test "GPTQ beats round-to-nearest on every module at 4 and 3 bits, g32" {
	mkfifo fb
	for bits in 4 3; do
		timeout $(limit 300) bash -o pipefail -c "gptq-hessian -m '$S' --feedback fb calib.gqs | tee h.gqs |
			gptq-solve -m '$S' -b $bits -g 32 --objective | tee fb > q.gqs"
		gptq-solve -m "$S" -b "$bits" -g 32 --rtn --objective h.gqs >r.gqs
		objectives q.gqs >g.txt
		objectives r.gqs >n.txt
		[ "$(wc -l <g.txt)" -eq 35 ]
		paste g.txt n.txt | awk '$1 != $3 { exit 1 } $2 >= $4 { print "not better:", $0; bad++ } END { exit bad }'
	done
}
