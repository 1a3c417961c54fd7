/*
 * pack.h - AutoGPTQ's packed layout of a quantized linear and its inverse.
 *
 *   qweight I32 [in * bits / 32, out]   codes, packed along the input dimension
 *   qzeros  I32 [groups, out * bits / 32] zero points, packed along the output
 *   scales  F16 [groups, out]
 *   g_idx   I32 [in]
 *
 * For 2, 4 and 8 bits each 32-bit word holds 32/bits codes, lowest bits first.
 * For 3 bits, 32 codes span three words with two codes split across words:
 *
 *   word 0: c0..c9 at bits 0..29,  c10 bits 0-1 at bits 30-31
 *   word 1: c10 bit 2 at bit 0,    c11..c20 at bits 1..30, c21 bit 0 at bit 31
 *   word 2: c21 bits 1-2 at 0-1,   c22..c31 at bits 2..31
 *
 * checkpoint_format "gptq" stores zero - 1 in qzeros (AutoGPTQ's historical
 * offset; a zero of 0 cannot be stored, so asymmetric quantization needs
 * "gptq_v2", which stores the zero itself, as GPTQModel does).
 */
#ifndef GQ_PACK_H
#define GQ_PACK_H

#include <stdint.h>

typedef enum { GQ_FORMAT_GPTQ, GQ_FORMAT_GPTQ_V2 } gq_ckpt_format;

/* Whether [rows=out, cols=in] can be packed at bits (AutoGPTQ's divisibility). */
int gq_pack_check(int bits, int64_t out, int64_t in, const char *name);

/* codes [out, in] -> qweight [in*bits/32, out] (int32 words). */
void gq_pack_qweight(const uint8_t *codes, int64_t out, int64_t in, int bits, int32_t *qweight);
void gq_unpack_qweight(const int32_t *qweight, int64_t out, int64_t in, int bits, uint8_t *codes);
/* zeros [groups, out] -> qzeros [groups, out*bits/32], minus one for GQ_FORMAT_GPTQ. */
int gq_pack_qzeros(const uint8_t *zeros, int64_t groups, int64_t out, int bits, gq_ckpt_format f,
		   int32_t *qzeros);
void gq_unpack_qzeros(const int32_t *qzeros, int64_t groups, int64_t out, int bits,
		      gq_ckpt_format f, uint8_t *zeros);

/* Plain references of the packers (one code at a time through a bit cursor). */
void gq_pack_qweight_ref(const uint8_t *codes, int64_t out, int64_t in, int bits, int32_t *qweight);
void gq_unpack_qweight_ref(const int32_t *qweight, int64_t out, int64_t in, int bits, uint8_t *codes);

#endif
