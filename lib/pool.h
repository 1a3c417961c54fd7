/*
 * pool.h - a small persistent thread pool for the kernels that OpenBLAS does
 * not run (quantized GEMV): decoding calls it hundreds of times a token, so
 * threads wait on a condition variable instead of being created per call.
 */
#ifndef GQ_POOL_H
#define GQ_POOL_H

#include <stdint.h>

typedef struct gq_pool gq_pool;

/* threads >= 1; the caller's thread is one of them. */
int gq_pool_create(gq_pool **p, int threads);
void gq_pool_free(gq_pool *p);
int gq_pool_threads(const gq_pool *p);
/*
 * Runs fn(ctx, i) for every i in [0, n), spread over the threads, and
 * returns when all have run. p may be NULL: then everything runs here.
 */
void gq_pool_run(gq_pool *p, int n, void (*fn)(void *ctx, int i), void *ctx);

/*
 * fn(ctx, lo, hi) over spans [lo, hi) that cover [0, n), one per thread of
 * a pool made for the call: as many as `threads` allows, each at least
 * min_span long (less work than two spans runs here, as one). Without a
 * pool (out of memory) the caller's thread runs every span.
 */
void gq_pool_spans(int64_t n, int64_t min_span, int threads,
		   void (*fn)(void *ctx, int64_t lo, int64_t hi), void *ctx);

#endif
