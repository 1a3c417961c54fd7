/*
 * test_qmat.c - quantized matrices from AutoGPTQ tensors: exact
 * dequantization for every width, format and act order, and every GEMV
 * variant this CPU runs (plus the GEMM path) against the element-wise reference.
 */
#include "check.h"
#include "pool.h"
#include "cpu/sgemv.h"
#include "qmat.h"
#include "tensor.h"

#include <cblas.h>
#include <string.h>
#include <unistd.h>

typedef struct {
	int bits;
	int64_t in, out, gs, groups;
	int act_order;
	gq_ckpt_format fmt;
	uint8_t *codes; /* [out, in] */
	uint8_t *zeros; /* [groups, out] */
	uint16_t *scales; /* [groups, out] */
	int32_t *g_idx;  /* [in] */
	int32_t *qweight, *qzeros;
} packed;

static void make_packed(packed *p, uint64_t *seed)
{
	int64_t maxq = (1 << p->bits) - 1;

	p->groups = (p->in + p->gs - 1) / p->gs;
	p->codes = malloc((size_t)(p->out * p->in));
	p->zeros = malloc((size_t)(p->groups * p->out));
	p->scales = malloc((size_t)(p->groups * p->out) * 2);
	p->g_idx = malloc((size_t)p->in * 4);
	p->qweight = malloc((size_t)(p->in * p->bits / 32 * p->out) * 4);
	p->qzeros = malloc((size_t)(p->groups * p->out * p->bits / 32) * 4);
	for (int64_t i = 0; i < p->out * p->in; i++)
		p->codes[i] = (uint8_t)(check_rand(seed) % (uint64_t)(maxq + 1));
	for (int64_t i = 0; i < p->groups * p->out; i++) {
		p->zeros[i] = (uint8_t)(1 + check_rand(seed) % (uint64_t)maxq);
		p->scales[i] = gq_f32_to_f16(0.01f + 0.02f * (check_randf(seed) + 1));
	}
	for (int64_t i = 0; i < p->in; i++)
		p->g_idx[i] = (int32_t)(i / p->gs);
	if (p->act_order) /* shuffle: any column in any group */
		for (int64_t i = p->in - 1; i > 0; i--) {
			int64_t j = (int64_t)(check_rand(seed) % (uint64_t)(i + 1));
			int32_t t = p->g_idx[i];

			p->g_idx[i] = p->g_idx[j];
			p->g_idx[j] = t;
		}
	gq_pack_qweight(p->codes, p->out, p->in, p->bits, p->qweight);
	CHECK_OK(gq_pack_qzeros(p->zeros, p->groups, p->out, p->bits, p->fmt, p->qzeros));
}

static void free_packed(packed *p)
{
	free(p->codes);
	free(p->zeros);
	free(p->scales);
	free(p->g_idx);
	free(p->qweight);
	free(p->qzeros);
}

static double rel(const float *a, const float *b, int64_t n)
{
	double num = 0, den = 0;

	for (int64_t i = 0; i < n; i++) {
		num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
		den += (double)b[i] * b[i];
	}
	return sqrt(num / (den > 0 ? den : 1));
}

static void test_all_widths_formats_orders(void)
{
	static const int widths[] = {2, 3, 4, 8};
	uint64_t seed = 17;
	gq_pool *pool;

	CHECK_OK(gq_pool_create(&pool, 2));
	/* 320 rows: more than one prefill block of 256 */
	for (int w = 0; w < 8; w++)
		for (int act = 0; act < 2; act++)
			for (int fmt = 0; fmt < 2; fmt++) {
				packed p = {.bits = widths[w % 4], .in = 256, .out = w < 4 ? 96 : 320, .gs = 64,
					    .act_order = act, .fmt = (gq_ckpt_format)fmt};
				gq_qmat q;
				float *W, *ref, *x, *y, *yr, *Y, *YR;

				make_packed(&p, &seed);
				CHECK_OK(gq_qmat_from_gptq(&q, "t", p.bits, p.in, p.out, p.groups, p.gs, p.qweight,
							   p.qzeros, p.fmt, p.scales, p.g_idx));
				W = malloc((size_t)(p.out * p.in) * sizeof *W);
				ref = malloc((size_t)(p.out * p.in) * sizeof *ref);
				gq_qmat_dequant(&q, W);
				for (int64_t o = 0; o < p.out; o++)
					for (int64_t i = 0; i < p.in; i++) {
						int64_t g = p.g_idx[i];

						ref[o * p.in + i] = gq_f16_to_f32(p.scales[g * p.out + o]) *
								    ((float)p.codes[o * p.in + i] - p.zeros[g * p.out + o]);
					}
				CHECK(memcmp(W, ref, (size_t)(p.out * p.in) * sizeof *W) == 0);
				CHECK((q.perm != NULL) == act);

				/* GEMV variants against the element-wise reference */
				x = malloc(9 * (size_t)p.in * sizeof *x);
				y = malloc(9 * (size_t)p.out * sizeof *y);
				yr = malloc(9 * (size_t)p.out * sizeof *yr);
				for (int64_t i = 0; i < 9 * p.in; i++)
					x[i] = check_randf(&seed);
				gq_qgemv_ref(&q.k, x, yr, 0, p.out);
				for (int v = 0; v <= gq_qgemv_best(p.bits); v++) {
					float *xs = malloc((size_t)(p.in + p.groups) * sizeof *xs), *xsum = xs + p.in;

					for (int64_t k = 0; k < p.in; k++)
						xs[k] = x[q.perm ? q.perm[k] : k];
					for (int64_t g = 0; g < p.groups; g++) {
						xsum[g] = 0;
						for (int64_t k = q.gstart[g]; k < q.gstart[g + 1]; k++)
							xsum[g] += xs[k];
					}
					memset(y, 0xff, (size_t)p.out * sizeof *y); /* poison */
					gq_qgemv_variant(v, &q.k, xs, xsum, y, 0, p.out);
					double e = rel(y, yr, p.out);
					if (!(e < 1e-5))
						fprintf(stderr, "  %d bits act %d fmt %d %s: %.3g\n", p.bits, act, fmt,
							gq_qgemv_variant_name(v), e);
					CHECK(e < 1e-5);
					/* an odd row range: the two-row kernels' last row alone */
					memset(y, 0xff, (size_t)p.out * sizeof *y);
					gq_qgemv_variant(v, &q.k, xs, xsum, y, 1, p.out);
					CHECK(rel(y + 1, yr + 1, p.out - 1) < 1e-5);
					free(xs);
				}
				/* matmul: GEMV path (T <= 4) and dequantize + sgemm (T > 4) */
				for (int T = 1; T <= 9; T += 8) {
					Y = y;
					YR = yr;
					CHECK_OK(gq_qmat_matmul(&q, x, T, Y, pool));
					cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, (int)p.out, (int)p.in,
						    1.0f, x, (int)p.in, ref, (int)p.in, 0.0f, YR, (int)p.out);
					CHECK(rel(Y, YR, T * p.out) < 1e-5);
				}
				free(W);
				free(ref);
				free(x);
				free(y);
				free(yr);
				gq_qmat_free(&q);
				free_packed(&p);
			}
	gq_pool_free(pool);
}

static void test_bad_g_idx(void)
{
	uint64_t seed = 3;
	packed p = {.bits = 4, .in = 64, .out = 32, .gs = 32, .fmt = GQ_FORMAT_GPTQ};
	gq_qmat q;

	make_packed(&p, &seed);
	p.g_idx[5] = 7;
	CHECK_ERR(gq_qmat_from_gptq(&q, "m.q_proj", 4, 64, 32, p.groups, 32, p.qweight, p.qzeros,
				    p.fmt, p.scales, p.g_idx),
		  GQ_ERR_FORMAT, "m.q_proj: g_idx[5] = 7 outside [0, 2)");
	/* 60 columns of 4 bits: no whole words, so no [in * bits / 32, out] qweight */
	CHECK_ERR(gq_qmat_from_gptq(&q, "m.q_proj", 4, 60, 32, p.groups, 32, p.qweight, p.qzeros,
				    p.fmt, p.scales, NULL),
		  GQ_ERR_FORMAT, "m.q_proj: 60 columns of 4 bits are not whole 32-bit words");
	free_packed(&p);
}

static void count_task(void *ctx, int i)
{
	__atomic_add_fetch(&((int *)ctx)[i], 1, __ATOMIC_RELAXED);
}

/* Every task runs exactly once per job, across many back-to-back jobs. */
static void test_pool(void)
{
	gq_pool *pool;
	int hits[1000] = {0};

	CHECK_OK(gq_pool_create(&pool, 4));
	for (int rep = 0; rep < 200; rep++)
		gq_pool_run(pool, 1000 - rep, count_task, hits);
	int ok = 1;
	for (int i = 0; i < 1000; i++)
		ok &= hits[i] == (i < 801 ? 200 : 1000 - i);
	CHECK(ok);
	gq_pool_free(pool);
}

/*
 * Many tiny jobs back to back on more threads than tasks, where workers
 * often wake after the caller has run a whole job alone: each task still
 * runs exactly once, and no job waits for a task nobody will run (a hang
 * fails the test through the alarm). A worker that joined a finished job
 * late used to take a task of the next one and lose its count: an eval on
 * 16 cores hung that way.
 */
static void test_pool_tiny_jobs(void)
{
	enum { JOBS = 200000, THREADS = 16 };
	gq_pool *pool;
	int hits[4] = {0}, want[4] = {0};

	CHECK_OK(gq_pool_create(&pool, THREADS));
	alarm(120);
	for (int rep = 0; rep < JOBS; rep++) {
		gq_pool_run(pool, 2 + rep % 3, count_task, hits);
		for (int i = 0; i < 2 + rep % 3; i++)
			want[i]++;
	}
	alarm(0);
	CHECK(memcmp(hits, want, sizeof hits) == 0);
	gq_pool_free(pool);
}

/* The decoding GEMV for dense weights against its double-precision reference. */
static void test_sgemv_rows(void)
{
	enum { OUT = 77, IN = 301 };
	float *W = malloc(sizeof(float) * OUT * IN), x[IN], y[OUT], yr[OUT];
	uint64_t seed = 5;

	for (int i = 0; i < OUT * IN; i++)
		W[i] = check_randf(&seed);
	for (int i = 0; i < IN; i++)
		x[i] = check_randf(&seed);
	gq_sgemv_rows_ref(W, IN, x, yr, 0, OUT);
	memset(y, 0xff, sizeof y);
	gq_sgemv_rows(W, IN, x, y, 3, OUT);
	CHECK(rel(y + 3, yr + 3, OUT - 3) < 1e-6);
	free(W);
}

int main(void)
{
	RUN(test_all_widths_formats_orders);
	RUN(test_bad_g_idx);
	RUN(test_pool);
	RUN(test_pool_tiny_jobs);
	RUN(test_sgemv_rows);
	return check_done();
}
