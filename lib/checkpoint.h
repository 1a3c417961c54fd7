/*
 * checkpoint.h - read-only access to a Hugging Face checkpoint's tensors.
 *
 * A checkpoint is a directory holding model.safetensors, or shards listed
 * in model.safetensors.index.json, or a single .safetensors file. Every shard
 * is mmapped and its header validated on open; tensor bytes are touched only
 * when asked for, and gq_ckpt_release() drops a tensor's pages again, so a
 * layer-by-layer walk keeps about one layer resident whatever the model size.
 */
#ifndef GQ_CHECKPOINT_H
#define GQ_CHECKPOINT_H

#include <stdint.h>

#include "tensor.h"

typedef struct gq_ckpt gq_ckpt;

int gq_ckpt_open(gq_ckpt **c, const char *path);
void gq_ckpt_close(gq_ckpt *c);

/* The directory (or file) the checkpoint was opened from. */
const char *gq_ckpt_path(const gq_ckpt *c);
/* Number of tensors and the i-th name (sorted by shard, then header order). */
int gq_ckpt_count(const gq_ckpt *c);
const char *gq_ckpt_name(const gq_ckpt *c, int i);
/* Shard file a tensor lives in (for messages and copying). */
const char *gq_ckpt_file_of(const gq_ckpt *c, const char *name);

/* Shard files in order, as paths (directory joined with the file name). */
int gq_ckpt_n_files(const gq_ckpt *c);
const char *gq_ckpt_file_path(const gq_ckpt *c, int i);

/* A __metadata__ value of the first shard that has the key, or NULL. */
const char *gq_ckpt_meta(const gq_ckpt *c, const char *key);

int gq_ckpt_has(const gq_ckpt *c, const char *name);
/* View of a tensor's stored bytes; GQ_ERR_NOTFOUND naming checkpoint and tensor. */
int gq_ckpt_get(const gq_ckpt *c, const char *name, gq_tensor *t);
/*
 * Converts tensor `name` to float32 into dst, which holds `numel` floats;
 * fails naming the tensor when its element count differs.
 */
int gq_ckpt_read_f32(const gq_ckpt *c, const char *name, float *dst, uint64_t numel);
/* Advises the kernel that a tensor's pages will not be needed again soon. */
void gq_ckpt_release(const gq_ckpt *c, const char *name);

#endif
