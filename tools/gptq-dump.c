/*
 * gptq-dump - inspect frame streams and safetensors files: one JSON line per
 * frame (--stats adds statistics), or cut frames and tensors out of a stream
 * into standalone .safetensors files (--extract, --frame, --split).
 */
#include "checkpoint.h"
#include "cli.h"
#include "describe.h"
#include "io.h"
#include "model.h"
#include "stream.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const gq_tool tool = {
	"gptq-dump",
	"usage: gptq-dump [--stats] [--damp F] [--checksum] [FILE|DIR|-]...\n"
	"       gptq-dump --extract NAME [--frame N] -o OUT.safetensors [-f] [FILE|-]...\n"
	"       gptq-dump --frame N -o OUT.safetensors [-f] [FILE|-]...\n"
	"       gptq-dump --split DIR [FILE|-]...\n"
	"       gptq-dump --model-info MODEL\n",
	"Print one JSON line per frame: file, index, offset, kind, metadata, tensors.\n"
	"  -s, --stats         per-tensor min/max/mean/std/zeros/nan/inf; Hessian summary\n"
	"                      (trace, diagonal, dead columns, symmetry, condition) for\n"
	"                      hessian frames\n"
	"      --damp F        damp fraction for the damped condition estimate (0.01)\n"
	"      --checksum      add each tensor's FNV-1a 64-bit hash (fnv1a64) to compare\n"
	"                      tensors across files\n"
	"  -x, --extract NAME  write the frame whose name or modules attribute is NAME,\n"
	"                      or else the tensor NAME alone, to -o as .safetensors\n"
	"      --frame N       select frame N (0-based, across all inputs)\n"
	"  -o, --output FILE   output file for --extract/--frame ('-' for stdout)\n"
	"      --split DIR     write every frame to DIR/NNNNN-KIND[-NAME].safetensors\n"
	"  -f, --force         write binary output to a terminal\n"
	"      --model-info    describe a model directory as the tools read it: model_type,\n"
	"                      n_layers, dimensions, quantizable modules with their groups\n",
};

enum { OPT_DAMP = GQ_OPT_TOOL_BASE, OPT_FRAME, OPT_SPLIT, OPT_CHECKSUM, OPT_MODEL_INFO };

typedef struct {
	int stats;
	double damp;
	const char *extract;
	int64_t frame; /* -1: any */
	const char *output;
	const char *split;
	int force;
	int checksum;
	int model_info;
} options;

/* Does frame f answer to NAME as a whole (its name or one of its modules)? */
static int frame_is_named(const gq_frame *f, const char *name)
{
	const char *attr = gq_frame_attr(f, "name"), *mods = gq_frame_attr(f, "modules");
	size_t n = strlen(name);

	if (attr && strcmp(attr, name) == 0)
		return 1;
	for (const char *p = mods; p && *p;) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);

		if (len == n && strncmp(p, name, n) == 0)
			return 1;
		p = comma ? comma + 1 : NULL;
	}
	return 0;
}

/* Expands a directory argument into its shard files. */
static char **expand_inputs(int n, char **args, int *n_out)
{
	char **v = NULL;
	int k = 0;

	for (int i = 0; i < n; i++) {
		struct stat st;
		gq_ckpt *c;

		if (strcmp(args[i], "-") == 0 || stat(args[i], &st) != 0 || !S_ISDIR(st.st_mode)) {
			v = erealloc(v, (size_t)(k + 1) * sizeof *v);
			v[k++] = estrdup(args[i]);
			continue;
		}
		if (gq_ckpt_open(&c, args[i]))
			die("%s", gq_errmsg());
		v = erealloc(v, (size_t)(k + gq_ckpt_n_files(c)) * sizeof *v);
		for (int j = 0; j < gq_ckpt_n_files(c); j++)
			v[k++] = estrdup(gq_ckpt_file_path(c, j));
		gq_ckpt_close(c);
	}
	*n_out = k;
	return v;
}

static void list_frames(char **inputs, int n, const options *o)
{
	gq_describe_opts d = {o->stats, o->damp, o->checksum};
	gq_frame f = {0};
	gq_buf line = {0};

	for (int i = 0; i < n; i++) {
		gq_reader *r;
		int rc;

		if (gq_reader_open(&r, inputs[i]))
			die("%s", gq_errmsg());
		while ((rc = gq_reader_next(r, &f, o->stats || o->checksum ? GQ_READ_DATA : GQ_SKIP_DATA)) > 0) {
			line.len = 0;
			if (gq_describe_frame(&f, gq_reader_name(r), &d, &line))
				die("%s", gq_errmsg());
			fwrite(line.data, 1, line.len, stdout);
			/* one record at a time: a slow --stats run shows progress in jq */
			fflush(stdout);
		}
		if (rc < 0)
			die("%s", gq_errmsg());
		gq_reader_close(r);
	}
	gq_frame_free(&f);
	gq_buf_free(&line);
}

/* Writes the one tensor `name` of frame f, with the frame's metadata. */
static void write_tensor(const gq_frame *f, const char *name, const char *out, const options *o)
{
	gq_writer_opts wo = {0, 1, o->force};
	gq_st_builder b;
	gq_writer *w;
	gq_tensor t;

	gq_stb_init(&b);
	for (int i = 0; i < f->hdr.n_meta; i++)
		if (gq_stb_meta(&b, f->hdr.meta_keys[i], f->hdr.meta_vals[i]))
			die("%s", gq_errmsg());
	if (gq_frame_tensor(f, name, &t) ||
	    gq_stb_tensor(&b, name, t.dtype, t.ndim, t.shape, t.data) ||
	    gq_writer_open(&w, out, &wo))
		die("%s", gq_errmsg());
	if (gq_writer_put(w, &b) || gq_writer_close(w, 1))
		die("%s", gq_errmsg());
	gq_stb_free(&b);
}

/*
 * --extract / --frame: scans every input so that an ambiguous NAME is
 * reported rather than resolved silently; keeps only the chosen frame's data.
 */
static void extract(char **inputs, int n, const options *o)
{
	gq_frame f = {0}, chosen = {0};
	int64_t global = 0, matches = 0, first_match = -1, second_match = -1;
	int whole = 0;

	for (int i = 0; i < n; i++) {
		gq_reader *r;
		int rc;

		if (gq_reader_open(&r, inputs[i]))
			die("%s", gq_errmsg());
		for (;;) {
			/* read data only for a candidate: skip past frames we cannot want */
			int want = o->frame < 0 || o->frame == global;

			rc = gq_reader_next(r, &f, want ? GQ_READ_DATA : GQ_SKIP_DATA);
			if (rc <= 0)
				break;
			if (want && (!o->extract || frame_is_named(&f, o->extract) ||
				     gq_st_find(&f.hdr, o->extract))) {
				if (matches++ == 0) {
					whole = !o->extract || frame_is_named(&f, o->extract);
					first_match = global;
					chosen = f;
					memset(&f, 0, sizeof f);
				} else if (second_match < 0) {
					second_match = global;
				}
			}
			global++;
		}
		if (rc < 0)
			die("%s", gq_errmsg());
		gq_reader_close(r);
	}
	gq_frame_free(&f);
	if (matches == 0) {
		if (o->extract)
			die("no frame or tensor named '%s'%s", o->extract,
			    o->frame >= 0 ? " in the selected frame" : "");
		die("no frame %lld (the input has %lld)", (long long)o->frame, (long long)global);
	}
	if (matches > 1)
		die("'%s' matches frames %lld and %lld (choose one with --frame)", o->extract,
		    (long long)first_match, (long long)second_match);
	if (whole) {
		gq_writer_opts wo = {0, 1, o->force};
		gq_writer *w;

		if (gq_writer_open(&w, o->output, &wo) || gq_writer_pass(w, &chosen) ||
		    gq_writer_close(w, 1))
			die("%s", gq_errmsg());
	} else {
		write_tensor(&chosen, o->extract, o->output, o);
	}
	gq_frame_free(&chosen);
}

/* NNNNN-KIND[-NAME].safetensors, with anything unusual in NAME replaced by '_'. */
static void split_name(const gq_frame *f, int64_t index, char *buf, size_t len)
{
	const char *name = gq_frame_attr(f, "name");
	size_t o = (size_t)snprintf(buf, len, "%05lld-%.40s", (long long)index,
				    f->kind ? f->kind : "safetensors");

	for (size_t i = 0; i < o; i++)
		if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", buf[i]))
			buf[i] = '_';
	if (name && o + 2 < len) {
		buf[o++] = '-';
		for (const char *p = name; *p && o + 13 < len; p++)
			buf[o++] = strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-",
					  *p) ? *p : '_';
	}
	snprintf(buf + o, len - o, ".safetensors");
}

static void split(char **inputs, int n, const options *o)
{
	gq_writer_opts wo = {0, 1, 1};
	gq_atomic dir;
	gq_frame f = {0};
	int64_t global = 0;

	if (gq_atomic_mkdir(&dir, o->split))
		die("%s", gq_errmsg());
	for (int i = 0; i < n; i++) {
		gq_reader *r;
		int rc;

		if (gq_reader_open(&r, inputs[i]))
			die("%s", gq_errmsg());
		while ((rc = gq_reader_next(r, &f, GQ_READ_DATA)) > 0) {
			char name[160], *path;
			gq_writer *w;
			FILE *fp;

			split_name(&f, global++, name, sizeof name);
			if (gq_atomic_dir_file(&dir, name, &path))
				die("%s", gq_errmsg());
			fp = fopen(path, "wb");
			if (!fp)
				die("cannot create '%s':", path);
			if (gq_writer_open_fp(&w, fp, path, &wo) || gq_writer_pass(w, &f) ||
			    gq_writer_close(w, 1))
				die("%s", gq_errmsg());
			if (fclose(fp) != 0)
				die("cannot write '%s':", path);
			free(path);
		}
		if (rc < 0)
			die("%s", gq_errmsg());
		gq_reader_close(r);
	}
	gq_frame_free(&f);
	if (gq_atomic_commit(&dir, 0))
		die("%s", gq_errmsg());
	gq_debug("wrote %lld frame%s to %s", (long long)global, global == 1 ? "" : "s", o->split);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		GQ_COMMON_LONG,
		{"stats", no_argument, 0, 's'},
		{"damp", required_argument, 0, OPT_DAMP},
		{"extract", required_argument, 0, 'x'},
		{"frame", required_argument, 0, OPT_FRAME},
		{"output", required_argument, 0, 'o'},
		{"split", required_argument, 0, OPT_SPLIT},
		{"force", no_argument, 0, 'f'},
		{"checksum", no_argument, 0, OPT_CHECKSUM},
		{"model-info", no_argument, 0, OPT_MODEL_INFO},
		{0, 0, 0, 0},
	};
	options o = {.damp = 0.01, .frame = -1};
	gq_common common;
	char **inputs, *dash = "-";
	int c, n_inputs;

	gq_cli_init(&tool, &common, argc, argv);
	while ((c = getopt_long(argc, argv, GQ_COMMON_SHORT "sx:o:f", longopts, NULL)) != -1) {
		if (gq_cli_common(&tool, &common, c, optarg))
			continue;
		switch (c) {
		case 's': o.stats = 1; break;
		case OPT_DAMP: o.damp = gq_opt_float(&tool, "--damp", optarg, 0, 1); break;
		case 'x': o.extract = optarg; break;
		case OPT_FRAME: o.frame = gq_opt_int(&tool, "--frame", optarg, 0, INT64_MAX); break;
		case 'o': o.output = optarg; break;
		case OPT_SPLIT: o.split = optarg; break;
		case 'f': o.force = 1; break;
		case OPT_CHECKSUM: o.checksum = 1; break;
		case OPT_MODEL_INFO: o.model_info = 1; break;
		default: gq_usage(&tool, 2);
		}
	}
	if (o.split && (o.extract || o.frame >= 0 || o.output))
		gq_usage_error(&tool, "cannot use --split with --extract, --frame or -o");
	if ((o.extract || o.frame >= 0) && !o.output)
		gq_usage_error(&tool, "--extract and --frame need -o OUT.safetensors");
	if (o.output && !o.extract && o.frame < 0)
		gq_usage_error(&tool, "-o needs --extract or --frame");
	if (o.stats && (o.extract || o.frame >= 0 || o.split))
		gq_usage_error(&tool, "--stats only applies to listing");
	if (o.model_info) {
		gq_model *m;
		gq_buf line = {0};

		if (optind != argc - 1 || o.stats || o.extract || o.frame >= 0 || o.split)
			gq_usage_error(&tool, "--model-info takes one model directory and nothing else");
		if (gq_model_open(&m, argv[optind]) || gq_describe_model(m, &line))
			die("%s", gq_errmsg());
		fwrite(line.data, 1, line.len, stdout);
		gq_buf_free(&line);
		gq_model_close(m);
		if (gq_close_stdout())
			die("%s", gq_errmsg());
		return 0;
	}
	if (optind == argc)
		inputs = expand_inputs(1, &dash, &n_inputs);
	else
		inputs = expand_inputs(argc - optind, argv + optind, &n_inputs);

	if (o.split)
		split(inputs, n_inputs, &o);
	else if (o.extract || o.frame >= 0)
		extract(inputs, n_inputs, &o);
	else
		list_frames(inputs, n_inputs, &o);

	for (int i = 0; i < n_inputs; i++)
		free(inputs[i]);
	free(inputs);
	if (gq_close_stdout())
		die("%s", gq_errmsg());
	return 0;
}
