/*
 * test_calib.c - corpus readers, the Python-compatible random generator
 * (checked against values CPython prints), and the three samplers.
 */
#include "calib.h"
#include "check.h"

#include <unistd.h>

static char dir[] = "/tmp/gq-test-calib-XXXXXX";

static const char *file_with(const char *name, const char *text)
{
	static char path[512];
	FILE *fp;

	snprintf(path, sizeof path, "%s/%s", dir, name);
	fp = fopen(path, "w");
	fputs(text, fp);
	fclose(fp);
	return path;
}

static void test_python_random(void)
{
	/* python3 -c 'import random; random.seed(0); print([random.randint(0, 1000) for _ in range(5)])' */
	static const int64_t want0[] = {864, 394, 776, 911, 430};
	static const int64_t want42[] = {58369, 13112, 144194, 128393};
	static const int64_t want_big[] = {327144995363, 722760460723, 921007755591};
	gq_pyrandom r;

	gq_pyrandom_seed(&r, 0);
	for (int i = 0; i < 5; i++)
		CHECK(gq_pyrandom_randint(&r, 0, 1000) == want0[i]);
	gq_pyrandom_seed(&r, 0);
	CHECK(gq_pyrandom_u32(&r) == 3626764237u && gq_pyrandom_u32(&r) == 1654615998u);
	gq_pyrandom_seed(&r, 42);
	for (int i = 0; i < 4; i++)
		CHECK(gq_pyrandom_randint(&r, 0, 287644 - 2048 - 1) == want42[i]);
	gq_pyrandom_seed(&r, 1234567890123ull);
	for (int i = 0; i < 3; i++)
		CHECK(gq_pyrandom_randint(&r, 0, 1ll << 40) == want_big[i]);
}

static void test_readers(void)
{
	gq_corpus c = {0};

	CHECK_OK(gq_corpus_add_text(&c, file_with("a.txt", "one\ntwo\n\n\nthree\n\nfour"), 0));
	CHECK(c.n == 3);
	CHECK(strcmp(c.text[0], "one\ntwo") == 0 && strcmp(c.text[2], "four") == 0);
	CHECK_OK(gq_corpus_add_text(&c, file_with("b.txt", "whole\n\nfile\n"), 1));
	CHECK(c.n == 4 && strcmp(c.text[3], "whole\n\nfile\n") == 0);
	CHECK_OK(gq_corpus_add_jsonl(&c, file_with("c.jsonl", "{\"text\":\"a\\u00e9\"}\n\n{\"text\":\"b\",\"x\":1}\n"),
				     "text"));
	CHECK(c.n == 6 && strcmp(c.text[4], "a\xc3\xa9") == 0);
	CHECK_ERR(gq_corpus_add_jsonl(&c, file_with("d.jsonl", "{\"text\":\"a\"}\n{\"body\":\"b\"}\n"), "text"),
		  GQ_ERR_FORMAT, "d.jsonl:2: no string field 'text'");
	CHECK_ERR(gq_corpus_add_jsonl(&c, file_with("e.jsonl", "{\"text\":\n"), "text"), GQ_ERR_FORMAT,
		  "e.jsonl:1: not valid JSON");
	CHECK_ERR(gq_corpus_add_ids(&c, file_with("f.jsonl", "[1,2]\n"), NULL, 10), GQ_ERR_ARG,
		  "cannot mix text and pre-tokenized documents");
	gq_corpus_free(&c);

	CHECK_OK(gq_corpus_add_ids(&c, file_with("g.jsonl", "[1,2,3]\n{\"input_ids\":[4,5]}\n[]\n"), NULL, 10));
	CHECK(c.n == 3 && c.n_ids[0] == 3 && c.ids[1][1] == 5 && c.n_ids[2] == 0);
	CHECK_ERR(gq_corpus_add_ids(&c, file_with("h.jsonl", "[1,2,10]\n"), NULL, 10), GQ_ERR_FORMAT,
		  "h.jsonl:1: token 2 is not an id in [0, 10)");
	CHECK_ERR(gq_corpus_add_ids(&c, file_with("i.jsonl", "[1,2.5]\n"), NULL, 10), GQ_ERR_FORMAT,
		  "token 1 is not an id");
	CHECK_ERR(gq_corpus_add_text(&c, "/nonexistent/x.txt", 0), GQ_ERR_IO, "cannot open");
	gq_corpus_free(&c);
}

static void test_samplers(void)
{
	int32_t tok[100];
	gq_samples s;
	gq_pyrandom r;

	for (int i = 0; i < 100; i++)
		tok[i] = i;
	CHECK_OK(gq_sample_windows(tok, 100, 4, 10, 7, &s));
	CHECK(s.n == 4 && s.len == 10 && !s.mask);
	gq_pyrandom_seed(&r, 7);
	for (int i = 0; i < 4; i++) {
		int64_t start = gq_pyrandom_randint(&r, 0, 89);

		CHECK(s.ids[i * 10] == start && s.ids[i * 10 + 9] == start + 9);
	}
	gq_samples_free(&s);
	CHECK_ERR(gq_sample_windows(tok, 10, 1, 10, 0, &s), GQ_ERR_ARG,
		  "the corpus has 10 tokens; windows of 10 need at least 11");

	CHECK_OK(gq_sample_chunks(tok, 100, 30, 0, -1, &s));
	CHECK(s.n == 3 && s.ids[30] == 30 && s.ids[89] == 89);
	gq_samples_free(&s);
	CHECK_OK(gq_sample_chunks(tok, 100, 30, 2, 999, &s));
	CHECK(s.n == 2 && s.ids[0] == 999 && s.ids[1] == 0 && s.ids[30] == 999 && s.ids[31] == 29);
	gq_samples_free(&s);
	CHECK_ERR(gq_sample_chunks(tok, 10, 30, 0, -1, &s), GQ_ERR_ARG, "less than one chunk");

	int32_t d0[3] = {1, 2, 3}, d1[6] = {4, 5, 6, 7, 8, 9}, d2[1] = {7};
	int32_t *docs[4] = {d0, NULL, d1, d2};
	int64_t n[4] = {3, 0, 6, 1};
	CHECK_OK(gq_sample_docs(docs, n, 4, 5, 0, -7, &s));
	CHECK(s.n == 3 && s.len == 5 && s.mask);
	CHECK(s.ids[3] == -7 && s.mask[2] == 1 && s.mask[3] == 0);
	CHECK(s.ids[5 + 4] == 8 && s.mask[5 + 4] == 1);          /* truncated to 5 */
	CHECK(s.ids[10] == 7 && s.mask[11] == 0);
	gq_samples_free(&s);
	CHECK_OK(gq_sample_docs(docs, n, 4, 5, 1, -7, &s));
	CHECK(s.n == 1 && s.len == 3 && !s.mask);
	gq_samples_free(&s);
}

int main(void)
{
	CHECK(mkdtemp(dir) != NULL);
	RUN(test_python_random);
	RUN(test_readers);
	RUN(test_samplers);
	char cmd[600];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", dir);
	return check_done();
}
