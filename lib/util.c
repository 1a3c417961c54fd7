/*
 * util.c - error text, tool messages, number parsing, threads, progress.
 *
 * The last-error buffer is thread-local so that worker threads in lib/ can
 * fail independently; a message is one line without a trailing period.
 */
#define _GNU_SOURCE
#include "util.h"

#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char err_buf[1024];

const char *gq_progname = "gptq";
int gq_verbosity = 1;

int gq_err(int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err_buf, sizeof err_buf, fmt, ap);
	va_end(ap);
	return code;
}

int gq_err_wrap(int code, const char *fmt, ...)
{
	char prefix[512], old[sizeof err_buf];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(prefix, sizeof prefix, fmt, ap);
	va_end(ap);
	memcpy(old, err_buf, sizeof old);
	snprintf(err_buf, sizeof err_buf, "%s: %s", prefix, old);
	return code;
}

const char *gq_errmsg(void)
{
	return err_buf[0] ? err_buf : "unknown error";
}

void gq_set_progname(const char *argv0)
{
	const char *slash = strrchr(argv0, '/');

	gq_progname = slash ? slash + 1 : argv0;
}

/*
 * One line, written with one write: the tools of a pipeline share stderr,
 * and a line written in pieces can be cut by another tool's (or thread's).
 * Longer lines than the buffer are cut short.
 */
static void vmessage(const char *fmt, va_list ap)
{
	int saved = errno;
	size_t len = strlen(fmt), n;
	char line[16384];

	n = (size_t)snprintf(line, sizeof line, "%s: ", gq_progname);
	vsnprintf(line + n, sizeof line - n, fmt, ap);
	n = strlen(line);
	if (len && fmt[len - 1] == ':')
		snprintf(line + n, sizeof line - n, " %s", strerror(saved));
	n = strlen(line);
	n -= n == sizeof line - 1; /* room for the newline */
	line[n++] = '\n';
	fwrite(line, 1, n, stderr);
}

void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vmessage(fmt, ap);
	va_end(ap);
	exit(1);
}

void warn(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vmessage(fmt, ap);
	va_end(ap);
}

void gq_info(const char *fmt, ...)
{
	va_list ap;

	if (gq_verbosity < 1)
		return;
	va_start(ap, fmt);
	vmessage(fmt, ap);
	va_end(ap);
}

void gq_debug(const char *fmt, ...)
{
	va_list ap;

	if (gq_verbosity < 2)
		return;
	va_start(ap, fmt);
	vmessage(fmt, ap);
	va_end(ap);
}

void gq_bug(const char *file, int line, const char *msg)
{
	fprintf(stderr, "%s: BUG at %s:%d: %s\n", gq_progname, file, line, msg);
	abort();
}

void *emalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		die("out of memory allocating %zu bytes", n);
	return p;
}

void *ecalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (!p)
		die("out of memory allocating %zu x %zu bytes", n, size);
	return p;
}

void *erealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);

	if (!q)
		die("out of memory allocating %zu bytes", n);
	return q;
}

char *estrdup(const char *s)
{
	char *p = strdup(s);

	if (!p)
		die("out of memory");
	return p;
}

int gq_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
	char *end;
	long long v;

	if (!s || !*s)
		return gq_err(GQ_ERR_ARG, "empty number");
	errno = 0;
	v = strtoll(s, &end, 10);
	if (*end)
		return gq_err(GQ_ERR_ARG, "'%s' is not an integer", s);
	if (errno == ERANGE || v < lo || v > hi)
		return gq_err(GQ_ERR_ARG, "'%s' is out of range [%lld, %lld]", s,
			      (long long)lo, (long long)hi);
	*out = v;
	return GQ_OK;
}

int gq_parse_f64(const char *s, double lo, double hi, double *out)
{
	char *end;
	double v;

	if (!s || !*s)
		return gq_err(GQ_ERR_ARG, "empty number");
	errno = 0;
	v = strtod(s, &end);
	if (*end || !isfinite(v))
		return gq_err(GQ_ERR_ARG, "'%s' is not a finite number", s);
	if (errno == ERANGE || v < lo || v > hi)
		return gq_err(GQ_ERR_ARG, "'%s' is out of range [%g, %g]", s, lo, hi);
	*out = v;
	return GQ_OK;
}

int gq_parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	uint64_t mult = 1;

	if (!s || !*s || *s == '-')
		return gq_err(GQ_ERR_ARG, "'%s' is not a size", s ? s : "");
	errno = 0;
	v = strtoull(s, &end, 10);
	if (end == s || errno == ERANGE)
		return gq_err(GQ_ERR_ARG, "'%s' is not a size", s);
	switch (*end) {
	case 'K': case 'k': mult = 1ull << 10; end++; break;
	case 'M': case 'm': mult = 1ull << 20; end++; break;
	case 'G': case 'g': mult = 1ull << 30; end++; break;
	case 'T': case 't': mult = 1ull << 40; end++; break;
	}
	if (*end == 'B' || *end == 'b')
		end++;
	if (*end)
		return gq_err(GQ_ERR_ARG, "'%s' is not a size (use e.g. 512M or 4G)", s);
	if (gq_mul_u64(v, mult, out))
		return gq_err(GQ_ERR_ARG, "'%s' is too large", s);
	return GQ_OK;
}

void gq_buf_free(gq_buf *b)
{
	free(b->data);
	memset(b, 0, sizeof *b);
}

static int buf_reserve(gq_buf *b, size_t extra)
{
	size_t need, cap;
	char *p;

	if (b->failed || __builtin_add_overflow(b->len, extra + 1, &need)) {
		b->failed = 1;
		return -1;
	}
	if (need <= b->cap)
		return 0;
	cap = b->cap ? b->cap : 256;
	while (cap < need)
		cap = cap > SIZE_MAX / 2 ? need : cap * 2;
	p = realloc(b->data, cap);
	if (!p) {
		b->failed = 1;
		return -1;
	}
	/*
	 * The slack is zeroed: PCRE2's JIT scans a subject (a tokenizer piece
	 * in a buffer) in aligned 16-byte blocks and masks off what lies past
	 * its end, which valgrind cannot follow through the vector compare.
	 */
	memset(p + b->cap, 0, cap - b->cap);
	b->data = p;
	b->cap = cap;
	return 0;
}

void gq_buf_append(gq_buf *b, const void *p, size_t n)
{
	if (buf_reserve(b, n))
		return;
	memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
}

void gq_buf_printf(gq_buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || buf_reserve(b, (size_t)n))
		return;
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

int gq_json_has_nul(const char *json, size_t n)
{
	/* backslashes occur only in strings; skipping what follows each skips "\\" whole */
	for (size_t i = 0; i + 1 < n; i++)
		if (json[i] == '\\') {
			if (json[i + 1] == 'u' && i + 5 < n && memcmp(json + i + 2, "0000", 4) == 0)
				return 1;
			i++;
		}
	return 0;
}

void gq_buf_json_string(gq_buf *b, const char *s)
{
	gq_buf_append(b, "\"", 1);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		switch (*p) {
		case '"': gq_buf_append(b, "\\\"", 2); break;
		case '\\': gq_buf_append(b, "\\\\", 2); break;
		case '\n': gq_buf_append(b, "\\n", 2); break;
		case '\r': gq_buf_append(b, "\\r", 2); break;
		case '\t': gq_buf_append(b, "\\t", 2); break;
		default:
			if (*p < 0x20)
				gq_buf_printf(b, "\\u%04x", *p);
			else
				gq_buf_append(b, p, 1);
		}
	}
	gq_buf_append(b, "\"", 1);
}

static uint64_t hash_bytes(const char *p, size_t n)
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a */

	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
	return h;
}

void gq_strmap_free(gq_strmap *m)
{
	for (size_t i = 0; i < m->cap; i++)
		free(m->keys[i]);
	free(m->keys);
	free(m->lens);
	free(m->vals);
	memset(m, 0, sizeof *m);
}

/* Slot holding key, or the empty slot where it would go. */
static size_t strmap_slot(const gq_strmap *m, const char *key, size_t len)
{
	size_t i = (size_t)hash_bytes(key, len) & (m->cap - 1);

	while (m->keys[i] && (m->lens[i] != len || memcmp(m->keys[i], key, len) != 0))
		i = (i + 1) & (m->cap - 1);
	return i;
}

static int strmap_grow(gq_strmap *m)
{
	gq_strmap bigger = {0};

	bigger.cap = m->cap ? m->cap * 2 : 64;
	bigger.keys = calloc(bigger.cap, sizeof *bigger.keys);
	bigger.lens = calloc(bigger.cap, sizeof *bigger.lens);
	bigger.vals = calloc(bigger.cap, sizeof *bigger.vals);
	if (!bigger.keys || !bigger.lens || !bigger.vals) {
		gq_strmap_free(&bigger);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	for (size_t i = 0; i < m->cap; i++)
		if (m->keys[i]) {
			size_t j = strmap_slot(&bigger, m->keys[i], m->lens[i]);

			bigger.keys[j] = m->keys[i];
			bigger.lens[j] = m->lens[i];
			bigger.vals[j] = m->vals[i];
		}
	bigger.n = m->n;
	free(m->keys);
	free(m->lens);
	free(m->vals);
	*m = bigger;
	return GQ_OK;
}

int gq_strmap_putn(gq_strmap *m, const char *key, size_t len, int64_t val)
{
	size_t i;

	if ((m->n + 1) * 2 > m->cap && strmap_grow(m))
		return GQ_ERR_NOMEM;
	i = strmap_slot(m, key, len);
	if (!m->keys[i]) {
		char *k = malloc(len + 1);

		if (!k)
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		memcpy(k, key, len);
		k[len] = '\0';
		m->keys[i] = k;
		m->lens[i] = len;
		m->n++;
	}
	m->vals[i] = val;
	return GQ_OK;
}

int gq_strmap_put(gq_strmap *m, const char *key, int64_t val)
{
	return gq_strmap_putn(m, key, strlen(key), val);
}

int gq_strmap_getn(const gq_strmap *m, const char *key, size_t len, int64_t *val)
{
	size_t i;

	if (!m->cap)
		return 0;
	i = strmap_slot(m, key, len);
	if (!m->keys[i])
		return 0;
	*val = m->vals[i];
	return 1;
}

int gq_strmap_get(const gq_strmap *m, const char *key, int64_t *val)
{
	return gq_strmap_getn(m, key, strlen(key), val);
}

int gq_threads_default(void)
{
	const char *env = getenv("GPTQ_THREADS");
	cpu_set_t set;
	int64_t n;

	if (env && gq_parse_i64(env, 1, 4096, &n) == GQ_OK)
		return (int)n;
	if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
		return CPU_COUNT(&set);
	n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (int)n : 1;
}

double gq_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void progress_draw(gq_progress *p, int final)
{
	double elapsed = gq_now() - p->start_s;

	if (p->total > 0) {
		int width = 30, filled = (int)(width * p->done / p->total);
		double eta = p->done > 0 ? elapsed * (double)(p->total - p->done) / (double)p->done : 0;

		fprintf(stderr, "\r%s [%.*s%*s] %lld/%lld %.0fs eta %.0fs\033[K", p->label, filled,
			"##############################", width - filled, "", (long long)p->done,
			(long long)p->total, elapsed, eta);
	} else {
		fprintf(stderr, "\r%s %lld %.0fs\033[K", p->label, (long long)p->done, elapsed);
	}
	if (final)
		fputc('\n', stderr);
	fflush(stderr);
	p->last_draw_s = gq_now();
}

void gq_progress_init(gq_progress *p, const char *label, int64_t total)
{
	p->label = label;
	p->total = total;
	p->done = 0;
	p->start_s = gq_now();
	p->last_draw_s = 0;
	p->enabled = gq_verbosity >= 1 && isatty(STDERR_FILENO);
}

void gq_progress_update(gq_progress *p, int64_t done)
{
	p->done = done;
	/* a redraw costs a syscall: at most ten a second */
	if (p->enabled && gq_now() - p->last_draw_s >= 0.1)
		progress_draw(p, 0);
}

void gq_progress_finish(gq_progress *p)
{
	if (p->enabled)
		progress_draw(p, 1);
}
