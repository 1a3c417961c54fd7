/*
 * fuzz_safetensors.c - the safetensors header parser (the JSON after the
 * 8-byte length) on arbitrary bytes. A header it accepts must survive a
 * round trip through the builder: same tensors, dtypes, shapes, metadata and
 * data length, or the parser let through something the writer cannot say.
 */
#include "fuzz.h"

#include "safetensors.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	gq_verbosity = 0;
	return 0;
}

static void roundtrip(const gq_st_header *h)
{
	gq_st_builder b;
	gq_st_header h2;
	char *json;
	size_t len;
	int *order;
	uint64_t data_len;

	for (int i = 0; i < h->n_tensors; i++)
		if (!gq_dtype_writable(h->tensors[i].dtype))
			return;
	gq_stb_init(&b);
	for (int i = 0; i < h->n_meta; i++)
		if (gq_stb_meta(&b, h->meta_keys[i], h->meta_vals[i]))
			abort();
	for (int i = 0; i < h->n_tensors; i++) {
		const gq_st_entry *e = &h->tensors[i];

		if (gq_stb_tensor(&b, e->name, e->dtype, e->ndim, e->shape, NULL))
			abort();
	}
	if (gq_stb_header(&b, &json, &len, &order, &data_len) == GQ_OK) {
		if (data_len != h->data_len || gq_st_parse(json, len, 0, &h2) != GQ_OK)
			abort();
		if (h2.n_tensors != h->n_tensors || h2.n_meta != h->n_meta)
			abort();
		for (int i = 0; i < h->n_tensors; i++) {
			const gq_st_entry *a = &h->tensors[i], *c = gq_st_find(&h2, a->name);

			if (!c || c->dtype != a->dtype || c->ndim != a->ndim ||
			    memcmp(c->shape, a->shape, sizeof a->shape) != 0 ||
			    c->end - c->begin != a->end - a->begin)
				abort();
		}
		for (int i = 0; i < h->n_meta; i++) {
			const char *v = gq_st_meta(&h2, h->meta_keys[i]);

			if (!v || strcmp(v, h->meta_vals[i]) != 0)
				abort();
		}
		gq_st_header_free(&h2);
		free(json);
		free(order);
	}
	gq_stb_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	gq_st_header h;

	if (gq_st_parse((const char *)data, size, 8, &h) == GQ_OK) {
		roundtrip(&h);
		gq_st_header_free(&h);
	}
	return 0;
}
