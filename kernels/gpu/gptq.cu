/*
 * gptq.cu - the GPTQ solve of one linear layer on the GPU, fp32 throughout,
 * step for step the fast CPU solver in lib/gptq.c (which it is tested
 * against): same preparation order, same block-start snapshot for group
 * parameters, same round half to even.
 *
 *   dead columns, row / static group parameters, act-order gather: small kernels
 *   Hinv = upper Cholesky factor of (H + damp mean(diag) I)⁻¹: cuSOLVER potrf
 *          and trtri of the order-reversed matrix, no inverse formed (at
 *          damped_hinv), damp x1.25 on failure
 *   per block of B columns [i1, i2):
 *     gptq_block_kernel: one warp per row, ROWS_PER_CTA rows per thread block;
 *       the block of Hinv [B, B] and the rows' block of W [rows, B] in shared
 *       memory (both in global memory when B is too large for shared memory);
 *       column i: every lane computes the same code and error, lanes split the
 *       update of columns i+1..B of the row; errors overwrite the consumed
 *       columns and leave as Err [rows, B]
 *     W[:, i2:] -= Err · Hinv[i1:i2, i2:]: cuBLAS sgemm (default math mode:
 *       plain fp32, no TF32)
 *
 * The products that the CPU rounds separately are written __fmul_rn so that
 * nvcc does not contract them into FMAs: codes then differ from the CPU's
 * only where the Cholesky and sgemm summation orders move a value across a
 * rounding boundary.
 */
#include "gpu/blas.h"
#include "gpu/gpu.h"
#include "util.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define ROWS_PER_CTA 16 /* warps per thread block of the column loop, one row each */
#define MSE_GRID 100    /* the clipping search, as lib/gptq.c */
#define MSE_MAXSHRINK 0.8
#define MSE_NORM 2.4f
#define MAX_DAMP_RETRIES 40

/* ---- the quantizer, one warp per row segment ---- */

struct qcfg {
	float maxq;
	int sym, mse;
};

__device__ __forceinline__ float qcode(float x, float s, float z, float maxq)
{
	float q = rintf(x / s) + z;

	return q < 0 ? 0 : q > maxq ? maxq : q;
}

/*
 * Scale and zero of x[0..n) (find_params_f in lib/gptq.c), the same on
 * every lane. Min and max reduce over lanes (exact in any order); the MSE
 * search gives each lane whole grid points, summed in the CPU's order, and
 * keeps the first of equal errors as the CPU does.
 */
__device__ void find_params_warp(const float *x, int64_t n, qcfg c, float *scale, float *zero)
{
	const int lane = threadIdx.x & 31;
	float xmin = 0, xmax = 0;

	for (int64_t k = lane; k < n; k += 32) {
		xmin = fminf(xmin, x[k]);
		xmax = fmaxf(xmax, x[k]);
	}
	for (int d = 16; d; d >>= 1) {
		xmin = fminf(xmin, __shfl_xor_sync(0xffffffffu, xmin, d));
		xmax = fmaxf(xmax, __shfl_xor_sync(0xffffffffu, xmax, d));
	}
	if (c.sym) {
		xmax = fabsf(xmin) > xmax ? fabsf(xmin) : xmax;
		if (xmin < 0)
			xmin = -xmax;
	}
	if (xmin == 0 && xmax == 0) {
		xmin = -1;
		xmax = 1;
	}
	float s = (xmax - xmin) / c.maxq, z = c.sym ? (c.maxq + 1) / 2 : rintf(-xmin / s);

	if (c.mse) {
		float best = INFINITY;
		int best_i = INT_MAX;

		for (int i = lane; i < (int)(MSE_MAXSHRINK * MSE_GRID); i += 32) {
			float p = 1.0f - (float)i / MSE_GRID, xmin1 = __fmul_rn(p, xmin);
			float xmax1 = __fmul_rn(p, xmax), s1 = (xmax1 - xmin1) / c.maxq;
			float z1 = c.sym ? z : rintf(-xmin1 / s1), err = 0;

			for (int64_t k = 0; k < n; k++) {
				float v = x[k];

				err += powf(fabsf(__fmul_rn(s1, qcode(v, s1, z1, c.maxq) - z1) - v), MSE_NORM);
			}
			if (err < best) {
				best = err;
				best_i = i;
			}
		}
		for (int d = 16; d; d >>= 1) {
			float ob = __shfl_xor_sync(0xffffffffu, best, d);
			int oi = __shfl_xor_sync(0xffffffffu, best_i, d);

			if (ob < best || (ob == best && oi < best_i)) {
				best = ob;
				best_i = oi;
			}
		}
		if (best_i != INT_MAX) {
			float p = 1.0f - (float)best_i / MSE_GRID, xmin1 = __fmul_rn(p, xmin);
			float xmax1 = __fmul_rn(p, xmax);

			s = (xmax1 - xmin1) / c.maxq;
			z = c.sym ? z : rintf(-xmin1 / s);
		}
	}
	*scale = s;
	*zero = z;
}

/*
 * scale, zero [n_groups, rows] from W [rows, cols] (row stride cols): one
 * warp per (row, group) of gs columns (the whole row when gs < 0).
 */
__global__ static void params_kernel(const float *__restrict__ W, int64_t rows, int64_t cols,
				     int64_t gs, int64_t n_groups, qcfg c, float *scale, float *zero)
{
	int64_t task = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
	int64_t r = task % rows, g = task / rows;

	if (g >= n_groups)
		return;
	int64_t c0 = gs > 0 ? g * gs : 0, n = gs > 0 ? (cols - c0 < gs ? cols - c0 : gs) : cols;
	float s, z;

	find_params_warp(W + r * cols + c0, n, c, &s, &z);
	if ((threadIdx.x & 31) == 0) {
		scale[g * rows + r] = s;
		zero[g * rows + r] = z;
	}
}

/* W[:, c] = 0 for the dead columns (dead [cols]: H[c][c] was 0). */
__global__ static void dead_cols_kernel(float *W, const uint8_t *dead, int64_t rows, int64_t cols)
{
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < rows * cols;
	     i += (int64_t)gridDim.x * blockDim.x)
		if (dead[i % cols])
			W[i] = 0;
}

/* H[c][c] = 1 where it is 0 (a dead column). */
__global__ static void dead_diag_kernel(float *H, int64_t n)
{
	for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < n;
	     c += (int64_t)gridDim.x * blockDim.x)
		if (H[c * (n + 1)] == 0)
			H[c * (n + 1)] = 1;
}

/* dst [n2] = src read backwards (dst != src): an n x n matrix's J A J, in either storage order. */
__global__ static void reverse_kernel(float *__restrict__ dst, const float *__restrict__ src, int64_t n2)
{
	for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n2;
	     k += (int64_t)gridDim.x * blockDim.x)
		dst[k] = src[n2 - 1 - k];
}

/* a [n2] read backwards, in place. */
__global__ static void reverse_in_place_kernel(float *a, int64_t n2)
{
	for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n2 / 2;
	     k += (int64_t)gridDim.x * blockDim.x) {
		float t = a[k];

		a[k] = a[n2 - 1 - k];
		a[n2 - 1 - k] = t;
	}
}

/* H[c][c] += add, in double then rounded, as the CPU. */
__global__ static void damp_kernel(float *H, int64_t n, double add)
{
	for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < n;
	     c += (int64_t)gridDim.x * blockDim.x)
		H[c * (n + 1)] = (float)(H[c * (n + 1)] + add);
}

/* dst [rows, cols] = src[:, perm] (rows_perm = 0), or src[perm][:, perm] for a square src. */
__global__ static void gather_kernel(float *__restrict__ dst, const float *__restrict__ src,
				     int64_t rows, int64_t cols, const int32_t *__restrict__ perm,
				     int rows_perm)
{
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < rows * cols;
	     i += (int64_t)gridDim.x * blockDim.x) {
		int64_t r = i / cols, c = i % cols;

		dst[i] = src[(rows_perm ? perm[r] : r) * cols + perm[c]];
	}
}

/* dst [rows, cols] = src[:, pos] for bytes: codes solved in act order back to their columns. */
__global__ static void unpermute_codes_kernel(uint8_t *__restrict__ dst, const uint8_t *__restrict__ src,
					      int64_t rows, int64_t cols, const int32_t *__restrict__ pos)
{
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < rows * cols;
	     i += (int64_t)gridDim.x * blockDim.x)
		dst[i] = src[i / cols * cols + pos[i % cols]];
}

/* ---- the column loop of one block ---- */

struct block_args {
	const float *W;       /* [rows, cols] permuted, as of this block's start */
	const float *Hinv;    /* [cols, cols] upper (row-major) */
	float *W1;            /* [rows, cnt] global block copy, when not in shared memory */
	float *Err;           /* [rows, cnt] out */
	uint8_t *codes;       /* [rows, cols] permuted column order */
	float *scale, *zero;  /* [n_groups, rows] */
	const int32_t *perm;  /* [cols] or NULL */
	double *loss;         /* [rows] accumulated Σ err² */
	int64_t rows, cols, i1, gs;
	int cnt, in_shared, static_groups;
	qcfg c;
};

__global__ static void __launch_bounds__(ROWS_PER_CTA * 32) gptq_block_kernel(block_args a)
{
	extern __shared__ float smem[];
	const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, cnt = a.cnt;
	const int64_t r = (int64_t)blockIdx.x * ROWS_PER_CTA + warp, cols = a.cols;
	const float *h;
	float *w1;
	int64_t ldh;

	if (a.in_shared) {
		/* the block's upper triangle; the rest is never read */
		for (int idx = threadIdx.x; idx < cnt * cnt; idx += blockDim.x) {
			int i = idx / cnt, k = idx % cnt;

			if (k >= i)
				smem[idx] = a.Hinv[(a.i1 + i) * cols + a.i1 + k];
		}
		h = smem;
		ldh = cnt;
		w1 = smem + cnt * cnt + warp * cnt;
	} else {
		h = a.Hinv + a.i1 * cols + a.i1;
		ldh = cols;
		w1 = a.W1 + r * cnt;
	}
	__syncthreads();
	if (r >= a.rows)
		return;
	const float *wrow = a.W + r * cols;
	for (int k = lane; k < cnt; k += 32)
		w1[k] = wrow[a.i1 + k];
	__syncwarp();

	const int64_t gs = a.gs, rows = a.rows;
	float cs = 0, cz = 0; /* the group in progress (lazy groups) */
	double loss = 0;

	if (gs > 0 && !a.static_groups && a.i1 % gs) {
		cs = a.scale[(a.i1 / gs) * rows + r];
		cz = a.zero[(a.i1 / gs) * rows + r];
	}
	for (int i = 0; i < cnt; i++) {
		const int64_t col = a.i1 + i;
		float s, z;

		if (gs > 0 && !a.static_groups) {
			if (col % gs == 0) {
				find_params_warp(wrow + col, cols - col < gs ? cols - col : gs, a.c, &cs, &cz);
				if (lane == 0) {
					a.scale[(col / gs) * rows + r] = cs;
					a.zero[(col / gs) * rows + r] = cz;
				}
			}
			s = cs;
			z = cz;
		} else if (gs > 0) {
			int64_t g = (a.perm ? a.perm[col] : col) / gs;

			s = a.scale[g * rows + r];
			z = a.zero[g * rows + r];
		} else {
			s = a.scale[r];
			z = a.zero[r];
		}
		float w = w1[i], q = qcode(w, s, z, a.c.maxq);
		float err = (w - __fmul_rn(s, q - z)) / h[i * ldh + i];

		if (lane == 0) {
			a.codes[r * cols + col] = (uint8_t)q;
			loss += (double)err * err;
		}
		/* the rest of the block absorbs this column's error */
		for (int k = i + 1 + lane; k < cnt; k += 32)
			w1[k] -= __fmul_rn(err, h[i * ldh + k]);
		__syncwarp();
		if (lane == 0)
			w1[i] = err;
		__syncwarp();
	}
	for (int k = lane; k < cnt; k += 32)
		a.Err[r * cnt + k] = w1[k];
	if (lane == 0)
		a.loss[r] += loss;
}

/* ---- the host side ---- */

static int cu(cudaError_t e, const char *what)
{
	return e == cudaSuccess ? GQ_OK : gq_err(GQ_ERR_IO, "%s failed: %s", what, cudaGetErrorString(e));
}

static int sv(cusolverStatus_t st, const char *what)
{
	return st == CUSOLVER_STATUS_SUCCESS ? GQ_OK : gq_err(GQ_ERR_IO, "%s failed: status %d", what, (int)st);
}

#define CU(call) do { if ((rc = cu((call), #call))) goto out; } while (0)
#define SV(call) do { if ((rc = sv((call), #call))) goto out; } while (0)
#define LAUNCHED(name) do { if ((rc = cu(cudaGetLastError(), name " launch"))) goto out; } while (0)

static unsigned grid_for(int64_t n)
{
	int64_t b = CEIL_DIV(n, 256);

	return (unsigned)(b > 65535 * 8 ? 65535 * 8 : b < 1 ? 1 : b);
}

/*
 * dHinv = upper factor of (dH + damp mean I)⁻¹ (dH [n, n] untouched), raising
 * damp x1.25 while a factorisation fails, as damped_hinv_f in lib/gptq.c.
 *
 * Without forming the inverse: with J the order reversal, J A J = Rᵀ R
 * (Cholesky, R upper) gives A⁻¹ = M Mᵀ with M = J R⁻¹ J lower, the factor
 * sought (row-major upper Mᵀ is column-major lower M). potrf and trtri cost
 * n³/3 each, against potrf, potri (trtri and lauum) and potrf again; and J X J
 * of a matrix stored either way is its storage read backwards.
 */
static int damped_hinv(cusolverDnHandle_t solver, const float *dH, float *dHinv, int64_t n,
		       double mean, double damp0, double *damp_used, int *retries)
{
	float *work = NULL;        /* [lwork] potrf's */
	void *twork = NULL, *htwork = NULL; /* trtri's, on the device and the host */
	size_t tbytes = 0, htbytes = 0;
	int *dinfo = NULL, lwork = 0, info = 0, rc = GQ_OK, ok = 0;
	double damp = damp0;
	const int ni = (int)n;
	const int64_t n2 = n * n;

	CU(cudaMalloc(&dinfo, sizeof *dinfo));
	SV(cusolverDnSpotrf_bufferSize(solver, CUBLAS_FILL_MODE_UPPER, ni, dHinv, ni, &lwork));
	SV(cusolverDnXtrtri_bufferSize(solver, CUBLAS_FILL_MODE_UPPER, CUBLAS_DIAG_NON_UNIT, n,
				       CUDA_R_32F, dHinv, n, &tbytes, &htbytes));
	CU(cudaMalloc(&work, (size_t)(lwork > 0 ? lwork : 1) * sizeof *work));
	CU(cudaMalloc(&twork, tbytes ? tbytes : 1));
	if (!(htwork = malloc(htbytes ? htbytes : 1))) {
		rc = gq_err(GQ_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (int attempt = 0; attempt <= MAX_DAMP_RETRIES; attempt++) {
		if (attempt) {
			gq_debug("cholesky failed at damp %g, retrying at %g", damp, damp * 1.25);
			damp *= 1.25;
		}
		reverse_kernel<<<grid_for(n2), 256>>>(dHinv, dH, n2);
		LAUNCHED("reverse_kernel");
		damp_kernel<<<grid_for(n), 256>>>(dHinv, n, damp * mean);
		LAUNCHED("damp_kernel");
		SV(cusolverDnSpotrf(solver, CUBLAS_FILL_MODE_UPPER, ni, dHinv, ni, work, lwork, dinfo));
		CU(cudaMemcpy(&info, dinfo, sizeof info, cudaMemcpyDeviceToHost));
		if (info == 0) {
			SV(cusolverDnXtrtri(solver, CUBLAS_FILL_MODE_UPPER, CUBLAS_DIAG_NON_UNIT, n,
					    CUDA_R_32F, dHinv, n, twork, tbytes, htwork, htbytes, dinfo));
			CU(cudaMemcpy(&info, dinfo, sizeof info, cudaMemcpyDeviceToHost));
		}
		if (info == 0) {
			reverse_in_place_kernel<<<grid_for(n2 / 2), 256>>>(dHinv, n2);
			LAUNCHED("reverse_in_place_kernel");
			ok = 1;
			*damp_used = damp;
			*retries = attempt;
			break;
		}
		if (!(mean > 0) || !isfinite(mean))
			break;
	}
	if (!ok)
		rc = gq_err(GQ_ERR_NUMERIC, "Hessian is not positive definite even at damp %g", damp);
out:
	cudaFree(work);
	cudaFree(twork);
	free(htwork);
	cudaFree(dinfo);
	return rc;
}

struct gq_gpu_hinv {
	int64_t cols;
	float *dHinv;   /* [cols, cols] upper factor (row-major), permuted */
	int32_t *dperm; /* [cols] act order, or NULL */
	int32_t *dpos;  /* [cols] its inverse: column c was solved dpos[c]-th, or NULL */
	uint8_t *ddead; /* [cols] 1 for a dead column */
};

extern "C" void gq_gpu_hinv_free(gq_gpu_hinv *h)
{
	if (!h)
		return;
	cudaFree(h->dHinv);
	cudaFree(h->dperm);
	cudaFree(h->dpos);
	cudaFree(h->ddead);
	free(h);
}

extern "C" int gq_gpu_hinv_prepare(gq_gpu_hinv **out, const float *H, int64_t cols,
				   const uint8_t *dead, const int64_t *perm, double mean, double damp,
				   double *damp_used, int *retries)
{
	gq_gpu_hinv *h = (gq_gpu_hinv *)calloc(1, sizeof *h);
	float *dH = NULL; /* [cols, cols] H, then its permuted, dead-fixed copy */
	int32_t *hperm = NULL; /* [2 cols] perm as the kernels take it, then its inverse */
	cusolverDnHandle_t solver;
	size_t hbytes = (size_t)(cols * cols) * sizeof(float);
	double t0 = gq_now(), t1;
	int rc = GQ_OK;

	*out = NULL;
	if (!h)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	h->cols = cols;
	if (cols > INT_MAX) {
		rc = gq_err(GQ_ERR_UNSUPPORTED, "a %lld-column layer is too large for the GPU solver",
			    (long long)cols);
		goto out;
	}
	if ((rc = gq_gpu_solver(0, &solver)))
		goto out;
	CU(cudaMalloc(&dH, hbytes));
	CU(cudaMalloc(&h->dHinv, hbytes));
	CU(cudaMalloc(&h->ddead, (size_t)cols));
	CU(cudaMemcpy(h->ddead, dead, (size_t)cols, cudaMemcpyHostToDevice));
	CU(cudaMemcpy(dH, H, hbytes, cudaMemcpyHostToDevice));
	t1 = gq_now();
	dead_diag_kernel<<<grid_for(cols), 256>>>(dH, cols);
	LAUNCHED("dead_diag_kernel");
	if (perm) {
		if (!(hperm = (int32_t *)malloc((size_t)(2 * cols) * sizeof *hperm))) {
			rc = gq_err(GQ_ERR_NOMEM, "out of memory");
			goto out;
		}
		for (int64_t c = 0; c < cols; c++) {
			hperm[c] = (int32_t)perm[c];
			hperm[cols + perm[c]] = (int32_t)c;
		}
		CU(cudaMalloc(&h->dperm, (size_t)cols * sizeof *h->dperm));
		CU(cudaMalloc(&h->dpos, (size_t)cols * sizeof *h->dpos));
		CU(cudaMemcpy(h->dperm, hperm, (size_t)cols * sizeof *h->dperm, cudaMemcpyHostToDevice));
		CU(cudaMemcpy(h->dpos, hperm + cols, (size_t)cols * sizeof *h->dpos,
			      cudaMemcpyHostToDevice));
		/* through dHinv, which damped_hinv overwrites from dH */
		gather_kernel<<<grid_for(cols * cols), 256>>>(h->dHinv, dH, cols, cols, h->dperm, 1);
		LAUNCHED("gather_kernel");
		CU(cudaMemcpy(dH, h->dHinv, hbytes, cudaMemcpyDeviceToDevice));
	}
	if ((rc = damped_hinv(solver, dH, h->dHinv, cols, mean, damp, damp_used, retries)))
		goto out;
	gq_debug("gpu hinv %lld x %lld: copy in %.1f ms, preparation and Hinv %.1f ms",
		 (long long)cols, (long long)cols, 1e3 * (t1 - t0), 1e3 * (gq_now() - t1));
out:
	cudaFree(dH);
	free(hperm);
	if (rc)
		gq_gpu_hinv_free(h);
	else
		*out = h;
	return rc;
}

extern "C" int gq_gpu_gptq(const gq_gpu_hinv *h, const float *W, int64_t rows,
			   const gq_gptq_opts *o, uint8_t *codes, float *scale, float *zero,
			   double *loss)
{
	const int64_t B = o->block > 0 ? o->block : 128, gs = o->group_size, cols = h->cols;
	const int64_t ng = gs > 0 ? CEIL_DIV(cols, gs) : 1;
	const qcfg qc = {(float)((1 << o->bits) - 1), o->sym, o->mse};
	float *dW = NULL, *dT = NULL, *dErr = NULL, *dW1 = NULL, *dscale = NULL, *dzero = NULL;
	double *dloss = NULL, *rloss = NULL;
	uint8_t *dcodes = NULL; /* [rows, cols] in the order solved */
	uint8_t *dout = NULL;   /* [rows, cols] back in column order (act order only) */
	int rc = GQ_OK, dev = 0, smax = 0;
	cublasHandle_t blas;
	double t0, t1, t2; /* phase times for -v */
	size_t wbytes = (size_t)(rows * cols) * sizeof(float);

	if (rows > INT_MAX || B > INT_MAX)
		return gq_err(GQ_ERR_UNSUPPORTED, "a %lld x %lld layer is too large for the GPU solver",
			      (long long)rows, (long long)cols);
	/* the solve runs on the default stream */
	if ((rc = gq_gpu_blas(0, &blas)))
		return rc;
	CU(cudaGetDevice(&dev));
	CU(cudaDeviceGetAttribute(&smax, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
	CU(cudaMalloc(&dW, wbytes));
	CU(cudaMalloc(&dT, wbytes));
	CU(cudaMalloc(&dErr, (size_t)(rows * B) * sizeof *dErr));
	CU(cudaMalloc(&dscale, (size_t)(ng * rows) * sizeof *dscale));
	CU(cudaMalloc(&dzero, (size_t)(ng * rows) * sizeof *dzero));
	CU(cudaMalloc(&dloss, (size_t)rows * sizeof *dloss));
	CU(cudaMemset(dloss, 0, (size_t)rows * sizeof *dloss));
	CU(cudaMalloc(&dcodes, (size_t)(rows * cols)));
	t0 = gq_now();
	CU(cudaMemcpy(dT, W, wbytes, cudaMemcpyHostToDevice));
	/* the preparation of W, in the CPU's order */
	if (gs < 0) {
		/* per-row parameters come from W before dead columns are zeroed, as AutoGPTQ */
		params_kernel<<<(unsigned)CEIL_DIV(rows * 32, 256), 256>>>(dT, rows, cols, gs, 1, qc,
									   dscale, dzero);
		LAUNCHED("params_kernel");
	}
	dead_cols_kernel<<<grid_for(rows * cols), 256>>>(dT, h->ddead, rows, cols);
	LAUNCHED("dead_cols_kernel");
	if (o->static_groups) {
		params_kernel<<<(unsigned)CEIL_DIV(ng * rows * 32, 256), 256>>>(dT, rows, cols, gs, ng,
										 qc, dscale, dzero);
		LAUNCHED("params_kernel");
	}
	if (h->dperm) {
		gather_kernel<<<grid_for(rows * cols), 256>>>(dW, dT, rows, cols, h->dperm, 0);
		LAUNCHED("gather_kernel");
	} else {
		float *t = dW;

		dW = dT;
		dT = t;
	}
	t1 = gq_now();

	/* both blocks in shared memory when they fit, else the kernel reads global memory */
	{
		size_t sh = (size_t)(B * B + ROWS_PER_CTA * B) * sizeof(float);
		int in_shared = sh <= (size_t)smax;

		if (in_shared && sh > 48 * 1024)
			CU(cudaFuncSetAttribute(gptq_block_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
						(int)sh));
		if (!in_shared) {
			sh = 0;
			CU(cudaMalloc(&dW1, (size_t)(rows * B) * sizeof *dW1));
		}
		for (int64_t i1 = 0; i1 < cols; i1 += B) {
			int64_t i2 = i1 + B < cols ? i1 + B : cols, cnt = i2 - i1;
			block_args a = {dW, h->dHinv, dW1, dErr, dcodes, dscale, dzero, h->dperm, dloss,
					rows, cols, i1, gs, (int)cnt, in_shared, o->static_groups, qc};
			size_t shb = in_shared ? (size_t)(cnt * cnt + ROWS_PER_CTA * cnt) * sizeof(float) : 0;
			const float minus1 = -1.0f, one = 1.0f;
			cublasStatus_t st;

			gptq_block_kernel<<<(unsigned)CEIL_DIV(rows, ROWS_PER_CTA), ROWS_PER_CTA * 32, shb>>>(a);
			LAUNCHED("gptq_block_kernel");
			if (i2 == cols)
				break;
			/* column-major view of W[:, i2:] -= Err · Hinv[i1:i2, i2:] (row-major) */
			st = cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)(cols - i2), (int)rows, (int)cnt,
					 &minus1, h->dHinv + i1 * cols + i2, (int)cols, dErr, (int)cnt, &one,
					 dW + i2, (int)cols);
			if (st != CUBLAS_STATUS_SUCCESS) {
				rc = gq_err(GQ_ERR_IO, "cublasSgemm failed: %s", cublasGetStatusString(st));
				goto out;
			}
		}
	}
	if (h->dpos) {
		CU(cudaMalloc(&dout, (size_t)(rows * cols)));
		unpermute_codes_kernel<<<grid_for(rows * cols), 256>>>(dout, dcodes, rows, cols, h->dpos);
		LAUNCHED("unpermute_codes_kernel");
	}
	CU(cudaDeviceSynchronize());
	t2 = gq_now();
	if (!(rloss = (double *)malloc((size_t)rows * sizeof *rloss))) {
		rc = gq_err(GQ_ERR_NOMEM, "out of memory");
		goto out;
	}
	CU(cudaMemcpy(codes, dout ? dout : dcodes, (size_t)(rows * cols), cudaMemcpyDeviceToHost));
	CU(cudaMemcpy(scale, dscale, (size_t)(ng * rows) * sizeof *scale, cudaMemcpyDeviceToHost));
	CU(cudaMemcpy(zero, dzero, (size_t)(ng * rows) * sizeof *zero, cudaMemcpyDeviceToHost));
	CU(cudaMemcpy(rloss, dloss, (size_t)rows * sizeof *rloss, cudaMemcpyDeviceToHost));
	*loss = 0;
	for (int64_t r = 0; r < rows; r++)
		*loss += rloss[r] / 2;
	gq_debug("gpu solve %lld x %lld: copy in and preparation %.1f ms, column loop %.1f ms, "
		 "copy out %.1f ms", (long long)rows, (long long)cols, 1e3 * (t1 - t0),
		 1e3 * (t2 - t1), 1e3 * (gq_now() - t2));
out:
	cudaFree(dW);
	cudaFree(dT);
	cudaFree(dErr);
	cudaFree(dW1);
	cudaFree(dscale);
	cudaFree(dzero);
	cudaFree(dloss);
	cudaFree(dcodes);
	cudaFree(dout);
	free(rloss);
	return rc;
}
