/*
 * gpu.h - C interface to the GPU code in kernels/gpu (CUDA, or HIP from the
 * same sources). Every function returns a gq_status and records a message
 * naming the failed runtime call; nothing here aborts.
 *
 * Device pointers are plain void pointers on this side; streams are passed
 * as void * (NULL = the default stream).
 */
#ifndef GQ_GPU_H
#define GQ_GPU_H

#include <stdint.h>

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Visible devices; 0 when there is no driver or no device. */
int gq_gpu_device_count(void);
/* Name and memory of device `index` into name[0..len). */
int gq_gpu_device_info(int index, char *name, int len, uint64_t *mem_bytes);

int gq_gpu_set_device(int index);
int gq_gpu_alloc(void **ptr, uint64_t bytes);
void gq_gpu_free(void *ptr);
int gq_gpu_upload(void *dst, const void *src, uint64_t bytes);
int gq_gpu_download(void *dst, const void *src, uint64_t bytes);
int gq_gpu_sync(void);

/*
 * dst[i] = float(src[i]) for n elements of dtype F32, F16, BF16 or F8_E4M3,
 * both on the device: the GPU twin of gq_convert_to_f32(), bit-identical.
 */
int gq_gpu_convert_to_f32(gq_dtype dtype, const void *src, float *dst, uint64_t n,
			  void *stream);

#ifdef __cplusplus
}
#endif

#endif
