/*
 * collect.h - Hessian collection: the model run a layer at a time over the
 * calibration samples, H accumulated for every group of linears that share
 * an input, emitted as `hessian` frames.
 *
 * Sequential mode (AutoGPTQ's true_sequential): within a layer, the groups
 * are taken a step at a time; after a step's Hessians are emitted, the
 * quantized weights of its modules are read back (qlinear frames, from the
 * feedback stream) and substituted before the next step's inputs are
 * computed, and the next layer's inputs come from the quantized layer.
 * Non-sequential mode collects every Hessian from full-precision inputs in
 * one pass per layer.
 */
#ifndef GQ_COLLECT_H
#define GQ_COLLECT_H

#include "device.h"
#include "model.h"
#include "qlinear.h"
#include "stream.h"

typedef struct {
	int32_t *ids;  /* [len], or NULL when x is given */
	uint8_t *mask; /* [len], or NULL: all real tokens */
	float *x;      /* [len, hidden] activations entering start_layer, or NULL: embed ids */
	int64_t len;
} gq_sample;

typedef struct {
	int sequential;
	int start_layer;             /* the layer the samples' activations enter (0: tokens) */
	int first_layer, last_layer; /* inclusive range that gets Hessians */
	gq_writer *state;            /* if set: activations leaving last_layer, one frame a sample */
	const char *feedback;        /* name of the qlinear feedback stream (sequential) */
	int feedback_fd;             /* its descriptor, opened early without blocking (taken over), or -1 */
	gq_device device;            /* where the layers run and H is summed (cpu: the reference) */
	int recompute;               /* GPU, sequential: run each step from the layer's input
				      * instead of from activations kept on the device */
	int triangle;                /* write H's lower triangle, packed ("H_lower") */
} gq_collect_opts;

/*
 * Collects Hessians over samples [n], writing frames to w. Layers before
 * first_layer are run to produce inputs, with the weights of `given`
 * qlinears (n_given, e.g. from an earlier slice) substituted where they
 * name a module. In sequential mode the feedback stream is opened when
 * first needed and drained to its end after the last frame (so the process
 * feeding it never blocks on a closed pipe): the caller closes its own
 * output first via the `before_drain` callback.
 */
int gq_collect(const gq_model *m, const gq_sample *samples, int64_t n, const gq_collect_opts *o,
	       const gq_qlinear *given, int n_given, gq_writer *w,
	       int (*before_drain)(void *ctx), void *ctx);

/*
 * An `activations` frame (what --save-state writes) back into a sample;
 * *layer is the layer it feeds. The sample takes its own copies.
 */
int gq_sample_from_activations(const gq_frame *f, int64_t hidden, gq_sample *s, int *layer);

/*
 * Merges hessian streams frame by frame in lock step: frame k of every
 * input must name the same modules (H whole or packed); H is the
 * nsamples-weighted average, written packed when triangle is set.
 */
int gq_merge_hessians(gq_reader **inputs, int n, int triangle, gq_writer *w);

#endif
