/*
 * fuzz_tokenize.c - encoding and decoding arbitrary text with real
 * tokenizers: the project's own byte-level BPE (tests/data/tokenizer) and,
 * when ../shared is present, stories260K (SentencePiece-style) and Qwen2's
 * pipeline. The first byte picks the tokenizer, the rest is the text.
 * Checks: the fast BPE merge loop equals the reference; valid UTF-8 always
 * encodes; ids are in range; decoding succeeds; and for the byte-level
 * tokenizer decode(encode(text)) is the text.
 */
#include "fuzz.h"

#include "tokenizer.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef GQ_FUZZ_TESTDATA
#define GQ_FUZZ_TESTDATA "tests/data"
#endif
#ifndef GQ_FUZZ_SHARED
#define GQ_FUZZ_SHARED "../shared"
#endif

#define N_SLOTS 3

static gq_tokenizer *toks[N_SLOTS]; /* NULL where absent */

static void load(int slot, const char *base, const char *rel)
{
	char path[4096];

	snprintf(path, sizeof path, "%s/%s", base, rel);
	if (gq_tok_load(&toks[slot], path) != GQ_OK)
		toks[slot] = NULL;
}

static void unload(void)
{
	for (int i = 0; i < N_SLOTS; i++)
		gq_tok_free(toks[i]);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *data = getenv("GQ_TESTDATA"), *shared = getenv("GQ_SHARED");

	(void)argc;
	(void)argv;
	gq_verbosity = 0;
	load(0, data ? data : GQ_FUZZ_TESTDATA, "tokenizer");
	if (!toks[0]) {
		fprintf(stderr, "fuzz_tokenize: %s\n", gq_errmsg());
		abort(); /* the bundled tokenizer must load, or nothing is tested */
	}
	load(1, shared ? shared : GQ_FUZZ_SHARED, "models/stories260K");
	load(2, shared ? shared : GQ_FUZZ_SHARED, "tokenizers/qwen2");
	atexit(unload);
	return 0;
}

/* Valid UTF-8 without surrogates or overlongs (what the tokenizer accepts). */
static int utf8_ok(const uint8_t *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		uint32_t c = s[i], cp;
		size_t len = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3
			   : c >= 0xf0 && c <= 0xf4 ? 4 : 0;

		if (!len || n - i < len)
			return 0;
		cp = len == 1 ? c : c & (0x7f >> len);
		for (size_t k = 1; k < len; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return 0;
			cp = cp << 6 | (s[i + k] & 0x3f);
		}
		if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
		    (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
			return 0;
		i += len;
	}
	return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const gq_tokenizer *t;
	const char *text = (const char *)data + 1;
	int32_t *ids = NULL, *ref = NULL, vocab;
	size_t n = 0, n_ref = 0, len = 0;
	char *out = NULL;
	int special, rc;

	/* the reference merge loop is quadratic: keep inputs short enough to stay fast */
	if (size < 1 || size > 4096 || !(t = toks[data[0] % N_SLOTS]))
		return 0;
	special = data[0] / N_SLOTS & 1;
	size--;
	vocab = gq_tok_vocab_size(t);
	rc = gq_tok_encode(t, text, size, special, &ids, &n);
	if (rc != gq_tok_encode_ref(t, text, size, special, &ref, &n_ref))
		__builtin_trap();
	if (rc == GQ_OK && (n != n_ref || (n && memcmp(ids, ref, n * sizeof *ids))))
		__builtin_trap();
	if (rc != GQ_OK && utf8_ok((const uint8_t *)text, size))
		__builtin_trap(); /* valid text must always encode */
	for (size_t k = 0; rc == GQ_OK && k < n; k++)
		if (ids[k] < 0 || ids[k] >= vocab)
			__builtin_trap();
	if (rc == GQ_OK) {
		if (gq_tok_decode(t, ids, n, 0, &out, &len) != GQ_OK ||
		    !utf8_ok((const uint8_t *)out, len))
			__builtin_trap();
		/* byte-level BPE without a normalizer loses nothing */
		if (t == toks[0] && !special && (len != size || memcmp(out, text, size)))
			__builtin_trap();
	}
	free(out);
	free(ids);
	free(ref);
	return 0;
}
