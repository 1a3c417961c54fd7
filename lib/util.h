/*
 * util.h - status codes, error messages, logging, number parsing, threads,
 * progress and the dying wrappers that only tools/ may call.
 *
 * Bottom of the lib/ hierarchy: depends on libc alone. Library functions
 * report failure by returning a negative gq_status after recording one line
 * of text with gq_err(); tools print it with die("%s", gq_errmsg()).
 */
#ifndef GQ_UTIL_H
#define GQ_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
#define _Noreturn [[noreturn]]
extern "C" {
#endif

#define GQ_VERSION "0.1.0"

typedef enum {
	GQ_OK = 0,
	GQ_ERR_IO = -1,          /* read/write/open failed, disk full */
	GQ_ERR_FORMAT = -2,      /* malformed or corrupt input */
	GQ_ERR_NOMEM = -3,
	GQ_ERR_ARG = -4,         /* caller passed something invalid */
	GQ_ERR_NUMERIC = -5,     /* NaN, singular matrix, overflow */
	GQ_ERR_UNSUPPORTED = -6, /* valid input we cannot handle */
	GQ_ERR_NOTFOUND = -7,    /* tensor, key or file absent */
} gq_status;

/*
 * Records a formatted message as this thread's last error and returns code,
 * so that `return gq_err(GQ_ERR_FORMAT, "...")` reads naturally.
 */
int gq_err(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefixes the current error message with "ctx: " (adds file or frame context). */
int gq_err_wrap(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *gq_errmsg(void);

/* ---- tool-facing messages (stderr, prefixed with the tool name) ---- */

extern const char *gq_progname; /* set by tools from argv[0] */
extern int gq_verbosity;        /* 0 quiet, 1 normal (default), 2 -v, 3 -vv */

void gq_set_progname(const char *argv0);
/* die(): print "prog: msg" (+ ": strerror" when fmt ends in ':'), run exit cleanup, exit 1. */
_Noreturn void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Messages shown at verbosity >= 1 and >= 2 respectively. */
void gq_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void gq_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#define BUG(msg) gq_bug(__FILE__, __LINE__, msg)
_Noreturn void gq_bug(const char *file, int line, const char *msg);

/* Dying allocation wrappers, for tools only (lib/ returns GQ_ERR_NOMEM). */
void *emalloc(size_t n);
void *ecalloc(size_t n, size_t size);
void *erealloc(void *p, size_t n);
char *estrdup(const char *s);

/* ---- strict number parsing (no atoi: overflow and junk are errors) ---- */

int gq_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out);
int gq_parse_f64(const char *s, double lo, double hi, double *out);
/* Byte sizes with an optional K/M/G/T suffix (powers of 1024), as in --shard-size 4G. */
int gq_parse_size(const char *s, uint64_t *out);

/* Overflow-checked size arithmetic: return 0 and store the result, or -1 on overflow. */
static inline int gq_mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
	return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}
static inline int gq_add_u64(uint64_t a, uint64_t b, uint64_t *out)
{
	return __builtin_add_overflow(a, b, out) ? -1 : 0;
}

/* ---- growable byte buffer ---- */

typedef struct {
	char *data; /* len bytes + a NUL kept after them */
	size_t len, cap;
	int failed; /* an append ran out of memory: the content is incomplete */
} gq_buf;

void gq_buf_free(gq_buf *b);
void gq_buf_append(gq_buf *b, const void *p, size_t n);
void gq_buf_printf(gq_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal, quotes included. */
void gq_buf_json_string(gq_buf *b, const char *s);
/*
 * JSON text [n] escapes a NUL (\u0000) somewhere: cJSON would end that string
 * there, silently, as its strings are NUL-terminated.
 */
int gq_json_has_nul(const char *json, size_t n);

/* ---- string -> int64 hash map (keys copied) ---- */

typedef struct {
	char **keys;    /* cap slots, NULL when empty */
	size_t *lens;   /* cap: key lengths */
	int64_t *vals;  /* cap */
	size_t cap;     /* a power of two */
	size_t n;
} gq_strmap;

void gq_strmap_free(gq_strmap *m);
/* Inserts or replaces; returns GQ_OK or GQ_ERR_NOMEM. */
int gq_strmap_put(gq_strmap *m, const char *key, int64_t val);
/* Length-delimited key (may contain NUL bytes). */
int gq_strmap_putn(gq_strmap *m, const char *key, size_t len, int64_t val);
/* Returns 1 and sets *val when present, else 0. */
int gq_strmap_get(const gq_strmap *m, const char *key, int64_t *val);
int gq_strmap_getn(const gq_strmap *m, const char *key, size_t len, int64_t *val);

/* ---- threads ---- */

/*
 * Threads to use when the user gave none: GPTQ_THREADS if set, else the CPUs
 * this process may run on (sched_getaffinity: respects Slurm/cgroup limits).
 */
int gq_threads_default(void);

/* ---- progress bar on stderr, drawn only when stderr is a terminal ---- */

typedef struct {
	const char *label;
	int64_t total;     /* units of work; 0 = unknown */
	int64_t done;
	double start_s;    /* monotonic seconds at init */
	double last_draw_s;
	int enabled;
} gq_progress;

void gq_progress_init(gq_progress *p, const char *label, int64_t total);
void gq_progress_update(gq_progress *p, int64_t done);
void gq_progress_finish(gq_progress *p);

double gq_now(void); /* monotonic seconds */

#ifdef __cplusplus
}
#endif

#endif
