/*
 * fuzz_checkpoint.c - the checkpoint loader on an untrusted model directory.
 *
 * Input: records of [u8 file][u32 little-endian length][bytes], the file one
 * of config.json, model.safetensors, model.safetensors.index.json,
 * model-00001-of-00002.safetensors, model-00002-of-00002.safetensors,
 * quantize_config.json (file byte modulo 6). An input whose first byte is
 * 0xff is instead one raw model.safetensors, opened as a file. The directory
 * goes through gq_ckpt_open and every tensor is read; with a config.json also
 * through gq_model_open (shape checks, quantized checkpoints' qweight/qzeros),
 * the first layer's load, and --unpack's reader of packed checkpoints.
 */
#include "fuzz.h"

#include "checkpoint.h"
#include "describe.h"
#include "model.h"
#include "packer.h"
#include "stream.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const files[] = {
	"config.json",
	"model.safetensors",
	"model.safetensors.index.json",
	"model-00001-of-00002.safetensors",
	"model-00002-of-00002.safetensors",
	"quantize_config.json",
};
#define N_FILES (sizeof files / sizeof *files)
#define MAX_READ (1u << 20) /* floats converted per tensor: inputs stay fast */

static FILE *devnull;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	gq_verbosity = 0;
	devnull = fopen("/dev/null", "wb");
	return 0;
}

static void read_tensors(const gq_ckpt *c)
{
	for (int i = 0; i < gq_ckpt_count(c); i++) {
		const char *name = gq_ckpt_name(c, i);
		gq_tensor t;
		uint64_t numel;
		float *dst;

		if (gq_ckpt_get(c, name, &t) != GQ_OK)
			__builtin_trap(); /* listed but not found */
		numel = gq_tensor_numel(&t);
		if (numel > MAX_READ || !(dst = malloc(numel * sizeof *dst + 1)))
			continue;
		if (gq_ckpt_read_f32(c, name, dst, numel) != GQ_OK)
			__builtin_trap();
		free(dst);
		gq_ckpt_release(c, name);
	}
	gq_ckpt_meta(c, "format");
}

static void open_model(void)
{
	gq_model *m;
	gq_buf b = {0};

	if (gq_model_open(&m, fuzz_tmpdir()) != GQ_OK)
		return;
	gq_describe_model(m, &b);
	gq_buf_free(&b);
	if (m->n_modules > 0) {
		gq_layer L;
		float *W;

		if (gq_layer_load(m, 0, &L) == GQ_OK)
			gq_layer_free(m, &L);
		if (gq_module_weight(m, 0, 0, &W) == GQ_OK)
			free(W);
	}
	gq_model_close(m);
	if (devnull) {
		gq_writer_opts o = {0, 1, 1};
		gq_writer *w;

		if (gq_writer_open_fp(&w, devnull, "/dev/null", &o) == GQ_OK) {
			gq_unpack_checkpoint(fuzz_tmpdir(), w);
			gq_writer_close(w, 1);
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int present[N_FILES] = {0};
	const char *path;
	gq_ckpt *c;
	size_t pos = 0;

	for (size_t i = 0; i < N_FILES; i++)
		fuzz_unlink(files[i]);
	if (size > 0 && data[0] == 0xff) {
		path = fuzz_write(files[1], data + 1, size - 1);
		if (path && gq_ckpt_open(&c, path) == GQ_OK) {
			read_tensors(c);
			gq_ckpt_close(c);
		}
		return 0;
	}
	while (size - pos >= 5) {
		size_t f = data[pos] % N_FILES;
		uint32_t len = (uint32_t)data[pos + 1] | (uint32_t)data[pos + 2] << 8 |
			       (uint32_t)data[pos + 3] << 16 | (uint32_t)data[pos + 4] << 24;

		pos += 5;
		if (len > size - pos)
			len = (uint32_t)(size - pos);
		/* a later record for the same file replaces it */
		if (!fuzz_write(files[f], data + pos, len))
			return 0;
		present[f] = 1;
		pos += len;
	}
	if (gq_ckpt_open(&c, fuzz_tmpdir()) == GQ_OK) {
		read_tensors(c);
		gq_ckpt_close(c);
	}
	if (present[0])
		open_model();
	return 0;
}
