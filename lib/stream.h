/*
 * stream.h - the frame stream: read frames one at a time, write new frames,
 * pass others through unchanged.
 *
 * A stream is a concatenation of safetensors blobs ("frames"), possibly
 * zstd-compressed as a whole or in parts: the reader sniffs the zstd magic at
 * the start, at every frame boundary and after every zstd frame, so `cat` of
 * plain and compressed streams is a stream. Reading never seeks except to skip
 * data of an uncompressed regular file, so pipes and FIFOs work. Byte offsets
 * in messages count decompressed bytes from the start of the input.
 */
#ifndef GQ_STREAM_H
#define GQ_STREAM_H

#include <stdint.h>
#include <stdio.h>

#include "safetensors.h"

/* Frame kinds (metadata "gptq.kind"). */
#define GQ_KIND_KEY "gptq.kind"

typedef struct {
	int64_t index;     /* 0-based position in its input */
	uint64_t offset;   /* byte offset of the frame's length field in the input */
	const char *source;/* display name of the input ("<stdin>" or a path), borrowed */
	gq_st_header hdr;
	char *header_json; /* header_len bytes exactly as read, for pass-through */
	uint64_t header_len;
	uint8_t *data;     /* hdr.data_len bytes; NULL if read with GQ_SKIP_DATA */
	uint64_t data_cap; /* bytes allocated at data (at least hdr.data_len) */
	const char *kind;  /* value of gptq.kind, or NULL for a plain safetensors blob */
} gq_frame;

typedef struct gq_reader gq_reader;

/* Both ends of a pipe ask for this much buffer when a reader or writer opens it. */
#define GQ_PIPE_BYTES (1 << 20)

/* path NULL or "-" reads stdin. */
int gq_reader_open(gq_reader **r, const char *path);
/* Reads an open descriptor (taking ownership); name is for messages. */
int gq_reader_open_fd(gq_reader **r, int fd, const char *name);
void gq_reader_close(gq_reader *r);
const char *gq_reader_name(const gq_reader *r);

enum { GQ_READ_DATA = 0, GQ_SKIP_DATA = 1 };
/*
 * Reads the next frame into f (freed first with gq_frame_free if it held
 * one, its data buffer kept by r for a later frame: a pipe fills pages
 * already faulted in faster than fresh ones). Returns 1 for a frame, 0 at a clean end of input, <0 on error with
 * a message naming the input, frame index and byte offset.
 */
int gq_reader_next(gq_reader *r, gq_frame *f, int flags);

void gq_frame_free(gq_frame *f);
/* View of tensor `name`; GQ_ERR_FORMAT naming the frame when it is absent. */
int gq_frame_tensor(const gq_frame *f, const char *name, gq_tensor *t);
/* Frame attribute (metadata key), or NULL. */
const char *gq_frame_attr(const gq_frame *f, const char *key);
/* Records an error prefixed with "source: frame N at byte O". */
int gq_frame_err(const gq_frame *f, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

typedef struct gq_writer gq_writer;

typedef struct {
	int zstd_level; /* 0: uncompressed; 1..19 compress the whole output */
	int threads;    /* zstd worker threads when compressing */
	int force_tty;  /* allow binary output to a terminal */
} gq_writer_opts;

/*
 * path NULL or "-" writes stdout (refused when it is a terminal unless
 * force_tty); any other path is written atomically and appears only when
 * gq_writer_close() succeeds with ok = 1.
 */
int gq_writer_open(gq_writer **w, const char *path, const gq_writer_opts *o);
/* Writes to an open stream the caller owns (and closes after gq_writer_close). */
int gq_writer_open_fp(gq_writer **w, FILE *fp, const char *name, const gq_writer_opts *o);
/* Writes a new frame. Every frame is flushed downstream before returning. */
int gq_writer_put(gq_writer *w, const gq_st_builder *b);
/* Writes a frame read from a stream, byte for byte. */
int gq_writer_pass(gq_writer *w, const gq_frame *f);
/* Finishes the output; ok = 0 discards a named output. Frees w. */
int gq_writer_close(gq_writer *w, int ok);

/*
 * A writer's frames written on a thread, in order (stream_queue.c), so that
 * the caller does not wait for a slow reader: gptq-solve's output to
 * gptq-pack while gptq-hessian waits for the feedback. At most max_bytes of
 * frame data wait at a time; a put beyond that waits for room. The writer
 * stays the caller's, to close once the queue has stopped.
 */
typedef struct gq_queue_writer gq_queue_writer;
int gq_queue_writer_start(gq_queue_writer **q, gq_writer *w, uint64_t max_bytes);
/*
 * Queues b, which with whatever its tensors point to becomes the queue's:
 * release(ctx) frees it all once written (or once the queue failed). Returns
 * the first failure of an earlier write, if any.
 */
int gq_queue_writer_put(gq_queue_writer *q, gq_st_builder *b, void (*release)(void *ctx),
			void *ctx);
/* Waits until every queued frame is written; the first failure, if any. */
int gq_queue_writer_drain(gq_queue_writer *q);
/* Drains, stops the thread and frees q; the first failure, if any. */
int gq_queue_writer_stop(gq_queue_writer *q);

/* Writes one builder as a single .safetensors file, atomically. */
int gq_st_write_file(const char *path, const gq_st_builder *b);

#endif
