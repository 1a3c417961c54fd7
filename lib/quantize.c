/*
 * quantize.c - one module from checkpoint weight and Hessian to a qlinear.
 */
#include "quantize.h"
#include "util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int gq_solve_module(const gq_model *m, int layer, int module, const float *H, int64_t nsamples,
		    const gq_solve_opts *o, gq_qlinear *out, gq_solve_stats *st)
{
	const gq_module *md = &m->modules[module];
	char name[GQ_NAME_MAX];
	float *W = NULL;
	gq_quant q;
	double t0 = gq_now();
	int rtn = o->rtn || !H || nsamples == 0, rc;

	memset(st, 0, sizeof *st);
	st->objective = NAN;
	st->nsamples = nsamples;
	gq_module_name(m, layer, module, name, sizeof name);
	if (md->step < 0)
		return gq_err(GQ_ERR_ARG, "%s is not quantized (it stays in full precision)", name);
	rc = gq_module_weight(m, layer, module, &W);
	/*
	 * W is a float32 copy: drop the mapped pages it came from, or a solve over
	 * every module would end with the whole checkpoint resident.
	 */
	gq_layer_release(m, layer);
	if (rc)
		return rc;
	/* a NaN or Inf weight would come out as some code without a word */
	for (int64_t i = 0; i < md->out * md->in; i++)
		if (!isfinite(W[i])) {
			rc = gq_err(GQ_ERR_NUMERIC, "%s: weight [%lld, %lld] is %g", name,
				    (long long)(i / md->in), (long long)(i % md->in), W[i]);
			free(W);
			return rc;
		}
	if (rtn)
		rc = gq_rtn(W, md->out, md->in, &o->gptq, &q);
	else if (o->reference)
		rc = gq_gptq_solve_ref(W, H, md->out, md->in, &o->gptq, &q);
	else if (o->device.kind != GQ_DEV_CPU)
		rc = gq_gptq_solve_gpu(W, H, md->out, md->in, &o->gptq, o->device.index, &q);
	else
		rc = gq_gptq_solve(W, H, md->out, md->in, &o->gptq, &q);
	if (rc) {
		free(W);
		return gq_err_wrap(rc, "%s", name);
	}
	snprintf(st->method, sizeof st->method, "%s", rtn ? "rtn" : "gptq");
	st->loss = q.loss;
	st->damp = q.damp_used;
	st->damp_retries = q.damp_retries;
	rc = gq_qlinear_from_quant(out, &q, &o->gptq, name, layer, st->method);
	if (rc == GQ_OK && o->objective && H) {
		float *Q = malloc((size_t)(md->out * md->in) * sizeof *Q);

		if (!Q) {
			rc = gq_err(GQ_ERR_NOMEM, "out of memory");
		} else {
			gq_qlinear_dequant(out, Q);
			st->objective = gq_quant_objective(W, Q, H, md->out, md->in);
			free(Q);
		}
	}
	gq_quant_free(&q);
	free(W);
	st->seconds = gq_now() - t0;
	return rc;
}

void gq_solve_stats_json(const char *name, const gq_solve_stats *st, gq_buf *out)
{
	gq_buf_json_string(out, name);
	gq_buf_printf(out, ":{\"method\":\"%s\",\"loss\":%.9g,\"damp\":%.9g,\"damp_retries\":%d,"
			   "\"seconds\":%.4f,\"nsamples\":%lld",
		      st->method, st->loss, st->damp, st->damp_retries, st->seconds,
		      (long long)st->nsamples);
	if (!isnan(st->objective))
		gq_buf_printf(out, ",\"objective\":%.9g", st->objective);
	gq_buf_append(out, "}", 1);
}
