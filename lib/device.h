/*
 * device.h - which compute device a tool runs on: parsing --device and
 * asking the GPU runtime (when built with one) what is present.
 *
 * CPU-only builds compile this too: asking for a GPU then fails at run time
 * with "built without CUDA", never at build time.
 */
#ifndef GQ_DEVICE_H
#define GQ_DEVICE_H

typedef enum { GQ_DEV_CPU, GQ_DEV_CUDA, GQ_DEV_HIP } gq_device_kind;

typedef struct {
	gq_device_kind kind;
	int index; /* GPU ordinal; 0 for the CPU */
} gq_device;

/* "cuda" or "hip" when built with a GPU backend, else NULL. */
const char *gq_gpu_backend(void);
/* ", cuda (3 devices)" style text for --version; "" when CPU-only. */
const char *gq_gpu_backend_desc(void);
/* GPUs visible now (0 when none, or when built CPU-only). */
int gq_gpu_count(void);

/*
 * Parses "cpu", "cuda", "cuda:N", "hip", "hip:N" (also "gpu[:N]" for
 * whichever backend was built). Fails when that backend was not built or the
 * device is absent.
 */
int gq_device_parse(const char *s, gq_device *d);
/*
 * A comma-separated list ("cuda:0,cuda:1": layers split in that order) into
 * d [max], *n entries; "cpu" only alone.
 */
int gq_device_parse_list(const char *s, gq_device *d, int max, int *n);
/* The GPU if one was built and is present, else the CPU. */
gq_device gq_device_default(void);
/* "cpu", "cuda:0", ... (static buffer). */
const char *gq_device_name(gq_device d);

#endif
