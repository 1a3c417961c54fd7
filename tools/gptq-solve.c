/*
 * gptq-solve - `hessian` frames in, `qlinear` frames out (one per module of
 * each Hessian), then one `report` frame; every other frame passes through.
 */
#include "cli.h"
#include "hessian.h"
#include "io.h"
#include "quantize.h"
#include "stream.h"
#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

static const gq_tool tool = {
	"gptq-solve",
	"usage: gptq-solve -m MODEL [--bits B] [--group-size N] [--desc-act] [--static-groups]\n"
	"                  [--sym | --asym] [--damp F] [--block N] [--mse] [--reference]\n"
	"                  [--objective] [--device DEV] [--feedback FILE] [-o FILE] [-z]\n"
	"                  [FILE|-]...\n"
	"       gptq-solve -m MODEL --rtn [--all] [--bits B] [--group-size N] ... [FILE|-]...\n",
	"Quantize the modules named by each hessian frame with GPTQ.\n"
	"  -m, --model DIR       the model the Hessians were collected on\n"
	"  -b, --bits B          2, 3, 4 or 8 (default 4)\n"
	"  -g, --group-size N    columns per quantization group, or -1 for one per row\n"
	"                        (default 128)\n"
	"      --desc-act        quantize columns by decreasing Hessian diagonal (act order)\n"
	"      --static-groups   group parameters from the unquantized weights\n"
	"      --sym             symmetric, zero fixed at 2^(bits-1) (default)\n"
	"      --asym            asymmetric zero points (pack with --format gptq_v2)\n"
	"      --damp F          dampening, a fraction of the mean diagonal (default 0.01);\n"
	"                        raised x1.25 until the Cholesky factorisation succeeds\n"
	"      --block N         columns per lazy-batch block (default 128)\n"
	"      --mse             search the clipping range for the least error\n"
	"      --rtn             round to nearest (the baseline; Hessians only for --objective)\n"
	"      --all             with --rtn: every quantizable module, no input read\n"
	"      --reference       the float64 unblocked solver (slow; for checking)\n"
	"      --objective       report sum (W-Q) H (W-Q)^T per module\n"
	"      --device DEV      where GPTQ solves: cpu (default), cuda[:N] or hip[:N]\n"
	"      --feedback FILE   also write every qlinear frame to FILE as soon as it is\n"
	"                        made, before the output: gptq-hessian's --feedback FIFO,\n"
	"                        with no tee in between\n"
	GQ_STREAM_OUT_HELP,
};

/* qlinear frames waiting for a slow reader of the output: about a 7B layer's */
#define OUT_QUEUE_BYTES (256ull << 20)

enum { OPT_DESC = GQ_OPT_TOOL_BASE, OPT_STATIC, OPT_SYM, OPT_ASYM, OPT_DAMP, OPT_BLOCK, OPT_MSE,
       OPT_RTN, OPT_ALL, OPT_REF, OPT_OBJ, OPT_DEVICE, OPT_FEEDBACK };

typedef struct {
	const gq_model *m;
	gq_solve_opts so;
	gq_solver *solver;
	gq_writer *w;
	gq_queue_writer *out; /* w's frames, written on a thread */
	gq_writer *feedback; /* --feedback, or NULL */
	FILE *feedback_fifo; /* its FIFO, closed after it, or NULL */
	gq_buf report; /* JSON object members, one per module */
	int64_t done;
	gq_progress progress;
} run;

static void free_queued(void *ql)
{
	gq_qlinear_free(ql);
	free(ql);
}

static void emit(run *r, int layer, int module, const float *H, const gq_hinv *hinv,
		 int64_t nsamples)
{
	gq_qlinear ql;
	gq_solve_stats st;
	gq_st_builder b;
	gq_qlinear *queued; /* ql, the output queue's until written */
	double t0;

	if (gq_solve_module(r->solver, layer, module, H, hinv, nsamples, &ql, &st))
		die("%s", gq_errmsg());
	if (st.damp_retries && !hinv) /* a shared preparation says it once, for all */
		warn("%s: cholesky failed at damp %g, succeeded at %g", ql.name, r->so.gptq.damp, st.damp);
	if (nsamples == 0 && H && !r->so.rtn)
		warn("%s: no calibration token reached it, rounded to nearest", ql.name);
	if (r->report.len)
		gq_buf_append(&r->report, ",", 1);
	gq_solve_stats_json(ql.name, &st, &r->report);
	/* the feedback first and here: gptq-hessian waits for it; gptq-pack gets it from a thread */
	t0 = gq_now();
	if (gq_qlinear_frame(&ql, &b) || (r->feedback && gq_writer_put(r->feedback, &b)))
		die("%s", gq_errmsg());
	gq_debug("%s: %s loss %.6g in %.2fs (weight %.0f ms, solver %.0f ms), sent in %.0f ms",
		 ql.name, st.method, st.loss, st.seconds, 1e3 * st.weight_seconds,
		 1e3 * st.solver_seconds, 1e3 * (gq_now() - t0));
	if (!(queued = malloc(sizeof *queued))) {
		gq_stb_free(&b);
		die("out of memory");
	}
	*queued = ql;
	if (gq_queue_writer_put(r->out, &b, free_queued, queued))
		die("%s", gq_errmsg());
	gq_progress_update(&r->progress, ++r->done);
}

/*
 * The module of the frame's list at *p (layer, index in the model), which
 * must take n inputs; *p moves past it. 0 at the end of the list.
 */
static int next_module(run *r, const gq_frame *f, const char *mods, const char **p, int64_t n,
		       int *layer, int *module)
{
	const char *comma = strchr(*p, ',');
	size_t len = comma ? (size_t)(comma - *p) : strlen(*p);
	char name[GQ_NAME_MAX];

	if (!**p)
		return 0;
	if (len == 0 || len >= sizeof name)
		gq_die_frame(f, "bad module list '%s'", mods);
	memcpy(name, *p, len);
	name[len] = '\0';
	if (gq_module_find(r->m, name, layer, module))
		die("%s", gq_errmsg());
	if (r->m->modules[*module].in != n)
		gq_die_frame(f, "H is %lld x %lld but %s has %lld inputs", (long long)n, (long long)n,
			     name, (long long)r->m->modules[*module].in);
	*p = comma ? comma + 1 : *p + len;
	return 1;
}

/*
 * One hessian frame (read in read_seconds): every module it names, in order,
 * with H prepared once for them all (q, k and v share it; gate and up).
 */
static void solve_frame(run *r, const gq_frame *f, double read_seconds)
{
	const char *mods = gq_frame_attr(f, "modules"), *ns = gq_frame_attr(f, "nsamples"), *p;
	int64_t nsamples, n, bad;
	const float *H;
	gq_hinv *hinv;
	double t0 = gq_now(), t1;
	int layer, module;

	if (!mods || !ns || gq_parse_i64(ns, 0, INT64_MAX, &nsamples))
		gq_die_frame(f, "hessian frame needs 'modules' and 'nsamples'");
	/* float32 and whole, as gptq-hessian writes it by default, is used where it lies */
	if (gq_solver_hessian(r->solver, f, &n, &H))
		die("%s", gq_errmsg());
	/* every module named and of H's width before any work */
	for (p = mods; next_module(r, f, mods, &p, n, &layer, &module);)
		;
	if ((bad = gq_first_nonfinite_mt(H, n * n, r->so.gptq.threads)) >= 0)
		gq_die_frame(f, "H has a non-finite entry at [%lld, %lld]", (long long)(bad / n),
			     (long long)(bad % n));
	t1 = gq_now();
	if (gq_solve_prepare(r->solver, H, n, nsamples, &hinv))
		die("%s: %s", mods, gq_errmsg());
	if (hinv && gq_hinv_damp_retries(hinv))
		warn("%s: cholesky failed at damp %g, succeeded at %g", mods, r->so.gptq.damp,
		     gq_hinv_damp(hinv));
	gq_debug("hessian %lld x %lld: read in %.0f ms, checked in %.0f ms, prepared in %.0f ms",
		 (long long)n, (long long)n, 1e3 * read_seconds, 1e3 * (t1 - t0),
		 1e3 * (gq_now() - t1));
	for (p = mods; next_module(r, f, mods, &p, n, &layer, &module);)
		emit(r, layer, module, H, hinv, nsamples);
	gq_hinv_free(hinv);
}

static void write_report(run *r)
{
	gq_st_builder b;
	gq_buf json = {0};
	char bits[8], gs[24];

	gq_buf_append(&json, "{", 1);
	gq_buf_append(&json, r->report.data ? r->report.data : "", r->report.len);
	gq_buf_append(&json, "}", 1);
	snprintf(bits, sizeof bits, "%d", r->so.gptq.bits);
	snprintf(gs, sizeof gs, "%lld", (long long)r->so.gptq.group_size);
	gq_stb_init(&b);
	if (gq_stb_meta(&b, "gptq.kind", "report") || gq_stb_meta(&b, "tool", "gptq-solve") ||
	    gq_stb_meta(&b, "bits", bits) || gq_stb_meta(&b, "group_size", gs) ||
	    gq_stb_meta(&b, "modules", json.data) || gq_writer_put(r->w, &b))
		die("%s", gq_errmsg());
	gq_stb_free(&b);
	gq_buf_free(&json);
}

/*
 * A feedback FIFO is opened for writing before anything can fail, as tee
 * would: gptq-hessian waits for a writer to connect before it takes the
 * FIFO's end as the end of the feedback, so a gptq-solve that died on a bad
 * option without opening it would leave gptq-hessian waiting for good.
 * Opening waits for the reader, which gptq-hessian opens first thing (and
 * holds for a while even when it fails).
 */
static FILE *open_fifo_early(int argc, char **argv)
{
	const char *path = gq_cli_early_arg(argc, argv, "feedback");
	struct stat st;
	FILE *fp;
	int fd;

	if (!path || stat(path, &st) != 0 || !S_ISFIFO(st.st_mode))
		return NULL;
	if ((fd = open(path, O_WRONLY | O_CLOEXEC)) < 0 || !(fp = fdopen(fd, "w")))
		die("cannot open '%s':", path);
	return fp;
}

/* The feedback writer: on the FIFO opened early, or a file that appears only when complete. */
static gq_writer *open_feedback(const char *path, FILE *fifo, const gq_writer_opts *wo)
{
	gq_writer_opts o = *wo;
	gq_writer *w;

	o.zstd_level = 0; /* the loop reads each frame as soon as it is flushed */
	if (fifo ? gq_writer_open_fp(&w, fifo, path, &o) : gq_writer_open(&w, path, &o))
		die("%s", gq_errmsg());
	return w;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		GQ_COMMON_LONG,
		GQ_STREAM_OUT_LONG,
		{"model", required_argument, 0, 'm'},
		{"bits", required_argument, 0, 'b'},
		{"group-size", required_argument, 0, 'g'},
		{"desc-act", no_argument, 0, OPT_DESC},
		{"static-groups", no_argument, 0, OPT_STATIC},
		{"sym", no_argument, 0, OPT_SYM},
		{"asym", no_argument, 0, OPT_ASYM},
		{"damp", required_argument, 0, OPT_DAMP},
		{"block", required_argument, 0, OPT_BLOCK},
		{"mse", no_argument, 0, OPT_MSE},
		{"rtn", no_argument, 0, OPT_RTN},
		{"all", no_argument, 0, OPT_ALL},
		{"reference", no_argument, 0, OPT_REF},
		{"objective", no_argument, 0, OPT_OBJ},
		{"device", required_argument, 0, OPT_DEVICE},
		{"feedback", required_argument, 0, OPT_FEEDBACK},
		{0, 0, 0, 0},
	};
	gq_common common;
	gq_stream_out out = {0};
	gq_solve_opts so = {{4, 128, 0, 0, 1, 0.01, 128, 0, 1}, 0, 0, 0, {GQ_DEV_CPU, 0}};
	const char *model_dir = NULL, *feedback = NULL;
	FILE *fifo; /* the feedback FIFO opened early, or NULL */
	gq_model *m;
	int all = 0, c;
	int64_t bits;

	gq_cli_init(&tool, &common, argc, argv);
	fifo = open_fifo_early(argc, argv);
	while ((c = getopt_long(argc, argv, GQ_COMMON_SHORT GQ_STREAM_OUT_SHORT "m:b:g:", longopts,
				NULL)) != -1) {
		if (gq_cli_common(&tool, &common, c, optarg) || gq_cli_stream_out(&tool, &out, c, optarg))
			continue;
		switch (c) {
		case 'm': model_dir = optarg; break;
		case 'b':
			bits = gq_opt_int(&tool, "--bits", optarg, 2, 8);
			if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
				gq_usage_error(&tool, "--bits: %lld is not 2, 3, 4 or 8", (long long)bits);
			so.gptq.bits = (int)bits;
			break;
		case 'g':
			so.gptq.group_size = gq_opt_int(&tool, "--group-size", optarg, -1, 1 << 20);
			if (so.gptq.group_size == 0)
				gq_usage_error(&tool, "--group-size: use a positive size or -1");
			break;
		case OPT_DESC: so.gptq.desc_act = 1; break;
		case OPT_STATIC: so.gptq.static_groups = 1; break;
		case OPT_SYM: so.gptq.sym = 1; break;
		case OPT_ASYM: so.gptq.sym = 0; break;
		case OPT_DAMP: so.gptq.damp = gq_opt_float(&tool, "--damp", optarg, 0, 1); break;
		case OPT_BLOCK: so.gptq.block = gq_opt_int(&tool, "--block", optarg, 1, 1 << 16); break;
		case OPT_MSE: so.gptq.mse = 1; break;
		case OPT_RTN: so.rtn = 1; break;
		case OPT_ALL: all = 1; break;
		case OPT_REF: so.reference = 1; break;
		case OPT_OBJ: so.objective = 1; break;
		case OPT_DEVICE:
			if (gq_device_parse(optarg, &so.device))
				die("%s", gq_errmsg());
			break;
		case OPT_FEEDBACK: feedback = optarg; break;
		default: gq_usage(&tool, 2);
		}
	}
	if (!model_dir)
		gq_usage_error(&tool, "-m MODEL is required");
	if (so.gptq.static_groups && so.gptq.group_size < 0)
		gq_usage_error(&tool, "cannot use --static-groups without a group size");
	if (all && !so.rtn)
		gq_usage_error(&tool, "--all quantizes without Hessians: it needs --rtn");
	if (all && optind < argc)
		gq_usage_error(&tool, "--all reads no input");
	if (so.rtn && so.reference)
		gq_usage_error(&tool, "cannot use --rtn with --reference");
	if (so.device.kind != GQ_DEV_CPU && (so.rtn || so.reference))
		gq_usage_error(&tool, "cannot use --%s with --device %s: it runs on the CPU",
			       so.rtn ? "rtn" : "reference", gq_device_name(so.device));
	so.gptq.threads = common.threads;
	if (gq_model_open(&m, model_dir))
		die("%s", gq_errmsg());

	gq_writer_opts wo = {out.zstd_level, common.threads, out.force};
	run r = {.m = m, .so = so, .feedback_fifo = fifo};
	if (gq_solver_open(&r.solver, m, &so) || gq_writer_open(&r.w, out.path, &wo) ||
	    gq_queue_writer_start(&r.out, r.w, OUT_QUEUE_BYTES))
		die("%s", gq_errmsg());
	if (feedback)
		r.feedback = open_feedback(feedback, r.feedback_fifo, &wo);
	gq_progress_init(&r.progress, "solve", all ? m->cfg.n_layers * m->n_modules : 0);
	if (all) {
		for (int l = 0; l < m->cfg.n_layers; l++)
			for (int i = 0; i < m->n_modules; i++)
				if (m->modules[i].step >= 0)
					emit(&r, l, i, NULL, NULL, 0);
	} else {
		char *dash = "-", **inputs = optind < argc ? argv + optind : &dash;
		int n_inputs = optind < argc ? argc - optind : 1;
		gq_frame f = {0};

		for (int i = 0; i < n_inputs; i++) {
			gq_reader *rd;
			double t0 = gq_now();
			int rc;

			if (gq_reader_open(&rd, inputs[i]))
				die("%s", gq_errmsg());
			/* the read time includes waiting for the writer: where a pipeline stalls */
			while ((rc = gq_reader_next(rd, &f, GQ_READ_DATA)) > 0) {
				if (f.kind && strcmp(f.kind, "hessian") == 0)
					solve_frame(&r, &f, gq_now() - t0);
				else if (gq_queue_writer_drain(r.out) || gq_writer_pass(r.w, &f))
					die("%s", gq_errmsg());
				t0 = gq_now();
			}
			if (rc < 0)
				die("%s", gq_errmsg());
			gq_reader_close(rd);
		}
		gq_frame_free(&f);
	}
	gq_progress_finish(&r.progress);
	/* the end of the feedback ends gptq-hessian's drain */
	if (r.feedback && gq_writer_close(r.feedback, 1))
		die("%s", gq_errmsg());
	if (r.feedback_fifo && fclose(r.feedback_fifo) != 0)
		die("cannot write '%s':", feedback);
	if (gq_queue_writer_stop(r.out))
		die("%s", gq_errmsg());
	write_report(&r);
	if (gq_writer_close(r.w, 1))
		die("%s", gq_errmsg());
	gq_buf_free(&r.report);
	gq_solver_close(r.solver);
	gq_model_close(m);
	if (gq_close_stdout())
		die("%s", gq_errmsg());
	return 0;
}
