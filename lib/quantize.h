/*
 * quantize.h - quantizing one module of a model: its weight from the
 * checkpoint, its Hessian from a frame, GPTQ (or RTN, or the float64
 * reference), and the qlinear record with statistics for the report.
 */
#ifndef GQ_QUANTIZE_H
#define GQ_QUANTIZE_H

#include "device.h"
#include "gptq.h"
#include "hessian.h"
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
	double weight_seconds; /* of seconds: reading and checking the weight */
	double solver_seconds; /* of seconds: the solver itself */
	double damp;
	int damp_retries;
	int64_t nsamples;
} gq_solve_stats;

/*
 * What solves the modules of one model with one set of options. It reads
 * each module's weight ahead, on a thread, while the module before it
 * solves: the one after it in the model's order (layer by layer, modules in
 * execution order), which is the order Hessians arrive in.
 */
typedef struct gq_solver gq_solver;
int gq_solver_open(gq_solver **s, const gq_model *m, const gq_solve_opts *o);
void gq_solver_close(gq_solver *s);

/*
 * The float32 H [n, n] of a hessian frame (gq_hessian_frame_matrix) in a
 * buffer of the solver's, valid until the next call. When the solve runs on
 * a GPU the buffer is page-locked, so H uploads at the bus's speed.
 */
int gq_solver_hessian(gq_solver *s, const gq_frame *f, int64_t *n, const float **H);

/*
 * H [n, n] of nsamples tokens prepared for GPTQ once for all the modules of
 * one Hessian frame (gq_hinv_prepare, where the options' device says), or
 * *out = NULL where nothing is prepared: RTN, the reference solver, or no
 * samples.
 */
int gq_solve_prepare(const gq_solver *s, const float *H, int64_t n, int64_t nsamples,
		     gq_hinv **out);

/*
 * Quantizes module `module` of `layer`. H [in, in] from nsamples tokens, or
 * NULL (RTN without a Hessian); hinv is H as gq_solve_prepare made it, or
 * NULL to prepare it here. A Hessian of zero samples (an MoE expert no token
 * reached) falls back to RTN: GPTQ would zero the whole weight.
 */
int gq_solve_module(gq_solver *s, int layer, int module, const float *H, const gq_hinv *hinv,
		    int64_t nsamples, gq_qlinear *out, gq_solve_stats *st);

/* One JSON object member of the report: "name":{"method":...,"loss":...}. */
void gq_solve_stats_json(const char *name, const gq_solve_stats *st, gq_buf *out);

#endif
