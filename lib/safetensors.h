/*
 * safetensors.h - parse, validate and build safetensors headers.
 *
 * A safetensors blob is: u64 little-endian N, N bytes of JSON header (padded
 * with spaces), then the data section. This module knows headers only; the
 * bytes come from stream.c (frames on a pipe) or checkpoint.c (mmapped files).
 * Every header from outside is untrusted: gq_st_parse() checks sizes,
 * offsets, dtypes and overflow before anyone touches the data section.
 */
#ifndef GQ_SAFETENSORS_H
#define GQ_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

/* The reference implementation's bound on N; bigger headers are refused unread. */
#define GQ_ST_MAX_HEADER 100000000ull

typedef struct {
	char *name;
	gq_dtype dtype;
	int ndim;
	int64_t shape[GQ_MAX_DIMS];
	uint64_t begin, end; /* byte offsets into the data section, end - begin == bytes */
} gq_st_entry;

typedef struct {
	gq_st_entry *tensors; /* n_tensors, in header order */
	int n_tensors;
	char **meta_keys;     /* n_meta strings each: __metadata__ in header order */
	char **meta_vals;
	int n_meta;
	uint64_t data_len;    /* bytes the tensors cover: the data section's length */
} gq_st_header;

/*
 * Parses json[0..len) (the N header bytes). On error the message names the
 * tensor and, for JSON syntax errors, the byte at json_offset + position
 * (json_offset: where the header starts in the file or stream, for messages).
 * Checks that the tensors tile [0, data_len) without overlap or holes.
 */
int gq_st_parse(const char *json, size_t len, uint64_t json_offset, gq_st_header *h);
void gq_st_header_free(gq_st_header *h);

const gq_st_entry *gq_st_find(const gq_st_header *h, const char *name);
/* Value of a __metadata__ key, or NULL. */
const char *gq_st_meta(const gq_st_header *h, const char *key);
/* A view of entry e over the data section `data`. */
gq_tensor gq_st_view(const gq_st_entry *e, const uint8_t *data);

/*
 * Builder for new blobs. Tensor data is borrowed until written; names and
 * metadata are copied. Tensors are laid out largest element size first
 * (stable), so every tensor is naturally aligned in an 8-aligned data section.
 */
typedef struct {
	gq_tensor *tensors; /* n, names owned */
	int n, cap;
	char **meta_keys, **meta_vals;
	int n_meta, cap_meta;
	int keep_order;     /* lay tensors out in insertion order (a streaming writer's order) */
} gq_st_builder;

void gq_stb_init(gq_st_builder *b);
void gq_stb_free(gq_st_builder *b);
/* Sets (or replaces) a metadata string. */
int gq_stb_meta(gq_st_builder *b, const char *key, const char *val);
int gq_stb_tensor(gq_st_builder *b, const char *name, gq_dtype dtype, int ndim,
		  const int64_t *shape, const void *data);
/*
 * Serialises the header: *json (malloc'd, *len bytes, padded with spaces so
 * that 8 + *len is a multiple of 8), *order (malloc'd, n indices: the order
 * in which the tensors' bytes follow) and the data section's length.
 */
int gq_stb_header(const gq_st_builder *b, char **json, size_t *len, int **order,
		  uint64_t *data_len);

#endif
