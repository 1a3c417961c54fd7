/*
 * describe.h - a frame as one JSON object, the record gptq-dump prints:
 * position, kind, metadata, tensors (dtype, shape, bytes) and, on request,
 * statistics per tensor plus the Hessian summary of `hessian` frames.
 */
#ifndef GQ_DESCRIBE_H
#define GQ_DESCRIBE_H

#include "stream.h"
#include "util.h"

typedef struct {
	int stats;    /* add per-tensor statistics (needs the frame's data) */
	double damp;  /* damp fraction for the Hessian's damped condition estimate */
	int checksum; /* add each tensor's FNV-1a 64 of its bytes (needs the data) */
} gq_describe_opts;

/*
 * Appends one line of JSON (with a trailing newline) describing f to out.
 * file: the input's display name.
 */
int gq_describe_frame(const gq_frame *f, const char *file, const gq_describe_opts *o, gq_buf *out);

struct gq_model;
/* One JSON line describing a model as the tools read it: dimensions and the quantizable modules. */
int gq_describe_model(const struct gq_model *m, gq_buf *out);

#endif
