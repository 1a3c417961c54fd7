/*
 * pack.c - AutoGPTQ packing. Every bit width, 3 included, is the same little-
 * endian bitstream of codes along the packed dimension (AutoGPTQ's 3-bit word
 * splitting is exactly that stream), so the reference walks a bit cursor and
 * the fast path does whole words: 32/bits codes per word, or 32 codes per
 * three words for 3 bits.
 */
#include "pack.h"
#include "util.h"

#include <string.h>

int gq_pack_check(int bits, int64_t out, int64_t in, const char *name)
{
	int64_t unit = bits == 3 ? 32 : 32 / bits;

	if (bits != 2 && bits != 3 && bits != 4 && bits != 8)
		return gq_err(GQ_ERR_ARG, "%s: cannot pack %d-bit codes", name, bits);
	if (in % unit || out % unit)
		return gq_err(GQ_ERR_UNSUPPORTED,
			      "%s: [%lld, %lld] cannot be packed at %d bits (both dimensions must be "
			      "multiples of %lld)",
			      name, (long long)out, (long long)in, bits, (long long)unit);
	return GQ_OK;
}

/* Packs n codes (stride apart in src) into n*bits/32 words (wstride apart in dst). */
static void pack_stream(const uint8_t *src, int64_t stride, int64_t n, int bits, uint32_t *dst,
			int64_t wstride)
{
	if (bits == 3) {
		for (int64_t c = 0; c < n; c += 32) {
			uint64_t lo = 0, hi = 0; /* 96 bits: words 0,1 in lo; word 2 in hi */

			for (int k = 0; k < 32; k++) {
				uint64_t v = src[(c + k) * stride] & 7u;
				int bit = 3 * k;

				if (bit < 64) {
					lo |= v << bit;
					if (bit + 3 > 64) /* c21 straddles words 1 and 2 */
						hi |= v >> (64 - bit);
				} else {
					hi |= v << (bit - 64);
				}
			}
			int64_t w = c / 32 * 3;
			dst[w * wstride] = (uint32_t)lo;
			dst[(w + 1) * wstride] = (uint32_t)(lo >> 32);
			dst[(w + 2) * wstride] = (uint32_t)hi;
		}
		return;
	}
	int per = 32 / bits;
	uint32_t mask = (1u << bits) - 1;
	for (int64_t w = 0; w < n / per; w++) {
		uint32_t word = 0;

		for (int k = 0; k < per; k++)
			word |= (src[(w * per + k) * stride] & mask) << (bits * k);
		dst[w * wstride] = word;
	}
}

static void unpack_stream(const uint32_t *src, int64_t wstride, int64_t n, int bits, uint8_t *dst,
			  int64_t stride)
{
	if (bits == 3) {
		for (int64_t c = 0; c < n; c += 32) {
			int64_t w = c / 32 * 3;
			uint64_t lo = src[w * wstride] | (uint64_t)src[(w + 1) * wstride] << 32;
			uint64_t hi = src[(w + 2) * wstride];

			for (int k = 0; k < 32; k++) {
				int bit = 3 * k;
				uint64_t v = bit < 64 ? lo >> bit : hi >> (bit - 64);

				if (bit < 64 && bit + 3 > 64)
					v |= hi << (64 - bit);
				dst[(c + k) * stride] = (uint8_t)(v & 7u);
			}
		}
		return;
	}
	int per = 32 / bits;
	uint32_t mask = (1u << bits) - 1;
	for (int64_t w = 0; w < n / per; w++)
		for (int k = 0; k < per; k++)
			dst[(w * per + k) * stride] = (uint8_t)((src[w * wstride] >> (bits * k)) & mask);
}

void gq_pack_qweight(const uint8_t *codes, int64_t out, int64_t in, int bits, int32_t *qweight)
{
	/* column o of qweight packs codes[o][0..in) */
	for (int64_t o = 0; o < out; o++)
		pack_stream(codes + o * in, 1, in, bits, (uint32_t *)qweight + o, out);
}

void gq_unpack_qweight(const int32_t *qweight, int64_t out, int64_t in, int bits, uint8_t *codes)
{
	for (int64_t o = 0; o < out; o++)
		unpack_stream((const uint32_t *)qweight + o, out, in, bits, codes + o * in, 1);
}

int gq_pack_qzeros(const uint8_t *zeros, int64_t groups, int64_t out, int bits, gq_ckpt_format f,
		   int32_t *qzeros)
{
	uint8_t tmp[1024];
	int64_t words = out * bits / 32;

	for (int64_t g = 0; g < groups; g++) {
		for (int64_t o0 = 0; o0 < out; o0 += 768) {
			int64_t n = out - o0 < 768 ? out - o0 : 768;

			for (int64_t o = 0; o < n; o++) {
				uint8_t z = zeros[g * out + o0 + o];

				if (f == GQ_FORMAT_GPTQ && z == 0)
					return gq_err(GQ_ERR_UNSUPPORTED,
						      "a zero point of 0 cannot be stored in checkpoint_format "
						      "gptq (it stores zero - 1): use gptq_v2");
				tmp[o] = f == GQ_FORMAT_GPTQ ? (uint8_t)(z - 1) : z;
			}
			/* 768 is a multiple of every packing unit */
			pack_stream(tmp, 1, n, bits, (uint32_t *)qzeros + g * words + o0 * bits / 32, 1);
		}
	}
	return GQ_OK;
}

void gq_unpack_qzeros(const int32_t *qzeros, int64_t groups, int64_t out, int bits,
		      gq_ckpt_format f, uint8_t *zeros)
{
	int64_t words = out * bits / 32;
	uint8_t mask = (uint8_t)((1u << bits) - 1);

	for (int64_t g = 0; g < groups; g++) {
		unpack_stream((const uint32_t *)qzeros + g * words, 1, out, bits, zeros + g * out, 1);
		if (f == GQ_FORMAT_GPTQ)
			for (int64_t o = 0; o < out; o++)
				zeros[g * out + o] = (uint8_t)((zeros[g * out + o] + 1) & mask);
	}
}

void gq_pack_qweight_ref(const uint8_t *codes, int64_t out, int64_t in, int bits, int32_t *qweight)
{
	uint32_t *q = (uint32_t *)qweight;

	memset(q, 0, (size_t)(in * bits / 32 * out) * sizeof *q);
	for (int64_t o = 0; o < out; o++)
		for (int64_t i = 0; i < in; i++)
			for (int b = 0; b < bits; b++) {
				int64_t bit = i * bits + b;

				if ((codes[o * in + i] >> b) & 1)
					q[(bit / 32) * out + o] |= 1u << (bit % 32);
			}
}

void gq_unpack_qweight_ref(const int32_t *qweight, int64_t out, int64_t in, int bits, uint8_t *codes)
{
	const uint32_t *q = (const uint32_t *)qweight;

	for (int64_t o = 0; o < out; o++)
		for (int64_t i = 0; i < in; i++) {
			uint8_t v = 0;

			for (int b = 0; b < bits; b++) {
				int64_t bit = i * bits + b;

				v |= (uint8_t)(((q[(bit / 32) * out + o] >> (bit % 32)) & 1u) << b);
			}
			codes[o * in + i] = v;
		}
}
