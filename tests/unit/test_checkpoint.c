/*
 * test_checkpoint.c - checkpoint discovery (single file, index shards,
 * unindexed shards), lazy tensor access and conversion, and refusal of
 * corrupt shards and hostile index files.
 */
#define _GNU_SOURCE
#include "check.h"
#include "checkpoint.h"
#include "io.h"
#include "safetensors.h"
#include "stream.h"

#include <unistd.h>

static char dir[] = "/tmp/gq-test-ckpt-XXXXXX";

static const char *path_in(const char *sub, const char *name)
{
	static char buf[4][512];
	static int k;
	char *b = buf[k++ % 4];

	snprintf(b, sizeof buf[0], "%s/%s%s%s", dir, sub, *name ? "/" : "", name);
	return b;
}

static void write_text(const char *path, const char *text)
{
	FILE *fp = fopen(path, "w");

	fputs(text, fp);
	fclose(fp);
}

/* Shard `file` in sub/ holding tensors named by `names` (F32 [2,3] of value v). */
static void write_shard(const char *sub, const char *file, const char **names, int n, float v)
{
	static float data[6];
	int64_t shape[2] = {2, 3};
	gq_st_builder b;

	for (int i = 0; i < 6; i++)
		data[i] = v + (float)i;
	gq_stb_init(&b);
	for (int i = 0; i < n; i++)
		CHECK_OK(gq_stb_tensor(&b, names[i], GQ_DTYPE_F32, 2, shape, data));
	CHECK_OK(gq_st_write_file(path_in(sub, file), &b));
	gq_stb_free(&b);
}

static void test_shared_fixtures(void)
{
	static const char *arch[] = {"llama", "mistral", "qwen2", "qwen3", "opt", "gpt2",
				     "gpt_neox", "gptj", "bloom", "falcon", "gpt_bigcode",
				     "codegen", "phi3", "gemma2", "mixtral"};
	char rel[128];

	for (int i = 0; i < 15; i++) {
		const char *p;
		gq_ckpt *c;

		snprintf(rel, sizeof rel, "fixtures/models/%s", arch[i]);
		p = check_shared(rel);
		if (!p) {
			check_skip("../shared/fixtures/models not present");
			return;
		}
		CHECK_OK(gq_ckpt_open(&c, p));
		if (!c)
			continue;
		CHECK(gq_ckpt_n_files(c) == 1);
		CHECK(gq_ckpt_count(c) > 5);
		/* every tensor converts; values stay finite */
		for (int t = 0; t < gq_ckpt_count(c); t++) {
			gq_tensor v;
			float *f;

			CHECK_OK(gq_ckpt_get(c, gq_ckpt_name(c, t), &v));
			f = malloc(gq_tensor_numel(&v) * sizeof *f + 4);
			CHECK_OK(gq_ckpt_read_f32(c, v.name, f, gq_tensor_numel(&v)));
			for (uint64_t k = 0; k < gq_tensor_numel(&v); k++)
				if (!isfinite(f[k])) {
					CHECK(!"non-finite weight");
					break;
				}
			free(f);
		}
		gq_ckpt_close(c);
	}
}

static void test_single_and_indexed(void)
{
	const char *a[] = {"x.weight", "x.bias"}, *b[] = {"y.weight"};
	gq_ckpt *c;
	float f[6];
	gq_tensor t;

	CHECK(mkdir(path_in("single", ""), 0777) == 0);
	write_shard("single", "model.safetensors", a, 2, 1);
	CHECK_OK(gq_ckpt_open(&c, path_in("single", "")));
	CHECK(gq_ckpt_count(c) == 2 && gq_ckpt_has(c, "x.bias") && !gq_ckpt_has(c, "nope"));
	CHECK_ERR(gq_ckpt_get(c, "nope", &t), GQ_ERR_NOTFOUND, "no tensor 'nope'");
	CHECK_OK(gq_ckpt_read_f32(c, "x.weight", f, 6));
	CHECK(f[0] == 1 && f[5] == 6);
	CHECK_ERR(gq_ckpt_read_f32(c, "x.weight", f, 5), GQ_ERR_FORMAT, "has 6 elements, expected 5");
	gq_ckpt_release(c, "x.weight");
	gq_ckpt_close(c);
	/* the file itself opens too */
	CHECK_OK(gq_ckpt_open(&c, path_in("single", "model.safetensors")));
	CHECK(gq_ckpt_count(c) == 2);
	gq_ckpt_close(c);

	CHECK(mkdir(path_in("sharded", ""), 0777) == 0);
	write_shard("sharded", "model-00001-of-00002.safetensors", a, 2, 10);
	write_shard("sharded", "model-00002-of-00002.safetensors", b, 1, 20);
	/* without an index the shards are found by name */
	CHECK_OK(gq_ckpt_open(&c, path_in("sharded", "")));
	CHECK(gq_ckpt_count(c) == 3 && gq_ckpt_n_files(c) == 2);
	gq_ckpt_close(c);
	write_text(path_in("sharded", "model.safetensors.index.json"),
		   "{\"metadata\":{},\"weight_map\":{\"x.weight\":\"model-00001-of-00002.safetensors\","
		   "\"x.bias\":\"model-00001-of-00002.safetensors\","
		   "\"y.weight\":\"model-00002-of-00002.safetensors\"}}");
	CHECK_OK(gq_ckpt_open(&c, path_in("sharded", "")));
	CHECK(gq_ckpt_count(c) == 3);
	CHECK(strcmp(gq_ckpt_file_of(c, "y.weight"), "model-00002-of-00002.safetensors") == 0);
	CHECK_OK(gq_ckpt_read_f32(c, "y.weight", f, 6));
	CHECK(f[0] == 20);
	gq_ckpt_close(c);
}

static void test_hostile_index(void)
{
	const char *a[] = {"x.weight"}, *dup[] = {"x.weight"};
	gq_ckpt *c;

	CHECK(mkdir(path_in("bad", ""), 0777) == 0);
	write_shard("bad", "s1.safetensors", a, 1, 0);
	write_shard("bad", "s2.safetensors", dup, 1, 0);
	write_text(path_in("bad", "model.safetensors.index.json"),
		   "{\"weight_map\":{\"x.weight\":\"../../etc/passwd\"}}");
	CHECK_ERR(gq_ckpt_open(&c, path_in("bad", "")), GQ_ERR_FORMAT,
		  "tensor 'x.weight' maps to an invalid file name");
	write_text(path_in("bad", "model.safetensors.index.json"),
		   "{\"weight_map\":{\"x.weight\":\"s1.safetensors\",\"z\":\"s1.safetensors\"}}");
	CHECK_ERR(gq_ckpt_open(&c, path_in("bad", "")), GQ_ERR_FORMAT,
		  "index maps tensor 'z' to s1.safetensors, which lacks it");
	write_text(path_in("bad", "model.safetensors.index.json"),
		   "{\"weight_map\":{\"x.weight\":\"s1.safetensors\",\"y\":\"s2.safetensors\"}}");
	CHECK_ERR(gq_ckpt_open(&c, path_in("bad", "")), GQ_ERR_FORMAT,
		  "tensor 'x.weight' appears in both s1.safetensors and s2.safetensors");
	write_text(path_in("bad", "model.safetensors.index.json"), "{\"weight_map\": [");
	CHECK_ERR(gq_ckpt_open(&c, path_in("bad", "")), GQ_ERR_FORMAT, "not valid JSON");
	write_text(path_in("bad", "model.safetensors.index.json"),
		   "{\"weight_map\":{\"x.weight\":\"missing.safetensors\"}}");
	CHECK_ERR(gq_ckpt_open(&c, path_in("bad", "")), GQ_ERR_IO, "cannot open");
	CHECK(mkdir(path_in("none", ""), 0777) == 0);
	CHECK_ERR(gq_ckpt_open(&c, path_in("none", "")), GQ_ERR_NOTFOUND, "has no model.safetensors");
}

static void test_corrupt_shards(void)
{
	const char *a[] = {"x.weight"};
	char *buf;
	size_t len;
	gq_ckpt *c;
	FILE *fp;

	CHECK(mkdir(path_in("corrupt", ""), 0777) == 0);
	write_shard("corrupt", "model.safetensors", a, 1, 0);
	CHECK_OK(gq_read_file(path_in("corrupt", "model.safetensors"), 1 << 20, &buf, &len));
	/* every truncation fails with a message naming the file */
	for (size_t cut = 0; cut < len; cut++) {
		fp = fopen(path_in("corrupt", "model.safetensors"), "wb");
		fwrite(buf, 1, cut, fp);
		fclose(fp);
		int rc = gq_ckpt_open(&c, path_in("corrupt", ""));
		CHECK(rc != GQ_OK && strstr(gq_errmsg(), "model.safetensors"));
		if (rc == GQ_OK)
			gq_ckpt_close(c);
	}
	/* trailing bytes are not silently ignored */
	fp = fopen(path_in("corrupt", "model.safetensors"), "wb");
	fwrite(buf, 1, len, fp);
	fwrite("junk", 1, 4, fp);
	fclose(fp);
	CHECK_ERR(gq_ckpt_open(&c, path_in("corrupt", "")), GQ_ERR_FORMAT,
		  "4 bytes after the last tensor are not covered");
	/* a header that claims more data than the file holds */
	fp = fopen(path_in("corrupt", "model.safetensors"), "wb");
	const char *h = "{\"t\":{\"dtype\":\"F32\",\"shape\":[1000000],\"data_offsets\":[0,4000000]}}";
	uint64_t hl = strlen(h);
	fwrite(&hl, 8, 1, fp);
	fwrite(h, 1, hl, fp);
	fclose(fp);
	CHECK_ERR(gq_ckpt_open(&c, path_in("corrupt", "")), GQ_ERR_FORMAT,
		  "truncated: tensors need 4000000 bytes of data but the file has 0");
	free(buf);
}

int main(void)
{
	CHECK(mkdtemp(dir) != NULL);
	RUN(test_shared_fixtures);
	RUN(test_single_and_indexed);
	RUN(test_hostile_index);
	RUN(test_corrupt_shards);
	char cmd[600];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", dir);
	return check_done();
}
