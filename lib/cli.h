/*
 * cli.h - what every tool's main shares: common options through
 * getopt_long, usage and version text, strict numeric option values.
 *
 * This is the dying layer: these functions print and exit (2 for usage
 * errors), so only tools/ call them.
 */
#ifndef GQ_CLI_H
#define GQ_CLI_H

#include <getopt.h>
#include <stdint.h>

typedef struct {
	const char *name;     /* "gptq-dump" */
	const char *synopsis; /* usage lines, same as the man page SYNOPSIS */
	const char *options;  /* option summary shown by --help */
} gq_tool;

enum {
	GQ_OPT_VERSION = 0x1000,
	GQ_OPT_THREADS,
	GQ_OPT_ZSTD,
	GQ_OPT_TOOL_BASE = 0x1100 /* tools number their own long options from here */
};

/* Short and long options every tool accepts; append a tool's own after them. */
#define GQ_COMMON_SHORT "hvq"
#define GQ_COMMON_LONG                                                   \
	{"help", no_argument, 0, 'h'}, {"verbose", no_argument, 0, 'v'}, \
	{"quiet", no_argument, 0, 'q'}, {"version", no_argument, 0, GQ_OPT_VERSION}, \
	{"threads", required_argument, 0, GQ_OPT_THREADS}

typedef struct {
	int threads; /* --threads, or gq_threads_default() */
} gq_common;

/* Options of tools that write a frame stream: -o FILE, -z / --zstd[=LEVEL], -f. */
#define GQ_STREAM_OUT_SHORT "o:zf"
#define GQ_STREAM_OUT_LONG                                                              \
	{"output", required_argument, 0, 'o'}, {"zstd", optional_argument, 0, GQ_OPT_ZSTD}, \
	{"force", no_argument, 0, 'f'}
#define GQ_STREAM_OUT_HELP                                                               \
	"  -o, --output FILE   write the stream to FILE (atomically) instead of stdout\n"    \
	"  -z, --zstd[=LEVEL]  compress the output with zstd (level 1-19, default 3)\n"      \
	"  -f, --force         write binary output to a terminal\n"

typedef struct {
	const char *path; /* NULL: stdout */
	int zstd_level;
	int force;
} gq_stream_out;

/* Handles a stream-output option; returns 1 if opt was one. May exit. */
int gq_cli_stream_out(const gq_tool *t, gq_stream_out *o, int opt, const char *arg);

/*
 * Sets the program name, installs the atomic-output handlers and fills in
 * defaults. Call first in main.
 */
void gq_cli_init(const gq_tool *t, gq_common *c, int argc, char **argv);
/* Handles a common option; returns 1 if c was one, 0 otherwise. May exit. */
int gq_cli_common(const gq_tool *t, gq_common *c, int opt, const char *arg);
/* usage(): to stdout with exit 0 for status 0, to stderr with exit 2 otherwise. */
_Noreturn void gq_usage(const gq_tool *t, int status);
/* Usage error: "prog: msg" then the synopsis on stderr, exit 2. */
_Noreturn void gq_usage_error(const gq_tool *t, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* die() with the "source: frame N at byte O: " prefix of frame f. */
_Noreturn void gq_die_frame(const void *frame, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/*
 * The value of long option --name (as "--name V" or "--name=V", the last
 * one before "--") from argv, before getopt runs, or NULL: for what a tool
 * must do before anything can fail (opening the feedback FIFO).
 */
const char *gq_cli_early_arg(int argc, char **argv, const char *name);

/* Option values: a bad one is a usage error naming the option. */
int64_t gq_opt_int(const gq_tool *t, const char *opt, const char *arg, int64_t lo, int64_t hi);
double gq_opt_float(const gq_tool *t, const char *opt, const char *arg, double lo, double hi);

#endif
