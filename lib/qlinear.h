/*
 * qlinear.h - one quantized linear layer in portable form: the `qlinear`
 * frame gptq-solve writes and gptq-hessian (feedback) and gptq-pack read.
 *
 * Frame tensors: codes U8 [out, in] (original column order), scales F16
 * [groups, out], zeros U8 [groups, out], g_idx I32 [in]. Attributes: name,
 * layer, bits, group_size, sym, desc_act, static_groups, damp, loss, method.
 * Dequantized weight: W[o][i] = scales[g][o] * (codes[o][i] - zeros[g][o]),
 * g = g_idx[i], with the F16 scales (what the packed checkpoint holds).
 */
#ifndef GQ_QLINEAR_H
#define GQ_QLINEAR_H

#include <stdint.h>

#include "gptq.h"
#include "stream.h"

#define GQ_NAME_MAX 256

typedef struct {
	char name[GQ_NAME_MAX]; /* full module name, "model.layers.3.mlp.up_proj" */
	int layer;
	int bits;
	int64_t group_size;     /* -1: one group */
	int sym, desc_act, static_groups;
	char method[8];         /* "gptq" or "rtn" */
	double damp, loss;
	int64_t rows, cols, n_groups;
	uint8_t *codes;         /* [rows, cols] */
	uint16_t *scales;       /* [n_groups, rows] float16 bits */
	uint8_t *zeros;         /* [n_groups, rows] */
	int32_t *g_idx;         /* [cols] */
} gq_qlinear;

void gq_qlinear_free(gq_qlinear *q);
/*
 * Takes a solver result: its codes and g_idx move into ql (NULL in q after),
 * scales are rounded to F16, zeros copied.
 */
int gq_qlinear_from_quant(gq_qlinear *ql, gq_quant *q, const gq_gptq_opts *o, const char *name,
			  int layer, const char *method);
/* Frame for ql; the builder borrows ql's arrays and needs ql alive until written. */
int gq_qlinear_frame(const gq_qlinear *ql, gq_st_builder *b);
/* Parses and validates a qlinear frame (shapes, code and zero ranges, g_idx). */
int gq_qlinear_parse(gq_qlinear *ql, const gq_frame *f);
/*
 * The same without copies: ql's arrays point into f's data, valid while f
 * is, and are not freed (no gq_qlinear_free).
 */
int gq_qlinear_view(gq_qlinear *ql, const gq_frame *f);
/* W [rows, cols] = dequantized weights. */
void gq_qlinear_dequant(const gq_qlinear *ql, float *W);

#endif
