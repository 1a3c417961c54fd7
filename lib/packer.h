/*
 * packer.h - writing an AutoGPTQ-format checkpoint from qlinear frames and
 * the original model, and reading one back into qlinear frames.
 *
 * The output is planned before anything is written (every tensor's name,
 * dtype, shape and shard is known from the model and the first qlinear
 * frame), so shards stream out in plan order: a quantized module is packed
 * when its place comes, and frames arriving out of that order wait in memory.
 * The directory appears under its name only when complete.
 */
#ifndef GQ_PACKER_H
#define GQ_PACKER_H

#include <stdint.h>

#include "model.h"
#include "pack.h"
#include "stream.h"

typedef struct {
	gq_ckpt_format format;
	uint64_t shard_size; /* bytes of tensor data per shard, at most */
	int keep_dtype;      /* keep unquantized tensors' dtype (default: float16, as AutoGPTQ) */
	int replace;         /* replace an existing output directory */
	int fake;            /* write dequantized float weights instead of packed ones */
} gq_pack_opts;

/*
 * Writes out_dir from m and the qlinear frames of inputs (other frames are
 * skipped). With o->fake the checkpoint stays an ordinary float one whose
 * quantized linears hold their dequantized weights (the GPTQ paper's
 * evaluation): any shape works, and every float runtime loads it.
 */
int gq_pack_checkpoint(const gq_model *m, gq_reader **inputs, int n_inputs, const char *out_dir,
		       const gq_pack_opts *o);

/* Writes one qlinear frame per quantized module of the checkpoint in dir. */
int gq_unpack_checkpoint(const char *dir, gq_writer *w);

#endif
