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

#include "model.h"
#include "qlinear.h"
#include "stream.h"

typedef struct {
	int32_t *ids;  /* [len] */
	uint8_t *mask; /* [len], or NULL: all real tokens */
	int64_t len;
} gq_sample;

typedef struct {
	int sequential;
	int first_layer, last_layer; /* inclusive range that gets Hessians */
	const char *feedback;        /* name of the qlinear feedback stream (sequential) */
	int feedback_fd;             /* its descriptor, already open (taken over), or -1 */
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
 * Merges hessian streams frame by frame in lock step: frame k of every
 * input must name the same modules; H is the nsamples-weighted average.
 */
int gq_merge_hessians(gq_reader **inputs, int n, gq_writer *w);

#endif
