/*
 * calib.h - calibration and evaluation data: reading a corpus (plain text,
 * JSONL with a text field, or pre-tokenized id arrays) and cutting token
 * samples from it the three ways GPTQ users need.
 *
 * Sampling is deterministic: random windows draw positions with Python's
 * Mersenne Twister exactly as random.seed(S); random.randint(...) does in
 * GPTQ's data loaders, so the same seed and tokenization pick the same
 * windows as GPTQ/AutoGPTQ, and the same arguments give the same bytes.
 */
#ifndef GQ_CALIB_H
#define GQ_CALIB_H

#include <stddef.h>
#include <stdint.h>

#include "stream.h"
#include "tokenizer.h"

/* Documents of a corpus, in input order. */
typedef struct {
	char **text;   /* n documents, each NUL-terminated, len[i] bytes */
	size_t *len;
	int32_t **ids; /* pre-tokenized documents instead of text (n_ids[i] ids each), or NULL */
	int64_t *n_ids;
	int64_t n, cap;
} gq_corpus;

void gq_corpus_free(gq_corpus *c);
/* Plain text: documents separated by blank lines (or the whole file when whole_file). */
int gq_corpus_add_text(gq_corpus *c, const char *path, int whole_file);
/* JSON lines: each line an object whose `field` is a string. */
int gq_corpus_add_jsonl(gq_corpus *c, const char *path, const char *field);
/* JSON lines of token ids: each line an array of ints, or an object whose `field` is one. */
int gq_corpus_add_ids(gq_corpus *c, const char *path, const char *field, int64_t vocab);

/*
 * The documents joined with `join` and encoded as one text, with the
 * tokenizer's special tokens when add_special (as transformers' tokenizer(text)
 * adds them); for a pre-tokenized corpus (tok may be NULL), the id arrays
 * concatenated. *tokens is malloc'd.
 */
int gq_corpus_encode_joined(const gq_corpus *c, const gq_tokenizer *tok, const char *join,
			    int add_special, int32_t **tokens, int64_t *n);
/*
 * Encodes every text document on its own (no special tokens) into c->ids,
 * prefixed with bos when bos >= 0; a pre-tokenized corpus only gets the prefix.
 */
int gq_corpus_encode_docs(gq_corpus *c, const gq_tokenizer *tok, int32_t bos);

/* Python's random module (MT19937), for GPTQ-compatible window choice. */
typedef struct {
	uint32_t mt[624];
	int idx;
} gq_pyrandom;

void gq_pyrandom_seed(gq_pyrandom *r, uint64_t seed);
uint32_t gq_pyrandom_u32(gq_pyrandom *r);
/* random.randint(a, b): uniform in [a, b], both inclusive. */
int64_t gq_pyrandom_randint(gq_pyrandom *r, int64_t a, int64_t b);

typedef struct {
	int32_t *ids;  /* [n, len] */
	uint8_t *mask; /* [n, len], 1 for real tokens; NULL when nothing is padded */
	int64_t n, len;
} gq_samples;

void gq_samples_free(gq_samples *s);
/*
 * The samples of a `tokens` frame: input_ids [n, len] of any integer type and
 * an optional attention_mask of the same shape; every id must be in [0, vocab).
 */
int gq_samples_from_frame(const gq_frame *f, int64_t vocab, gq_samples *s);

/*
 * n windows of len tokens from tokens[0..ntok): start = randint(0, ntok - len - 1)
 * per window, as GPTQ's loaders do.
 */
int gq_sample_windows(const int32_t *tokens, int64_t ntok, int64_t n, int64_t len, uint64_t seed,
		      gq_samples *out);
/*
 * Contiguous non-overlapping chunks of len tokens from the start (the tail
 * that does not fill a chunk is dropped); at most max_n chunks (0 = all).
 * With bos >= 0 each chunk is bos followed by len - 1 tokens.
 */
int gq_sample_chunks(const int32_t *tokens, int64_t ntok, int64_t len, int64_t max_n, int32_t bos,
		     gq_samples *out);
/*
 * One sample per document (docs[i], n_doc[i] tokens), truncated to len and
 * right-padded with pad to the longest kept sample, with a mask; at most max_n
 * documents (0 = all), empty ones skipped.
 */
int gq_sample_docs(int32_t *const *docs, const int64_t *n_doc, int64_t n_docs, int64_t len,
		   int64_t max_n, int32_t pad, gq_samples *out);

#endif
