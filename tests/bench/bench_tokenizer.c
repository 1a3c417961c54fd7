/*
 * bench_tokenizer - encoding throughput of the tokenizer: the fast BPE
 * merge loop against the reference one (gq_tok_encode_ref) on the same text,
 * from one run, plus decoding. The reference rescans every pair after each
 * merge, so it is timed on a slice and its rate applied to the whole.
 *
 *   bench_tokenizer [TOKENIZER] [TEXT] [MB]
 *     defaults: ../shared/tokenizers/gpt2, ../shared/text/wiki.test.raw, 1 MB
 */
#include "io.h"
#include "tokenizer.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

/* Cuts len back to a character boundary so a slice stays valid UTF-8. */
static size_t utf8_floor(const char *s, size_t len)
{
	while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80)
		len--;
	return len;
}

/* Best of reps runs: seconds to encode text[0..len). */
static double time_encode(const gq_tokenizer *t, const char *text, size_t len, int ref, int reps,
			  size_t *n_ids)
{
	double best = 1e30;

	for (int r = 0; r < reps; r++) {
		int32_t *ids;
		double t0 = gq_now();
		int rc = ref ? gq_tok_encode_ref(t, text, len, 0, &ids, n_ids)
			     : gq_tok_encode(t, text, len, 0, &ids, n_ids);

		if (rc)
			die("%s", gq_errmsg());
		if (gq_now() - t0 < best)
			best = gq_now() - t0;
		free(ids);
	}
	return best;
}

int main(int argc, char **argv)
{
	const char *shared = getenv("GQ_SHARED");
	char tok_path[1024], text_path[1024];
	gq_tokenizer *t;
	char *text, *out;
	size_t len, slice, n_ids, n_slice, n_ref, out_len;
	int64_t mb = 1;
	int32_t *ids;
	double fast, ref, dec;

	gq_set_progname(argv[0]);
	if (!shared || !*shared)
		shared = "../shared";
	snprintf(tok_path, sizeof tok_path, "%s/tokenizers/gpt2", shared);
	snprintf(text_path, sizeof text_path, "%s/text/wiki.test.raw", shared);
	if (argc > 4 || (argc > 3 && gq_parse_i64(argv[3], 1, 1024, &mb)))
		die("usage: bench_tokenizer [TOKENIZER] [TEXT] [MB]");
	if (gq_tok_load(&t, argc > 1 ? argv[1] : tok_path) ||
	    gq_read_file(argc > 2 ? argv[2] : text_path, 1u << 30, &text, &len))
		die("%s", gq_errmsg());
	len = utf8_floor(text, len < (size_t)mb << 20 ? len : (size_t)mb << 20);
	slice = utf8_floor(text, len < (64u << 10) ? len : 64u << 10);

	fast = time_encode(t, text, len, 0, 3, &n_ids);
	/* the reference on a slice, checked against the fast path on the same slice */
	ref = time_encode(t, text, slice, 1, 1, &n_ref);
	time_encode(t, text, slice, 0, 1, &n_slice);
	if (n_ref != n_slice)
		die("reference and fast paths disagree on the slice (%zu vs %zu ids)", n_ref,
		    n_slice);
	ref *= (double)len / (double)slice;

	if (gq_tok_encode(t, text, len, 0, &ids, &n_ids))
		die("%s", gq_errmsg());
	dec = gq_now();
	if (gq_tok_decode(t, ids, n_ids, 0, &out, &out_len))
		die("%s", gq_errmsg());
	dec = gq_now() - dec;
	if (out_len != len || memcmp(out, text, len))
		warn("decode(encode(text)) differs from the text");

	printf("tokenizer %s, text %zu bytes -> %zu ids (%.2f bytes/token)\n",
	       argc > 1 ? argv[1] : tok_path, len, n_ids, (double)len / (double)n_ids);
	printf("encode fast  %8.3f s  %8.2f MB/s\n", fast, (double)len / 1e6 / fast);
	printf("encode ref   %8.3f s  %8.2f MB/s  (timed on the first %zu bytes, scaled linearly)\n", ref,
	       (double)len / 1e6 / ref, slice);
	printf("fast/ref     %8.1fx\n", ref / fast);
	printf("decode       %8.3f s  %8.2f MB/s\n", dec, (double)len / 1e6 / dec);
	free(ids);
	free(out);
	free(text);
	gq_tok_free(t);
	return gq_close_stdout();
}
