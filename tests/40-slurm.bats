#!/usr/bin/env bats
# pipelines/slurm: the jobs submit.sh hands to a real Slurm cluster give the
# checkpoint of the local run, byte for byte. Needs a cluster (sinfo shows a
# working node; tests/slurm/start-cluster.sh starts one on localhost): skipped
# without one, failed when GQ_REQUIRE_SLURM=1 (CI, which starts it).

load helpers

# one small cluster: under BATS_JOBS its tests still queue one after another
BATS_NO_PARALLELIZE_WITHIN_FILE=true

setup() {
	# job orchestration, not memory safety: the tools' own tests cover that
	if [ "${GQ_SANITIZE:-0}" = 1 ] || [ "${GQ_VALGRIND:-0}" = 1 ]; then
		skip "Slurm orchestration runs once, in the plain make check"
	fi
	if ! sinfo -h -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'; then
		[ "${GQ_REQUIRE_SLURM:-0}" != 1 ] || { echo "GQ_REQUIRE_SLURM=1 but no working Slurm node" >&2; return 1; }
		skip "no Slurm cluster (tests/slurm/start-cluster.sh starts one)"
	fi
	setup_tools
	M=$BATS_TEST_DIRNAME/data/models/qwen3
	P=$BATS_TEST_DIRNAME/../pipelines
	testgen tokens 4 64 0 128 >s0.gqs
	testgen tokens 4 64 1 128 >s1.gqs
}

# submit ARGS...: submit.sh --wait, keeping the job ids for teardown
submit() {
	timeout $(limit 300) "$P/slurm/submit.sh" "$@" --wait | tee -a jobs
}

teardown() {
	# jobs of a failed test that may still be queued: ours only, by id
	[ ! -f jobs ] || sed -n 's/.*job \([0-9][0-9]*\)$/\1/p' jobs | xargs -r scancel 2>/dev/null || true
}

@test "the layer chain on Slurm gives quantize.sh's checkpoint" {
	run -0 submit "$M" slurm --calib s0.gqs --calib s1.gqs --group-size 32 --chain layers
	[ "${lines[0]%: job *}" = "layer 0" ] && [ "${lines[2]%: job *}" = pack ]
	cat s0.gqs s1.gqs >all.gqs
	run -0 timeout $(limit 120) "$P/quantize.sh" "$M" local --calib all.gqs --group-size 32
	diff -r local slurm
	# one log per job, each layer its own job
	[ "$(ls slurm.work/logs | grep -c '^gptq-layer-')" -eq 2 ]
}

@test "the step chain on Slurm fans every step out over the shards as the local run does" {
	run -0 submit "$M" slurm --calib s0.gqs --calib s1.gqs --group-size 32
	[ "${lines[0]%: job *}" = "layer 0 step 0 (2 shards)" ]
	[ "${lines[8]%: job *}" = "layer 0 state (2 shards)" ]
	# 2 layers x 4 steps, each an array and a solve, one state array between the layers
	[ "${#lines[@]}" -eq 18 ]
	[ "$(ls slurm.work/logs | grep -c '^gptq-step-.*_[01].out$')" -eq 16 ]
	run -0 timeout $(limit 120) "$P/slurm/submit.sh" "$M" local --calib s0.gqs --calib s1.gqs --group-size 32 --local
	diff -r local slurm
}

@test "data-parallel Hessians and a solve array on Slurm give the local run's checkpoint" {
	run -0 submit "$M" slurm --calib s0.gqs --calib s1.gqs --group-size 32 --no-sequential
	[ "${lines[0]%: job *}" = "hessians (2 shards)" ] && [ "${lines[2]%: job *}" = "solves (8)" ]
	[ "$(ls slurm.work/logs | grep -c '^gptq-solve-.*_[0-7].out$')" -eq 8 ]
	# the same scripts without Slurm
	run -0 timeout $(limit 120) "$P/slurm/submit.sh" "$M" local --calib s0.gqs --calib s1.gqs --group-size 32 \
		--no-sequential --local
	diff -r local slurm
	# and the plain pipeline on the merged Hessians
	gptq-hessian -m "$M" --no-sequential s0.gqs >h0.gqs
	gptq-hessian -m "$M" --no-sequential s1.gqs >h1.gqs
	gptq-hessian --merge h0.gqs h1.gqs | gptq-solve -m "$M" -g 32 | gptq-pack -m "$M" -o pipe
	diff -r pipe slurm
}

@test "a failing job cancels the jobs after it and submit.sh fails" {
	run timeout $(limit 300) "$P/slurm/submit.sh" "$M" slurm --calib s0.gqs --bits 5 --no-sequential --wait
	[ "$status" -eq 1 ]
	[ "${lines[-1]}" = "submit.sh: a job failed (logs in $PWD/slurm.work/logs)" ]
	[ ! -e slurm ]
	grep -q "gptq-solve: --bits: 5 is not 2, 3, 4 or 8" slurm.work/logs/gptq-solve-*_0.out
	# nothing of this run is left in the queue
	ids=$(printf '%s\n' "${lines[@]}" | sed -n 's/.*job \([0-9][0-9]*\)$/\1/p' | paste -sd,)
	[ -z "$(squeue -h -j "$ids" 2>/dev/null)" ]
}

@test "evaluation runs on Slurm after packing, as it runs locally" {
	[ -x "$GQ_BINDIR/gptq-eval" ] || skip "gptq-eval is not built yet: the evaluation stage is untested"
	testgen checkpoint model 1 448 64
	cp "$BATS_TEST_DIRNAME"/data/tokenizer/* model/
	testgen tokens 4 64 0 448 >t.gqs
	run -0 submit model slurm --calib t.gqs --group-size 32 --eval-text "$BATS_TEST_DIRNAME/data/corpus.txt"
	[ "${lines[-1]%: job *}" = eval ]
	gptq-eval -m slurm --text "$BATS_TEST_DIRNAME/data/corpus.txt" --protocol llamacpp --json >local.json
	[ "$(jq .ppl slurm.work/eval.json)" = "$(jq .ppl local.json)" ]
}
