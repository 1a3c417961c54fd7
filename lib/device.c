/*
 * device.c - device selection over the optional GPU runtime in kernels/gpu.
 */
#include "device.h"
#include "util.h"

#include <stdio.h>
#include <string.h>

#if defined(GQ_CUDA) || defined(GQ_HIP)
#include "gpu/gpu.h"
#endif

const char *gq_gpu_backend(void)
{
#if defined(GQ_CUDA)
	return "cuda";
#elif defined(GQ_HIP)
	return "hip";
#else
	return NULL;
#endif
}

int gq_gpu_count(void)
{
#if defined(GQ_CUDA) || defined(GQ_HIP)
	return gq_gpu_device_count();
#else
	return 0;
#endif
}

const char *gq_gpu_backend_desc(void)
{
	static char buf[128];

	if (!gq_gpu_backend())
		return "";
	snprintf(buf, sizeof buf, ", %s (%d device%s visible)", gq_gpu_backend(), gq_gpu_count(),
		 gq_gpu_count() == 1 ? "" : "s");
	return buf;
}

int gq_device_parse(const char *s, gq_device *d)
{
	const char *colon = strchr(s, ':');
	size_t len = colon ? (size_t)(colon - s) : strlen(s);
	int64_t index = 0;
	const char *built = gq_gpu_backend();

	if (len == 3 && strncmp(s, "cpu", 3) == 0 && !colon) {
		d->kind = GQ_DEV_CPU;
		d->index = 0;
		return GQ_OK;
	}
	if (len == 4 && strncmp(s, "cuda", 4) == 0)
		d->kind = GQ_DEV_CUDA;
	else if (len == 3 && strncmp(s, "hip", 3) == 0)
		d->kind = GQ_DEV_HIP;
	else if (len == 3 && strncmp(s, "gpu", 3) == 0 && built)
		d->kind = strcmp(built, "cuda") == 0 ? GQ_DEV_CUDA : GQ_DEV_HIP;
	else if (len == 3 && strncmp(s, "gpu", 3) == 0)
		return gq_err(GQ_ERR_UNSUPPORTED, "device '%s': built without GPU support", s);
	else
		return gq_err(GQ_ERR_ARG, "unknown device '%s' (use cpu, cuda[:N] or hip[:N])", s);
	if (colon && gq_parse_i64(colon + 1, 0, 1023, &index))
		return gq_err(GQ_ERR_ARG, "device '%s': bad ordinal", s);
	if (d->kind == GQ_DEV_CUDA && (!built || strcmp(built, "cuda") != 0))
		return gq_err(GQ_ERR_UNSUPPORTED, "device '%s': built without CUDA", s);
	if (d->kind == GQ_DEV_HIP && (!built || strcmp(built, "hip") != 0))
		return gq_err(GQ_ERR_UNSUPPORTED, "device '%s': built without HIP", s);
	if (index >= gq_gpu_count())
		return gq_err(GQ_ERR_NOTFOUND, "device '%s': %d GPU%s visible", s, gq_gpu_count(),
			      gq_gpu_count() == 1 ? "" : "s");
	d->index = (int)index;
	return GQ_OK;
}

int gq_device_parse_list(const char *s, gq_device *d, int max, int *n)
{
	char buf[64];
	const char *p = s;
	int rc;

	for (*n = 0;; (*n)++) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);

		if (*n == max)
			return gq_err(GQ_ERR_ARG, "device list '%s': more than %d devices", s, max);
		if (len == 0 || len >= sizeof buf)
			return gq_err(GQ_ERR_ARG, "device list '%s': empty or overlong entry", s);
		memcpy(buf, p, len);
		buf[len] = '\0';
		if ((rc = gq_device_parse(buf, &d[*n])))
			return rc;
		if (*n > 0 && (d[*n].kind == GQ_DEV_CPU || d[*n].kind != d[0].kind))
			return gq_err(GQ_ERR_ARG, "device list '%s': only GPUs of one kind split layers", s);
		if (!comma)
			break;
		p = comma + 1;
	}
	(*n)++;
	if (*n > 1 && d[0].kind == GQ_DEV_CPU)
		return gq_err(GQ_ERR_ARG, "device list '%s': only GPUs of one kind split layers", s);
	return GQ_OK;
}

gq_device gq_device_default(void)
{
	gq_device d = {GQ_DEV_CPU, 0};

	if (gq_gpu_count() > 0)
		d.kind = strcmp(gq_gpu_backend(), "cuda") == 0 ? GQ_DEV_CUDA : GQ_DEV_HIP;
	return d;
}

const char *gq_device_name(gq_device d)
{
	static char buf[32];

	if (d.kind == GQ_DEV_CPU)
		return "cpu";
	snprintf(buf, sizeof buf, "%s:%d", d.kind == GQ_DEV_CUDA ? "cuda" : "hip", d.index);
	return buf;
}
