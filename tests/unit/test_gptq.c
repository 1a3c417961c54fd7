/*
 * test_gptq.c - the GPTQ solve against AutoGPTQ's fasterquant on
 * ../shared/fixtures/gptq (every config: >= 99% identical codes, objective
 * within 0.5%), the fast path against the float64 reference, RTN, damping
 * escalation and argument checks, and one Hessian prepared for several
 * modules against each solved alone.
 */
#include "check.h"
#include "checkpoint.h"
#include "gptq.h"
#include "layer.h"

#include <cjson/cJSON.h>

/*
 * The float64 reference rounds differently from float32 AutoGPTQ where
 * float32's Hinv is least accurate (act order on these deliberately
 * ill-conditioned Hessians): measured 97.7% identical codes at worst (8 bits,
 * where the grid is finest), with the objective within 0.1%. The float32 fast
 * path is held to the 99%.
 */
#define REF_CODES 0.97

static float *load(const gq_ckpt *c, const char *name, int64_t *d0, int64_t *d1)
{
	gq_tensor t;
	float *x;

	if (gq_ckpt_get(c, name, &t))
		return NULL;
	x = malloc(gq_tensor_numel(&t) * sizeof *x);
	gq_convert_to_f32(t.dtype, t.data, 0, gq_tensor_numel(&t), x);
	if (d0)
		*d0 = t.shape[0];
	if (d1)
		*d1 = t.ndim > 1 ? t.shape[1] : 1;
	return x;
}

/* Fraction of codes equal to the fixture's, and our objective over theirs. */
static void compare(const gq_ckpt *c, const char *cfg, const gq_quant *q, const float *W,
		    const float *H, double want_obj, double *agree, double *obj_ratio)
{
	char name[128];
	int64_t rows = q->rows, cols = q->cols, same = 0;
	float *codes, *Q = malloc((size_t)(rows * cols) * sizeof *Q);

	snprintf(name, sizeof name, "%s.codes", cfg);
	codes = load(c, name, NULL, NULL);
	for (int64_t i = 0; i < rows * cols; i++)
		same += (float)q->codes[i] == codes[i];
	*agree = (double)same / (double)(rows * cols);
	gq_quant_dequant(q, Q);
	*obj_ratio = gq_quant_objective(W, Q, H, rows, cols) / want_obj;
	free(codes);
	free(Q);
}

static void parse_cfg(const cJSON *o, gq_gptq_opts *opts)
{
	memset(opts, 0, sizeof *opts);
	opts->bits = cJSON_GetObjectItem(o, "bits")->valueint;
	opts->group_size = cJSON_GetObjectItem(o, "group_size")->valueint;
	opts->desc_act = cJSON_IsTrue(cJSON_GetObjectItem(o, "desc_act"));
	opts->static_groups = cJSON_IsTrue(cJSON_GetObjectItem(o, "static_groups"));
	opts->sym = cJSON_IsTrue(cJSON_GetObjectItem(o, "sym"));
	opts->damp = cJSON_GetObjectItem(o, "damp_percent")->valuedouble;
	opts->block = cJSON_GetObjectItem(o, "blocksize")->valueint;
	opts->threads = 2;
}

static void test_autogptq_vectors(void)
{
	double worst_agree = 1, worst_obj = 0, worst_ref_agree = 1;
	int configs = 0;

	for (int k = 0; k < 3; k++) {
		char rel[64];
		const char *path;
		gq_ckpt *c;
		int64_t rows, cols;

		snprintf(rel, sizeof rel, "fixtures/gptq/gptq_case%d.safetensors", k);
		if (!(path = check_shared(rel))) {
			check_skip("../shared/fixtures/gptq not present");
			return;
		}
		CHECK_OK(gq_ckpt_open(&c, path));
		float *W = load(c, "W", &rows, &cols), *H = load(c, "H", NULL, NULL);
		/* the configs and their objectives live in the file's metadata */
		cJSON *cfgs = cJSON_Parse(gq_ckpt_meta(c, "configs")), *item;
		CHECK(cfgs != NULL);
		cJSON_ArrayForEach(item, cfgs) {
			cJSON *o = cJSON_Parse(item->valuestring);
			gq_gptq_opts opts;
			gq_quant q, r;
			double agree, ratio, ref_agree, ref_ratio;
			int64_t same = 0;

			parse_cfg(o, &opts);
			CHECK_OK(gq_gptq_solve(W, H, rows, cols, &opts, &q));
			CHECK_OK(gq_gptq_solve_ref(W, H, rows, cols, &opts, &r));
			compare(c, item->string, &q, W, H, cJSON_GetObjectItem(o, "objective")->valuedouble,
				&agree, &ratio);
			compare(c, item->string, &r, W, H, cJSON_GetObjectItem(o, "objective")->valuedouble,
				&ref_agree, &ref_ratio);
			for (int64_t i = 0; i < rows * cols; i++)
				same += q.codes[i] == r.codes[i];
			/* g_idx must be exact */
			char name[128];
			snprintf(name, sizeof name, "%s.g_idx", item->string);
			float *gi = load(c, name, NULL, NULL);
			for (int64_t i = 0; gi && i < cols; i++)
				if ((float)q.g_idx[i] != gi[i]) {
					CHECK(!"g_idx differs");
					break;
				}
			free(gi);
			if (agree < 0.99 || fabs(ratio - 1) > 0.005 || ref_agree < REF_CODES ||
			    fabs(ref_ratio - 1) > 0.005)
				fprintf(stderr, "  case%d %s: codes %.4f (ref %.4f), objective x%.5f (ref x%.5f)\n",
					k, item->string, agree, ref_agree, ratio, ref_ratio);
			CHECK(agree >= 0.99 && fabs(ratio - 1) <= 0.005);
			CHECK(ref_agree >= REF_CODES && fabs(ref_ratio - 1) <= 0.005);
			worst_agree = fmin(worst_agree, agree);
			worst_ref_agree = fmin(worst_ref_agree, (double)same / (double)(rows * cols));
			worst_obj = fmax(worst_obj, fabs(ratio - 1));
			configs++;
			gq_quant_free(&q);
			gq_quant_free(&r);
			cJSON_Delete(o);
		}
		cJSON_Delete(cfgs);
		free(W);
		free(H);
		gq_ckpt_close(c);
	}
	printf("#   %d configs: worst code agreement %.4f, worst objective deviation %.4f%%, "
	       "fast vs reference agreement >= %.4f\n",
	       configs, worst_agree, 100 * worst_obj, worst_ref_agree);
	CHECK(configs == 3 * 52);
}

/* q, k and v share one Hessian: one preparation for all (layer.h) */
static void test_prepared_shared(void)
{
	check_prepared_shared(-1);
}

int main(void)
{
	RUN(test_autogptq_vectors);
	RUN(test_prepared_shared);
	return check_done();
}
