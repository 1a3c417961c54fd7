/*
 * gptq-hessian - `tokens` frames in, `hessian` frames out: one per group of
 * linears sharing an input, layer by layer; or --merge partial Hessians.
 */
#include "calib.h"
#include "cli.h"
#include "collect.h"
#include "io.h"
#include "stream.h"
#include "util.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const gq_tool tool = {
	"gptq-hessian",
	"usage: gptq-hessian -m MODEL --feedback FILE [--layers A-B] [--save-state FILE]\n"
	"                    [--device DEV [--recompute]] [--triangle] [-o FILE] [-z]\n"
	"                    [FILE|-]...\n"
	"       gptq-hessian -m MODEL --no-sequential [--layers A-B] [--save-state FILE]\n"
	"                    [--device DEV] [--triangle] [-o FILE] [-z] [FILE|-]...\n"
	"       gptq-hessian --merge [--triangle] [-o FILE] [-z] FILE...\n",
	"Run the model over the calibration tokens a layer at a time and write\n"
	"H = 2/n sum x x^T for every group of linears that share an input.\n"
	"  -m, --model DIR       the Hugging Face checkpoint to quantize\n"
	"      --feedback FILE   sequential mode: read the quantized modules (gptq-solve's\n"
	"                        qlinear frames) back from FILE, usually a FIFO, and\n"
	"                        compute later inputs with them (AutoGPTQ true_sequential)\n"
	"      --no-sequential   all Hessians from full-precision inputs in one pass\n"
	"      --layers A-B      Hessians of layers A..B only (earlier layers still run;\n"
	"                        qlinear frames in the input give their quantized weights)\n"
	"      --save-state FILE write the activations leaving the last layer (activations\n"
	"                        frames); given as input instead of tokens they resume\n"
	"                        there, as pipelines/quantize.mk does layer by layer\n"
	"      --device DEV      where the layers run: cpu (default) or cuda[:N]/hip[:N]\n"
	"                        (activations resident on the GPU, one layer uploaded at a\n"
	"                        time, H summed in float32 from the fp16 inputs)\n"
	"      --recompute       GPU, sequential: run every step from the layer's input\n"
	"                        (the default keeps the inputs of o_proj, the MLP and\n"
	"                        down_proj on the device: faster, more device memory)\n"
	"      --triangle        write each H's lower triangle, packed (H_lower): half the\n"
	"                        bytes through the pipe into gptq-solve, which unfolds it\n"
	"      --merge           sum partial Hessian streams frame by frame (weighted by\n"
	"                        nsamples): data-parallel collection\n"
	GQ_STREAM_OUT_HELP,
};

enum { OPT_FEEDBACK = GQ_OPT_TOOL_BASE, OPT_NOSEQ, OPT_LAYERS, OPT_MERGE, OPT_STATE, OPT_DEVICE,
       OPT_RECOMPUTE, OPT_TRIANGLE };

typedef struct {
	gq_writer *w;
	int closed;
} output;

/* Closes our output so that gptq-solve can finish; the feedback is drained next. */
static int close_output(void *p)
{
	output *o = p;

	o->closed = 1;
	if (gq_writer_close(o->w, 1))
		return GQ_ERR_IO;
	return gq_close_stdout();
}

/*
 * Reads all input frames: tokens (or activations) become samples, qlinears
 * earlier weights, the rest passes. *start is the layer activations feed.
 */
static void read_inputs(char **inputs, int n, const gq_model *m, gq_writer *w, gq_sample **samples,
			int64_t *n_samples, gq_qlinear **given, int *n_given, int *start)
{
	int kinds = 0; /* 1: tokens seen, 2: activations seen */

	gq_frame f = {0};

	for (int i = 0; i < n; i++) {
		gq_reader *r;
		int rc;

		if (gq_reader_open(&r, inputs[i]))
			die("%s", gq_errmsg());
		while ((rc = gq_reader_next(r, &f, GQ_READ_DATA)) > 0) {
			gq_samples tok;

			if (f.kind && strcmp(f.kind, "qlinear") == 0) {
				*given = erealloc(*given, (size_t)(*n_given + 1) * sizeof **given);
				if (gq_qlinear_parse(&(*given)[(*n_given)++], &f))
					die("%s", gq_errmsg());
				continue;
			}
			if (f.kind && strcmp(f.kind, "activations") == 0) {
				int layer;

				*samples = erealloc(*samples, (size_t)(*n_samples + 1) * sizeof **samples);
				if (gq_sample_from_activations(&f, m->cfg.hidden, &(*samples)[*n_samples], &layer))
					die("%s", gq_errmsg());
				(*n_samples)++;
				if ((kinds & 2) && layer != *start)
					gq_die_frame(&f, "activations for layer %d after ones for layer %d", layer,
						     *start);
				*start = layer;
				kinds |= 2;
				continue;
			}
			if (!f.kind || strcmp(f.kind, "tokens") != 0) {
				if (gq_writer_pass(w, &f))
					die("%s", gq_errmsg());
				continue;
			}
			kinds |= 1;
			if (gq_samples_from_frame(&f, m->cfg.vocab, &tok))
				die("%s", gq_errmsg());
			*samples = erealloc(*samples, (size_t)(*n_samples + tok.n) * sizeof **samples);
			for (int64_t s = 0; s < tok.n; s++) {
				gq_sample *smp = &(*samples)[(*n_samples)++];

				memset(smp, 0, sizeof *smp);
				smp->len = tok.len;
				smp->ids = emalloc((size_t)tok.len * sizeof *smp->ids);
				memcpy(smp->ids, tok.ids + s * tok.len, (size_t)tok.len * sizeof *smp->ids);
				if (tok.mask) {
					smp->mask = emalloc((size_t)tok.len);
					memcpy(smp->mask, tok.mask + s * tok.len, (size_t)tok.len);
				}
			}
			gq_samples_free(&tok);
		}
		if (rc < 0)
			die("%s", gq_errmsg());
		gq_reader_close(r);
	}
	gq_frame_free(&f);
	if (kinds == 3)
		die("the input mixes tokens and activations frames");
	if (*start >= m->cfg.n_layers)
		die("the activations leave the last layer (%d): nothing to collect", *start - 1);
}

static void parse_layers(const char *s, int64_t n_layers, gq_collect_opts *o)
{
	char a[32], *dash;
	int64_t lo, hi;


	snprintf(a, sizeof a, "%s", s);
	dash = strchr(a, '-');
	if (dash)
		*dash = '\0';
	if (gq_parse_i64(a, 0, n_layers - 1, &lo) ||
	    gq_parse_i64(dash ? dash + 1 : a, lo, n_layers - 1, &hi))
		gq_usage_error(&tool, "--layers: '%s': %s (the model has %lld layers)", s, gq_errmsg(),
			       (long long)n_layers);
	o->first_layer = (int)lo;
	o->last_layer = (int)hi;
}

/*
 * Opens the feedback FIFO for reading before anything can fail: `tee fb`
 * blocks opening it for writing until a reader exists, so a reader that died
 * first would leave the pipeline hanging; once opened, our exit closes it and
 * tee stops on a broken pipe instead. Non-blocking, and never read: the real
 * reader is opened when the first feedback is due (see collect.c).
 */
static int early_fd = -1, finished;

/*
 * On a failed exit, wait (5 s at most) until tee has opened the FIFO we hold:
 * a non-blocking read gives EOF while no writer ever connected, EAGAIN or
 * data once one has. Closing it then breaks tee's pipe instead of leaving
 * tee blocked in open() for good.
 */
static void grace_on_failure(void)
{
	char byte;

	if (finished || early_fd < 0)
		return;
	for (int i = 0; i < 250 && read(early_fd, &byte, 1) == 0; i++)
		usleep(20000);
}

static int open_feedback_early(int argc, char **argv)
{
	const char *path = gq_cli_early_arg(argc, argv, "feedback");
	int fd;

	if (!path || (fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)) < 0)
		return -1;
	early_fd = fd;
	atexit(grace_on_failure);
	return fd;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		GQ_COMMON_LONG,
		GQ_STREAM_OUT_LONG,
		{"model", required_argument, 0, 'm'},
		{"feedback", required_argument, 0, OPT_FEEDBACK},
		{"no-sequential", no_argument, 0, OPT_NOSEQ},
		{"layers", required_argument, 0, OPT_LAYERS},
		{"merge", no_argument, 0, OPT_MERGE},
		{"save-state", required_argument, 0, OPT_STATE},
		{"device", required_argument, 0, OPT_DEVICE},
		{"recompute", no_argument, 0, OPT_RECOMPUTE},
		{"triangle", no_argument, 0, OPT_TRIANGLE},
		{0, 0, 0, 0},
	};
	gq_common common;
	gq_stream_out out = {0};
	gq_collect_opts co = {.sequential = 1, .last_layer = -1,
			      .feedback_fd = open_feedback_early(argc, argv)};
	const char *model_dir = NULL, *layers = NULL, *state = NULL;
	gq_writer *state_w = NULL;
	int merge = 0, noseq = 0, device = 0, c, n_inputs, n_given = 0;
	char *dash = "-", **inputs;
	gq_sample *samples = NULL;
	gq_qlinear *given = NULL;
	int64_t n_samples = 0;
	output o = {NULL, 0};
	gq_model *m;

	gq_cli_init(&tool, &common, argc, argv);
	while ((c = getopt_long(argc, argv, GQ_COMMON_SHORT GQ_STREAM_OUT_SHORT "m:", longopts, NULL)) != -1) {
		if (gq_cli_common(&tool, &common, c, optarg) || gq_cli_stream_out(&tool, &out, c, optarg))
			continue;
		switch (c) {
		case 'm': model_dir = optarg; break;
		case OPT_FEEDBACK: co.feedback = optarg; break;
		case OPT_NOSEQ: noseq = 1; break;
		case OPT_LAYERS: layers = optarg; break;
		case OPT_MERGE: merge = 1; break;
		case OPT_STATE: state = optarg; break;
		case OPT_DEVICE:
			if (gq_device_parse(optarg, &co.device))
				die("%s", gq_errmsg());
			device = 1;
			break;
		case OPT_RECOMPUTE: co.recompute = 1; break;
		case OPT_TRIANGLE: co.triangle = 1; break;
		default: gq_usage(&tool, 2);
		}
	}
	inputs = optind < argc ? argv + optind : &dash;
	n_inputs = optind < argc ? argc - optind : 1;
	gq_writer_opts wo = {out.zstd_level, common.threads, out.force};

	if (merge) {
		gq_reader **rd = ecalloc((size_t)n_inputs, sizeof *rd);

		if (model_dir || co.feedback || noseq || layers || state || device || co.recompute)
			gq_usage_error(&tool, "--merge takes only input files and output options");
		for (int i = 0; i < n_inputs; i++)
			if (gq_reader_open(&rd[i], inputs[i]))
				die("%s", gq_errmsg());
		if (gq_writer_open(&o.w, out.path, &wo) || gq_merge_hessians(rd, n_inputs, co.triangle, o.w) ||
		    gq_writer_close(o.w, 1))
			die("%s", gq_errmsg());
		for (int i = 0; i < n_inputs; i++)
			gq_reader_close(rd[i]);
		free(rd);
		if (gq_close_stdout())
			die("%s", gq_errmsg());
		return 0;
	}
	if (!model_dir)
		gq_usage_error(&tool, "-m MODEL is required");
	if (noseq && co.feedback)
		gq_usage_error(&tool, "cannot use --feedback with --no-sequential");
	if (!noseq && !co.feedback)
		gq_usage_error(&tool, "sequential mode needs --feedback FILE (or use --no-sequential)");
	if (co.recompute && (noseq || co.device.kind == GQ_DEV_CPU))
		gq_usage_error(&tool, "--recompute is for sequential mode on a GPU (--device)");
	co.sequential = !noseq;
	if (gq_model_open(&m, model_dir))
		die("%s", gq_errmsg());
	if (gq_writer_open(&o.w, out.path, &wo))
		die("%s", gq_errmsg());
	read_inputs(inputs, n_inputs, m, o.w, &samples, &n_samples, &given, &n_given, &co.start_layer);
	if (n_samples == 0)
		die("no tokens frames in the input (make them with gptq-calib)");
	co.first_layer = co.start_layer;
	co.last_layer = (int)m->cfg.n_layers - 1;
	if (layers)
		parse_layers(layers, m->cfg.n_layers, &co);
	if (co.first_layer < co.start_layer)
		die("--layers %s: the input activations enter layer %d", layers, co.start_layer);
	if (state) {
		gq_writer_opts so = {out.zstd_level, common.threads, 1};

		if (gq_writer_open(&state_w, state, &so))
			die("%s", gq_errmsg());
		co.state = state_w;
	}
	gq_debug("%lld samples, layers %d-%d", (long long)n_samples, co.first_layer, co.last_layer);
	if (gq_collect(m, samples, n_samples, &co, given, n_given, o.w, close_output, &o))
		die("%s", gq_errmsg());
	if (!o.closed && (gq_writer_close(o.w, 1) || gq_close_stdout()))
		die("%s", gq_errmsg());
	if (state_w && gq_writer_close(state_w, 1))
		die("%s", gq_errmsg());
	for (int64_t i = 0; i < n_samples; i++) {
		free(samples[i].ids);
		free(samples[i].mask);
		free(samples[i].x);
	}
	free(samples);
	for (int i = 0; i < n_given; i++)
		gq_qlinear_free(&given[i]);
	free(given);
	gq_model_close(m);
	finished = 1;
	return 0;
}
