/*
 * check.h - the unit-test harness: CHECK macros that count failures and
 * keep going, a runner that prints one line per test, and access to
 * ../shared (GQ_SHARED) with skips when it is absent.
 *
 * A test binary exits 1 if any CHECK failed, 0 otherwise (skips included).
 */
#ifndef GQ_CHECK_H
#define GQ_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "device.h"
#include "util.h"

static int check_failures;
static int check_test_failed;
static const char *check_skip_reason;

#define CHECK(cond)                                                                      \
	do {                                                                             \
		if (!(cond)) {                                                           \
			fprintf(stderr, "  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, \
				#cond);                                                  \
			check_test_failed = 1;                                           \
		}                                                                        \
	} while (0)

/* expr must return GQ_OK; prints the library's message otherwise. */
#define CHECK_OK(expr)                                                                   \
	do {                                                                             \
		int rc_ = (expr);                                                        \
		if (rc_ != GQ_OK) {                                                      \
			fprintf(stderr, "  %s:%d: %s returned %d: %s\n", __FILE__, __LINE__, \
				#expr, rc_, gq_errmsg());                                \
			check_test_failed = 1;                                           \
		}                                                                        \
	} while (0)

/* expr must fail with `code` and a message containing `substr`. */
#define CHECK_ERR(expr, code, substr)                                                    \
	do {                                                                             \
		int rc_ = (expr);                                                        \
		if (rc_ != (code) || !strstr(gq_errmsg(), (substr))) {                   \
			fprintf(stderr,                                                  \
				"  %s:%d: %s: expected %d with '%s', got %d: %s\n",      \
				__FILE__, __LINE__, #expr, (code), (substr), rc_,        \
				rc_ ? gq_errmsg() : "(success)");                        \
			check_test_failed = 1;                                           \
		}                                                                        \
	} while (0)

/* |a - b| <= atol + rtol * |b| */
#define CHECK_CLOSE(a, b, atol, rtol)                                                    \
	do {                                                                             \
		double a_ = (a), b_ = (b);                                               \
		if (!(fabs(a_ - b_) <= (atol) + (rtol) * fabs(b_))) {                    \
			fprintf(stderr, "  %s:%d: %s = %.9g, expected %.9g\n", __FILE__, \
				__LINE__, #a, a_, b_);                                   \
			check_test_failed = 1;                                           \
		}                                                                        \
	} while (0)

/* Marks the running test skipped (call, then return from the test). */
static inline void check_skip(const char *reason)
{
	check_skip_reason = reason;
}

/* Whether GPU tests can run here; skips the test, saying why, when not. */
static inline int check_have_gpu(void)
{
	if (!gq_gpu_backend()) {
		check_skip("built without a GPU backend");
		return 0;
	}
	if (gq_gpu_count() == 0) {
		check_skip("no GPU");
		return 0;
	}
	return 1;
}

static inline void check_run(const char *name, void (*fn)(void))
{
	check_test_failed = 0;
	check_skip_reason = NULL;
	fn();
	if (check_test_failed) {
		printf("not ok - %s\n", name);
		check_failures++;
	} else if (check_skip_reason) {
		printf("ok - %s # skip %s\n", name, check_skip_reason);
	} else {
		printf("ok - %s\n", name);
	}
	fflush(stdout);
}

#define RUN(fn) check_run(#fn, fn)

static inline int check_done(void)
{
	return check_failures ? 1 : 0;
}

/* Path under ../shared (GQ_SHARED overrides), or NULL when it does not exist. */
static inline const char *check_shared(const char *rel)
{
	static char buf[8][1024];
	static int next;
	const char *root = getenv("GQ_SHARED");
	struct stat st;
	char *b = buf[next++ % 8];

	snprintf(b, sizeof buf[0], "%s/%s", root && *root ? root : "../shared", rel);
	return stat(b, &st) == 0 ? b : NULL;
}

/* rel under the project's own test data (GQ_TESTDATA, default tests/data): always present. */
static inline const char *check_testdata(const char *rel)
{
	static char buf[8][1024];
	static int next;
	const char *root = getenv("GQ_TESTDATA");
	char *b = buf[next++ % 8];

	snprintf(b, sizeof buf[0], "%s/%s", root && *root ? root : "tests/data", rel);
	return b;
}

/*
 * A copy of the fixture rel (under the test data) in tmpdir/name whose
 * config.json is rewritten by sed, a sed expression; returns its path.
 */
static inline const char *check_variant(const char *tmpdir, const char *rel, const char *name,
					const char *sed)
{
	static char dir[1024];
	char cmd[4096];

	snprintf(dir, sizeof dir, "%s/%s", tmpdir, name);
	snprintf(cmd, sizeof cmd,
		 "mkdir -p '%s' && cp '%s'/* '%s'/ && chmod u+w '%s'/* && sed -i -e '%s' '%s/config.json'",
		 dir, check_testdata(rel), dir, dir, sed, dir);
	CHECK(system(cmd) == 0);
	return dir;
}

/* ‖a - ref‖ / ‖ref‖ over n values (the absolute norm when ref is all zero). */
static inline double check_rel_err(const float *a, const float *ref, int64_t n)
{
	double num = 0, den = 0;

	for (int64_t i = 0; i < n; i++) {
		num += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]);
		den += (double)ref[i] * ref[i];
	}
	return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Deterministic pseudo-random numbers (xorshift64*) for test inputs. */
static inline uint64_t check_rand(uint64_t *state)
{
	*state ^= *state >> 12;
	*state ^= *state << 25;
	*state ^= *state >> 27;
	return *state * 2685821657736338717ull;
}

static inline float check_randf(uint64_t *state) /* uniform in [-1, 1) */
{
	return (float)((double)(check_rand(state) >> 11) * 0x1p-52 - 1.0);
}

#endif
