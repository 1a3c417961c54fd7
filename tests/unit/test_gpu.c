/*
 * test_gpu.c - the GPU runtime wrappers and the conversion kernel against
 * gq_convert_to_f32 (bit-identical). Skips when built without a GPU backend
 * or when no device is visible.
 */
#include "check.h"
#include "device.h"
#include "tensor.h"
#if defined(GQ_CUDA) || defined(GQ_HIP)
#include "gpu/gpu.h"
#endif

static void test_device_parse(void)
{
	gq_device d;

	CHECK_OK(gq_device_parse("cpu", &d));
	CHECK(d.kind == GQ_DEV_CPU && strcmp(gq_device_name(d), "cpu") == 0);
	CHECK_ERR(gq_device_parse("tpu", &d), GQ_ERR_ARG, "unknown device 'tpu'");
	CHECK_ERR(gq_device_parse("cpu:1", &d), GQ_ERR_ARG, "unknown device");
	if (!gq_gpu_backend()) {
		CHECK_ERR(gq_device_parse("cuda:0", &d), GQ_ERR_UNSUPPORTED, "built without CUDA");
		CHECK(gq_device_default().kind == GQ_DEV_CPU);
		return;
	}
	CHECK_ERR(gq_device_parse("cuda:x", &d), GQ_ERR_ARG, "bad ordinal");
	CHECK_ERR(gq_device_parse("cuda:5000", &d), GQ_ERR_ARG, "bad ordinal");
	if (gq_gpu_count() == 0)
		CHECK_ERR(gq_device_parse("gpu", &d), GQ_ERR_NOTFOUND, "0 GPUs visible");
}

static void test_convert_kernel(void)
{
#if defined(GQ_CUDA) || defined(GQ_HIP)
	static const gq_dtype types[] = {GQ_DTYPE_F32, GQ_DTYPE_F16, GQ_DTYPE_BF16, GQ_DTYPE_F8_E4M3};
	const uint64_t n = 1000003;
	uint8_t *src = malloc(n * 4);
	float *ref = malloc(n * 4), *got = malloc(n * 4);
	uint64_t seed = 11;
	void *d_src, *d_dst;

	if (gq_gpu_count() == 0) {
		check_skip("no GPU");
		goto out;
	}
	/* random bit patterns: every class of value, NaN and subnormals included */
	for (uint64_t i = 0; i < n; i++)
		memcpy(src + 4 * i, &(uint32_t){(uint32_t)check_rand(&seed)}, 4);
	CHECK_OK(gq_gpu_alloc(&d_src, n * 4));
	CHECK_OK(gq_gpu_alloc(&d_dst, n * 4));
	CHECK_OK(gq_gpu_upload(d_src, src, n * 4));
	for (int k = 0; k < 4; k++) {
		int bad = 0;

		memset(got, 0xa5, n * 4); /* poison: every element must be written */
		CHECK_OK(gq_gpu_convert_to_f32(types[k], d_src, d_dst, n, NULL));
		CHECK_OK(gq_gpu_sync());
		CHECK_OK(gq_gpu_download(got, d_dst, n * 4));
		gq_convert_to_f32(types[k], src, 0, n, ref);
		for (uint64_t i = 0; i < n; i++)
			if (memcmp(&got[i], &ref[i], 4) != 0 && !(isnan(got[i]) && isnan(ref[i])))
				bad++;
		if (bad)
			fprintf(stderr, "  %s: %d of %llu differ\n", gq_dtype_name(types[k]), bad,
				(unsigned long long)n);
		CHECK(bad == 0);
	}
	CHECK_ERR(gq_gpu_convert_to_f32(GQ_DTYPE_I64, d_src, d_dst, 4, NULL), GQ_ERR_UNSUPPORTED,
		  "not supported");
	gq_gpu_free(d_src);
	gq_gpu_free(d_dst);
out:
	free(src);
	free(ref);
	free(got);
#else
	check_skip("built without a GPU backend");
#endif
}

int main(void)
{
	RUN(test_device_parse);
	RUN(test_convert_kernel);
	return check_done();
}
