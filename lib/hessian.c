/*
 * hessian.c - Hessian accumulation with OpenBLAS ssyrk and its reference.
 */
#include "hessian.h"
#include "pool.h"
#include "util.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int gq_hessian_init(gq_hessian *h, int64_t n)
{
	h->n = n;
	h->nsamples = 0;
	h->sum = calloc((size_t)(n * n), sizeof *h->sum);
	if (!h->sum)
		return gq_err(GQ_ERR_NOMEM, "out of memory for a %lld x %lld Hessian", (long long)n,
			      (long long)n);
	return GQ_OK;
}

void gq_hessian_free(gq_hessian *h)
{
	free(h->sum);
	h->sum = NULL;
}

int gq_hessian_add(gq_hessian *h, const float *x, int64_t rows, const uint8_t *mask)
{
	const float *src = x;
	float *packed = NULL;
	int64_t k = rows;

	if (mask) {
		/* gather the real tokens so one syrk covers them */
		k = 0;
		for (int64_t r = 0; r < rows; r++)
			k += mask[r] != 0;
		if (k < rows) {
			packed = malloc((size_t)((k ? k : 1) * h->n) * sizeof *packed);
			if (!packed)
				return gq_err(GQ_ERR_NOMEM, "out of memory");
			for (int64_t r = 0, j = 0; r < rows; r++)
				if (mask[r])
					memcpy(packed + (j++) * h->n, x + r * h->n, (size_t)h->n * sizeof *x);
			src = packed;
		}
	}
	if (k > 0)
		cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, (int)h->n, (int)k, 1.0f, src,
			    (int)h->n, 1.0f, h->sum, (int)h->n);
	h->nsamples += k;
	free(packed);
	return GQ_OK;
}

void gq_hessian_add_ref(double *sum, int64_t n, const float *x, int64_t rows, const uint8_t *mask)
{
	for (int64_t r = 0; r < rows; r++) {
		const float *v = x + r * n;

		if (mask && !mask[r])
			continue;
		for (int64_t i = 0; i < n; i++)
			for (int64_t j = 0; j < n; j++)
				sum[i * n + j] += (double)v[i] * v[j];
	}
}

void gq_hessian_get(const gq_hessian *h, float *out)
{
	gq_sym_from_lower(h->sum, h->n, h->nsamples ? 2.0f / (float)h->nsamples : 0.0f, out);
}

void gq_sym_from_lower(const float *lower, int64_t n, float scale, float *out)
{
	/* 32 x 32 tiles: the column writes stay in cache (3.8x at n = 11008); an
	 * element above the diagonal is never read, so out may be lower */
	for (int64_t i0 = 0; i0 < n; i0 += 32)
		for (int64_t j0 = 0; j0 <= i0; j0 += 32)
			for (int64_t i = i0; i < i0 + 32 && i < n; i++)
				for (int64_t j = j0; j < j0 + 32 && j <= i; j++)
					out[i * n + j] = out[j * n + i] = scale * lower[i * n + j];
}

uint64_t gq_tri_len(int64_t n)
{
	return (uint64_t)n * (uint64_t)(n + 1) / 2;
}

int64_t gq_tri_row(uint64_t k)
{
	/* the root of r (r + 1) / 2 = k, then corrected for its rounding */
	int64_t r = (int64_t)((sqrt(8.0 * (double)k + 1) - 1) / 2);

	while (gq_tri_len(r + 1) <= k)
		r++;
	while (r > 0 && gq_tri_len(r) > k)
		r--;
	return r;
}

int gq_stb_hessian(gq_st_builder *b, const float *H, int64_t n, int packed)
{
	int64_t shape[2] = {n, n}, len = (int64_t)gq_tri_len(n);

	return packed ? gq_stb_tensor(b, "H_lower", GQ_DTYPE_F32, 1, &len, H)
		      : gq_stb_tensor(b, "H", GQ_DTYPE_F32, 2, shape, H);
}

void gq_tri_from_sym(const float *H, int64_t n, float *tri)
{
	/* row i moves down to tri_len(i) <= i n, before any later row is read */
	for (int64_t i = 0; i < n; i++)
		memmove(tri + gq_tri_len(i), H + i * n, (size_t)(i + 1) * sizeof *tri);
}

typedef struct {
	const float *tri;
	int64_t n;
	float *H;
} unfold_job;

enum { UNFOLD_TILE = 32 }; /* 32 x 32 floats: a tile and its mirror stay in L1 */

/* Rows of tile row b of H: their lower parts, copied from tri. */
static void unfold_lower(void *p, int b)
{
	const unfold_job *j = p;
	int64_t n = j->n, i1 = (int64_t)(b + 1) * UNFOLD_TILE < n ? (int64_t)(b + 1) * UNFOLD_TILE : n;

	for (int64_t i = (int64_t)b * UNFOLD_TILE; i < i1; i++)
		memcpy(j->H + i * n, j->tri + gq_tri_len(i), (size_t)(i + 1) * sizeof *j->H);
}

/* Tile row b of H above the diagonal: the mirror of the lower parts, tile by tile. */
static void unfold_upper(void *p, int b)
{
	const unfold_job *j = p;
	int64_t n = j->n, i0 = (int64_t)b * UNFOLD_TILE, i1 = i0 + UNFOLD_TILE < n ? i0 + UNFOLD_TILE : n;
	float *H = j->H;

	for (int64_t k0 = i0; k0 < n; k0 += UNFOLD_TILE)
		for (int64_t i = i0; i < i1; i++)
			for (int64_t k = k0 > i + 1 ? k0 : i + 1; k < k0 + UNFOLD_TILE && k < n; k++)
				H[i * n + k] = H[k * n + i];
}

void gq_sym_from_tri(const float *tri, int64_t n, float *H, int threads)
{
	unfold_job j = {tri, n, H};
	int tiles = (int)((n + UNFOLD_TILE - 1) / UNFOLD_TILE);
	gq_pool *pool = NULL;

	/* the pool hands out tile rows as threads come free: the upper ones shrink */
	if (threads > 1 && tiles > 1 && gq_pool_create(&pool, threads < tiles ? threads : tiles))
		pool = NULL;
	gq_pool_run(pool, tiles, unfold_lower, &j);
	gq_pool_run(pool, tiles, unfold_upper, &j);
	gq_pool_free(pool);
}

/*
 * The frame's H tensor, packed or not, its width, whether it is used where
 * it lies, and the bytes of buf gq_hessian_frame_matrix needs otherwise.
 */
static int frame_h(const gq_frame *f, gq_tensor *t, int *packed, int64_t *dim, int *in_place,
		   uint64_t *need)
{
	*packed = gq_frame_tensor(f, "H", t) != GQ_OK;
	if (*packed && gq_frame_tensor(f, "H_lower", t))
		return gq_frame_err(f, GQ_ERR_FORMAT, "hessian frame has neither H nor H_lower");
	if (!*packed) {
		if (t->ndim != 2 || t->shape[0] != t->shape[1])
			return gq_frame_err(f, GQ_ERR_FORMAT, "H is not a square matrix");
		*dim = t->shape[0];
	} else {
		*dim = t->ndim == 1 ? gq_tri_row((uint64_t)t->shape[0]) : 0;
		if (t->ndim != 1 || gq_tri_len(*dim) != (uint64_t)t->shape[0])
			return gq_frame_err(f, GQ_ERR_FORMAT,
					    "H_lower is not a packed triangle (n (n + 1) / 2 values)");
	}
	if (t->dtype != GQ_DTYPE_F32 && t->dtype != GQ_DTYPE_F16 && t->dtype != GQ_DTYPE_BF16 &&
	    t->dtype != GQ_DTYPE_F64)
		return gq_frame_err(f, GQ_ERR_FORMAT, "%s is %s, not a float type", t->name,
				    gq_dtype_name(t->dtype));
	*in_place = t->dtype == GQ_DTYPE_F32 && (uintptr_t)t->data % sizeof(float) == 0;
	/* whole: converted into buf; packed: unfolded into buf, from a converted copy in its tail */
	*need = !*packed && *in_place ? 0
				      : ((uint64_t)*dim * (uint64_t)*dim +
					 (*packed && !*in_place ? gq_tri_len(*dim) : 0)) *
						sizeof(float);
	return GQ_OK;
}

int gq_hessian_frame_bytes(const gq_frame *f, uint64_t *bytes)
{
	gq_tensor t;
	int packed, in_place;
	int64_t dim;

	return frame_h(f, &t, &packed, &dim, &in_place, bytes);
}

int gq_hessian_frame_matrix(const gq_frame *f, int threads, int64_t *n, const float **H,
			    float **buf, uint64_t *cap)
{
	gq_tensor t;
	int packed, in_place, rc;
	uint64_t need;
	int64_t dim;

	if ((rc = frame_h(f, &t, &packed, &dim, &in_place, &need)))
		return rc;
	*n = dim;
	if (!packed && in_place) {
		*H = (const float *)t.data;
		return GQ_OK;
	}
	if (need > *cap) {
		float *p = realloc(*buf, need ? need : 1);

		if (!p)
			return gq_frame_err(f, GQ_ERR_NOMEM, "out of memory for a %lld x %lld Hessian",
					    (long long)dim, (long long)dim);
		*buf = p;
		*cap = need;
	}
	if (!packed) {
		gq_convert_to_f32_mt(t.dtype, t.data, 0, (uint64_t)(dim * dim), *buf, threads);
	} else {
		const float *tri = (const float *)t.data;

		if (!in_place) {
			float *tail = *buf + dim * dim;

			gq_convert_to_f32_mt(t.dtype, t.data, 0, gq_tri_len(dim), tail, threads);
			tri = tail;
		}
		gq_sym_from_tri(tri, dim, *buf, threads);
	}
	*H = *buf;
	return GQ_OK;
}

void gq_hessian_merge(float *acc, int64_t *acc_n, const float *H, int64_t nsamples, int64_t n)
{
	int64_t total = *acc_n + nsamples;

	if (total == 0)
		return;
	double a = (double)*acc_n / (double)total, b = (double)nsamples / (double)total;
	for (int64_t i = 0; i < n * n; i++)
		acc[i] = (float)(a * acc[i] + b * H[i]);
	*acc_n = total;
}
