/*
 * fuzz_tokenizer.c - tokenizer.json loading: the input is tokenizer.json,
 * optionally followed by a NUL byte and tokenizer_config.json. A tokenizer
 * that loads must encode a few fixed texts (fast and reference BPE agree,
 * ids in range) and decode what it produced, plainly and as a stream.
 */
#include "fuzz.h"

#include "tokenizer.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

static const char *const texts[] = {
	"Hello world! It's 2024, isn't it?  \n\n  Tabs\tand  spaces",
	"<s>Once upon a time</s><unk> <|endoftext|>",
	"caf\xc3\xa9 na\xc3\xafve \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80 \xe2\x80\x99 12345678",
	"",
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	gq_verbosity = 0;
	return 0;
}

static void exercise(const gq_tokenizer *t)
{
	int32_t vocab = gq_tok_vocab_size(t);

	for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
		int32_t *ids = NULL, *ref = NULL;
		size_t n = 0, n_ref = 0, len;
		int rc = gq_tok_encode(t, texts[i], strlen(texts[i]), (int)(i & 1), &ids, &n);
		int rc_ref = gq_tok_encode_ref(t, texts[i], strlen(texts[i]), (int)(i & 1), &ref, &n_ref);
		char *text = NULL;

		if (rc != rc_ref || (rc == GQ_OK && (n != n_ref || (n && memcmp(ids, ref, n * sizeof *ids)))))
			__builtin_trap(); /* the fast merge loop disagrees with the reference */
		for (size_t k = 0; rc == GQ_OK && k < n; k++)
			if (ids[k] < 0 || ids[k] >= vocab)
				__builtin_trap();
		if (rc == GQ_OK && gq_tok_decode(t, ids, n, (int)(i & 1), &text, &len) == GQ_OK)
			free(text);
		if (rc == GQ_OK) {
			gq_tok_stream *s;

			if (gq_tok_stream_init(&s, t, 0) == GQ_OK) {
				for (size_t k = 0; k < n; k++) {
					const char *piece;
					size_t plen;

					if (gq_tok_stream_put(s, ids[k], &piece, &plen))
						break;
				}
				gq_tok_stream_free(s);
			}
		}
		free(ids);
		free(ref);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, 0, size);
	size_t n = nul ? (size_t)(nul - data) : size;
	const char *path;
	gq_tokenizer *t;

	if (nul)
		fuzz_write("tokenizer_config.json", nul + 1, size - n - 1);
	else
		fuzz_unlink("tokenizer_config.json");
	path = fuzz_write("tokenizer.json", data, n);
	if (path && gq_tok_load(&t, path) == GQ_OK) {
		gq_tok_bos(t);
		gq_tok_eos(t);
		exercise(t);
		gq_tok_free(t);
	}
	return 0;
}
