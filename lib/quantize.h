/*
 * quantize.h - quantizing one module of a model: its weight from the
 * checkpoint, its Hessian from a frame, GPTQ (or RTN, or the float64
 * reference), and the qlinear record with statistics for the report.
 */
#ifndef GQ_QUANTIZE_H
#define GQ_QUANTIZE_H

#include "device.h"
#include "gptq.h"
#include "model.h"
#include "qlinear.h"
#include "util.h"

typedef struct {
	gq_gptq_opts gptq;
	int rtn;       /* round to nearest instead of GPTQ */
	int reference; /* the float64 unblocked solver */
	int objective; /* compute Σ (W-Q) H (W-Q)ᵀ for the report (needs H) */
	gq_device device; /* where the GPTQ solve runs (RTN and the reference: the CPU) */
} gq_solve_opts;

typedef struct {
	char method[8];   /* what ran: "gptq", or "rtn" (asked for, or no samples reached it) */
	double loss;      /* GPTQ's own loss */
	double objective; /* NaN unless computed */
	double seconds;
	double damp;
	int damp_retries;
	int64_t nsamples;
} gq_solve_stats;

/*
 * Quantizes module `module` of `layer`. H [in, in] from nsamples tokens, or
 * NULL (RTN without a Hessian). A Hessian of zero samples (an MoE expert no
 * token reached) falls back to RTN: GPTQ would zero the whole weight.
 */
int gq_solve_module(const gq_model *m, int layer, int module, const float *H, int64_t nsamples,
		    const gq_solve_opts *o, gq_qlinear *out, gq_solve_stats *st);

/* One JSON object member of the report: "name":{"method":...,"loss":...}. */
void gq_solve_stats_json(const char *name, const gq_solve_stats *st, gq_buf *out);

#endif
