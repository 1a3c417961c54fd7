/*
 * tensor.h - element types and tensor views shared by every module.
 *
 * A gq_tensor is a borrowed view: it never owns its data (which usually lives
 * in a frame buffer or an mmapped checkpoint). Conversions to float32 read
 * through memcpy, so views may be unaligned, as safetensors data can be.
 */
#ifndef GQ_TENSOR_H
#define GQ_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GQ_MAX_DIMS 8

typedef enum {
	GQ_DTYPE_F64,
	GQ_DTYPE_F32,
	GQ_DTYPE_F16,
	GQ_DTYPE_BF16,
	GQ_DTYPE_F8_E4M3, /* read-only: converted to float32, never written */
	GQ_DTYPE_F8_E5M2, /* read-only */
	GQ_DTYPE_I64,
	GQ_DTYPE_I32,
	GQ_DTYPE_I16,
	GQ_DTYPE_I8,
	GQ_DTYPE_U64,
	GQ_DTYPE_U32,
	GQ_DTYPE_U16,
	GQ_DTYPE_U8,
	GQ_DTYPE_BOOL,
	GQ_DTYPE_COUNT
} gq_dtype;

typedef struct {
	const char *name;
	gq_dtype dtype;
	int ndim;
	int64_t shape[GQ_MAX_DIMS];
	const void *data; /* numel * gq_dtype_size(dtype) bytes, borrowed */
	uint64_t nbytes;
} gq_tensor;

/* Safetensors name ("F32", "BF16", ...) of a dtype, and back (-1 if unknown). */
const char *gq_dtype_name(gq_dtype t);
int gq_dtype_from_name(const char *name);
size_t gq_dtype_size(gq_dtype t);
int gq_dtype_writable(gq_dtype t);

/* Element count; 0 when a dimension is 0. Caller has checked for overflow. */
uint64_t gq_tensor_numel(const gq_tensor *t);

float gq_f16_to_f32(uint16_t h);
uint16_t gq_f32_to_f16(float f);  /* round to nearest even, saturates to inf */
float gq_bf16_to_f32(uint16_t h);
uint16_t gq_f32_to_bf16(float f); /* round to nearest even */
float gq_f8e4m3_to_f32(uint8_t v);
float gq_f8e5m2_to_f32(uint8_t v);

/* Converts n elements of type t starting at element `first` of src to float32. */
void gq_convert_to_f32(gq_dtype t, const void *src, uint64_t first, uint64_t n, float *dst);
/* The same over up to `threads` threads (a layer's weights: hundreds of MB). */
void gq_convert_to_f32_mt(gq_dtype t, const void *src, uint64_t first, uint64_t n, float *dst,
			  int threads);
/* dst [n] = src [n] rounded to fp16 (gq_f32_to_f16), over up to `threads` threads. */
void gq_f32_to_f16_mt(const float *src, uint16_t *dst, uint64_t n, int threads);
/* The index of x [n]'s first NaN or infinity, or -1: on up to `threads` threads. */
int64_t gq_first_nonfinite_mt(const float *x, int64_t n, int threads);

/* dst [cols, rows] = src [rows, cols] of 4-byte elements (float, int32), a cache-sized tile at a time. */
void gq_transpose4(const void *src, int64_t rows, int64_t cols, void *dst);

#ifdef __cplusplus
}
#endif

#endif
