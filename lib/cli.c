/*
 * cli.c - shared option handling for the tools (may exit; tools/ only).
 */
#include "cli.h"
#include "device.h"
#include "io.h"
#include "linalg.h"
#include "stream.h"
#include "util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

void gq_cli_init(const gq_tool *t, gq_common *c, int argc, char **argv)
{
	(void)argc;
	gq_set_progname(argv[0] && argv[0][0] ? argv[0] : t->name);
	gq_atomic_install_handlers();
	c->threads = gq_threads_default();
	gq_blas_set_threads(c->threads);
}

void gq_usage(const gq_tool *t, int status)
{
	FILE *fp = status ? stderr : stdout;

	fputs(t->synopsis, fp);
	if (!status) {
		fputs("\n", fp);
		fputs(t->options, fp);
		fputs("\nCommon options:\n"
		      "  -h, --help         show this help and exit\n"
		      "      --version      show version and build features and exit\n"
		      "  -v, --verbose      more messages on stderr (repeat for more)\n"
		      "  -q, --quiet        errors only\n"
		      "      --threads N    CPU threads (default: usable CPUs, or $GPTQ_THREADS)\n",
		      fp);
		fprintf(fp, "\nSee %s(1).\n", t->name);
	}
	exit(status ? 2 : 0);
}

void gq_usage_error(const gq_tool *t, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", t->name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	gq_usage(t, 2);
}

static _Noreturn void version(const gq_tool *t)
{
	printf("%s (gptq) %s\n", t->name, GQ_VERSION);
	printf("backends: cpu (openblas)%s\n", gq_gpu_backend() ? gq_gpu_backend_desc() : "");
	printf("zstd %s\n", ZSTD_versionString());
	exit(0);
}

int gq_cli_common(const gq_tool *t, gq_common *c, int opt, const char *arg)
{
	switch (opt) {
	case 'h':
		gq_usage(t, 0);
	case 'v':
		gq_verbosity++;
		return 1;
	case 'q':
		gq_verbosity = 0;
		return 1;
	case GQ_OPT_VERSION:
		version(t);
	case GQ_OPT_THREADS:
		c->threads = (int)gq_opt_int(t, "--threads", arg, 1, 4096);
		gq_blas_set_threads(c->threads);
		return 1;
	case '?':
		gq_usage(t, 2);
	default:
		return 0;
	}
}

int gq_cli_stream_out(const gq_tool *t, gq_stream_out *o, int opt, const char *arg)
{
	switch (opt) {
	case 'o':
		o->path = arg;
		return 1;
	case 'z':
		o->zstd_level = 3;
		return 1;
	case GQ_OPT_ZSTD:
		o->zstd_level = arg ? (int)gq_opt_int(t, "--zstd", arg, 1, 19) : 3;
		return 1;
	case 'f':
		o->force = 1;
		return 1;
	default:
		return 0;
	}
}

void gq_die_frame(const void *frame, const char *fmt, ...)
{
	char msg[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	gq_frame_err(frame, GQ_ERR_FORMAT, "%s", msg);
	die("%s", gq_errmsg());
}

int64_t gq_opt_int(const gq_tool *t, const char *opt, const char *arg, int64_t lo, int64_t hi)
{
	int64_t v;

	if (gq_parse_i64(arg, lo, hi, &v))
		gq_usage_error(t, "%s: %s", opt, gq_errmsg());
	return v;
}

double gq_opt_float(const gq_tool *t, const char *opt, const char *arg, double lo, double hi)
{
	double v;

	if (gq_parse_f64(arg, lo, hi, &v))
		gq_usage_error(t, "%s: %s", opt, gq_errmsg());
	return v;
}

const char *gq_cli_early_arg(int argc, char **argv, const char *name)
{
	const char *value = NULL;
	size_t n = strlen(name);

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0)
			break;
		if (strncmp(argv[i], "--", 2) != 0 || strncmp(argv[i] + 2, name, n) != 0)
			continue;
		if (argv[i][2 + n] == '\0' && i + 1 < argc)
			value = argv[++i];
		else if (argv[i][2 + n] == '=')
			value = argv[i] + 3 + n;
	}
	return value;
}
