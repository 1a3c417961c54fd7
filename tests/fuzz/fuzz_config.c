/*
 * fuzz_config.c - config.json handling: the parser (every spelling, the
 * derived dimensions, rope, sliding windows, quantization_config) and the
 * architecture table lookup on what it accepts. Inputs holding a NUL byte
 * are also split there into config.json and quantize_config.json in a
 * directory and read by gq_config_load, the path gptq-run takes for old
 * AutoGPTQ checkpoints.
 */
#include "fuzz.h"

#include "arch.h"
#include "config.h"
#include "util.h"

#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	gq_verbosity = 0;
	return 0;
}

static void check(const gq_config *c)
{
	gq_arch a;

	/* what the model code divides by and sizes arrays with */
	if (c->n_heads < 1 || c->n_kv_heads < 1 || c->n_heads % c->n_kv_heads || c->head_dim < 1 ||
	    c->hidden < 1 || c->n_layers < 1 || c->vocab < 1 || c->intermediate < 1 ||
	    !(c->norm_eps > 0) || c->rotary_dim < 0 || c->rotary_dim > c->head_dim)
		__builtin_trap();
	gq_arch_resolve(c, &a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, 0, size);
	gq_config c;

	if (gq_config_parse(&c, (const char *)data, size, "config.json") == GQ_OK) {
		check(&c);
		gq_config_free(&c);
	}
	if (nul) {
		size_t n = (size_t)(nul - data);

		if (fuzz_write("config.json", data, n) &&
		    fuzz_write("quantize_config.json", nul + 1, size - n - 1) &&
		    gq_config_load(&c, fuzz_tmpdir()) == GQ_OK) {
			check(&c);
			gq_config_free(&c);
		}
	}
	return 0;
}
