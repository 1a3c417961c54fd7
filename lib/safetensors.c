/*
 * safetensors.c - strict header parser and header builder.
 *
 * The parser trusts nothing: numbers must be exact integers below 2^53,
 * sizes are multiplied with overflow checks, names must be unique, and the
 * tensors must tile the data section exactly (no overlap, no hole), as the
 * format's reference implementation demands.
 */
#include "safetensors.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EXACT_INT 9007199254740992.0 /* 2^53: every integer below is a double */

void gq_st_header_free(gq_st_header *h)
{
	for (int i = 0; i < h->n_tensors; i++)
		free(h->tensors[i].name);
	for (int i = 0; i < h->n_meta; i++) {
		free(h->meta_keys[i]);
		free(h->meta_vals[i]);
	}
	free(h->tensors);
	free(h->meta_keys);
	free(h->meta_vals);
	memset(h, 0, sizeof *h);
}

/* Length of the valid UTF-8 prefix of s[0..n). */
static size_t utf8_valid_prefix(const unsigned char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		unsigned c = s[i];
		size_t len;
		uint32_t cp;

		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; }
		else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0f; }
		else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; }
		else return i;
		if (n - i < len)
			return i;
		for (size_t k = 1; k < len; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return i;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
		    (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
			return i;
		i += len;
	}
	return i;
}

static int json_uint(const cJSON *v, uint64_t *out)
{
	double d;

	if (!cJSON_IsNumber(v))
		return -1;
	d = v->valuedouble;
	if (!(d >= 0 && d < MAX_EXACT_INT) || d != (double)(uint64_t)d)
		return -1;
	*out = (uint64_t)d;
	return 0;
}

static int parse_metadata(const cJSON *m, gq_st_header *h)
{
	const cJSON *kv;
	int n = cJSON_GetArraySize(m);

	if (!cJSON_IsObject(m))
		return gq_err(GQ_ERR_FORMAT, "__metadata__ is not an object");
	h->meta_keys = calloc((size_t)n + 1, sizeof(char *));
	h->meta_vals = calloc((size_t)n + 1, sizeof(char *));
	if (!h->meta_keys || !h->meta_vals)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	cJSON_ArrayForEach(kv, m) {
		if (!cJSON_IsString(kv))
			return gq_err(GQ_ERR_FORMAT, "__metadata__ value of '%s' is not a string",
				      kv->string);
		for (int i = 0; i < h->n_meta; i++)
			if (strcmp(h->meta_keys[i], kv->string) == 0)
				return gq_err(GQ_ERR_FORMAT, "duplicate __metadata__ key '%s'",
					      kv->string);
		h->meta_keys[h->n_meta] = strdup(kv->string);
		h->meta_vals[h->n_meta] = strdup(kv->valuestring);
		h->n_meta++;
		if (!h->meta_keys[h->n_meta - 1] || !h->meta_vals[h->n_meta - 1])
			return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	return GQ_OK;
}

static int parse_entry(const cJSON *t, gq_st_entry *e)
{
	const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(t, "dtype");
	const cJSON *shape = cJSON_GetObjectItemCaseSensitive(t, "shape");
	const cJSON *offs = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
	const cJSON *d;
	uint64_t numel = 1, nbytes, begin, end;
	int dt;

	if (!cJSON_IsObject(t))
		return gq_err(GQ_ERR_FORMAT, "tensor '%s': entry is not an object", e->name);
	if (!cJSON_IsString(dtype))
		return gq_err(GQ_ERR_FORMAT, "tensor '%s': missing dtype", e->name);
	dt = gq_dtype_from_name(dtype->valuestring);
	if (dt < 0)
		return gq_err(GQ_ERR_FORMAT, "tensor '%s': unknown dtype '%s'", e->name,
			      dtype->valuestring);
	e->dtype = (gq_dtype)dt;
	if (!cJSON_IsArray(shape))
		return gq_err(GQ_ERR_FORMAT, "tensor '%s': missing shape", e->name);
	if (cJSON_GetArraySize(shape) > GQ_MAX_DIMS)
		return gq_err(GQ_ERR_FORMAT, "tensor '%s': %d dimensions (at most %d)", e->name,
			      cJSON_GetArraySize(shape), GQ_MAX_DIMS);
	cJSON_ArrayForEach(d, shape) {
		uint64_t dim;

		if (json_uint(d, &dim))
			return gq_err(GQ_ERR_FORMAT,
				      "tensor '%s': shape holds something other than a size",
				      e->name);
		if (gq_mul_u64(numel, dim, &numel))
			return gq_err(GQ_ERR_FORMAT, "tensor '%s': shape overflows 64 bits",
				      e->name);
		e->shape[e->ndim++] = (int64_t)dim;
	}
	if (gq_mul_u64(numel, gq_dtype_size(e->dtype), &nbytes))
		return gq_err(GQ_ERR_FORMAT, "tensor '%s': byte size overflows 64 bits", e->name);
	if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
	    json_uint(cJSON_GetArrayItem(offs, 0), &begin) ||
	    json_uint(cJSON_GetArrayItem(offs, 1), &end))
		return gq_err(GQ_ERR_FORMAT,
			      "tensor '%s': data_offsets is not a pair of sizes below 2^53",
			      e->name);
	if (end < begin)
		return gq_err(GQ_ERR_FORMAT, "tensor '%s': data_offsets [%llu, %llu] end before begin",
			      e->name, (unsigned long long)begin, (unsigned long long)end);
	if (end - begin != nbytes) {
		char dims[256] = "";
		size_t o = 0;

		for (int i = 0; i < e->ndim && o < sizeof dims - 24; i++)
			o += (size_t)snprintf(dims + o, sizeof dims - o, "%s%lld", i ? ", " : "",
					      (long long)e->shape[i]);
		return gq_err(GQ_ERR_FORMAT,
			      "tensor '%s': data_offsets [%llu, %llu] hold %llu bytes but shape [%s] "
			      "x %s needs %llu",
			      e->name, (unsigned long long)begin, (unsigned long long)end,
			      (unsigned long long)(end - begin), dims, gq_dtype_name(e->dtype),
			      (unsigned long long)nbytes);
	}
	e->begin = begin;
	e->end = end;
	return GQ_OK;
}

static int cmp_name(const void *a, const void *b)
{
	return strcmp((*(const gq_st_entry *const *)a)->name, (*(const gq_st_entry *const *)b)->name);
}

static int cmp_range(const void *a, const void *b)
{
	const gq_st_entry *x = *(const gq_st_entry *const *)a, *y = *(const gq_st_entry *const *)b;

	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	if (x->end != y->end)
		return x->end < y->end ? -1 : 1;
	return 0;
}

/* Names unique; ranges tile [0, data_len). Sets h->data_len. */
static int check_layout(gq_st_header *h)
{
	gq_st_entry **v;
	uint64_t pos = 0;
	int rc = GQ_OK;

	h->data_len = 0;
	if (h->n_tensors == 0)
		return GQ_OK;
	v = malloc((size_t)h->n_tensors * sizeof *v);
	if (!v)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	for (int i = 0; i < h->n_tensors; i++)
		v[i] = &h->tensors[i];
	qsort(v, (size_t)h->n_tensors, sizeof *v, cmp_name);
	for (int i = 1; i < h->n_tensors && rc == GQ_OK; i++)
		if (strcmp(v[i - 1]->name, v[i]->name) == 0)
			rc = gq_err(GQ_ERR_FORMAT, "duplicate tensor name '%s'", v[i]->name);
	qsort(v, (size_t)h->n_tensors, sizeof *v, cmp_range);
	for (int i = 0; i < h->n_tensors && rc == GQ_OK; i++) {
		if (v[i]->begin > pos)
			rc = gq_err(GQ_ERR_FORMAT,
				    "tensor '%s': data_offsets [%llu, %llu] leave bytes [%llu, %llu) "
				    "not covered by any tensor",
				    v[i]->name, (unsigned long long)v[i]->begin,
				    (unsigned long long)v[i]->end, (unsigned long long)pos,
				    (unsigned long long)v[i]->begin);
		else if (v[i]->begin < pos)
			rc = gq_err(GQ_ERR_FORMAT,
				    "tensor '%s': data_offsets [%llu, %llu] overlap tensor '%s'",
				    v[i]->name, (unsigned long long)v[i]->begin,
				    (unsigned long long)v[i]->end, v[i - 1]->name);
		pos = v[i]->end;
	}
	free(v);
	h->data_len = pos;
	return rc;
}

int gq_st_parse(const char *json, size_t len, uint64_t json_offset, gq_st_header *h)
{
	const char *end = NULL;
	cJSON *root, *item;
	size_t valid;
	int rc = GQ_OK, n;

	memset(h, 0, sizeof *h);
	valid = utf8_valid_prefix((const unsigned char *)json, len);
	if (valid != len)
		return gq_err(GQ_ERR_FORMAT, "header is not valid UTF-8 at byte %llu",
			      (unsigned long long)(json_offset + valid));
	root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
	if (!root) {
		size_t at = end && end >= json && end <= json + len ? (size_t)(end - json) : len;
		/* cJSON points at the failing byte, or past the end when input ran out */
		return gq_err(GQ_ERR_FORMAT, "header is not valid JSON (error at byte %llu)",
			      (unsigned long long)(json_offset + at));
	}
	for (const char *p = end; p < json + len; p++)
		if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
			cJSON_Delete(root);
			return gq_err(GQ_ERR_FORMAT, "junk after the header JSON at byte %llu",
				      (unsigned long long)(json_offset + (uint64_t)(p - json)));
		}
	if (!cJSON_IsObject(root)) {
		cJSON_Delete(root);
		return gq_err(GQ_ERR_FORMAT, "header is not a JSON object");
	}
	n = cJSON_GetArraySize(root);
	h->tensors = calloc((size_t)n + 1, sizeof *h->tensors);
	if (!h->tensors) {
		cJSON_Delete(root);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	cJSON_ArrayForEach(item, root) {
		gq_st_entry *e;

		if (strcmp(item->string, "__metadata__") == 0) {
			if (h->meta_keys)
				rc = gq_err(GQ_ERR_FORMAT, "duplicate __metadata__");
			else
				rc = parse_metadata(item, h);
			if (rc)
				break;
			continue;
		}
		if (!item->string[0]) {
			rc = gq_err(GQ_ERR_FORMAT, "tensor with an empty name");
			break;
		}
		e = &h->tensors[h->n_tensors++];
		e->name = strdup(item->string);
		if (!e->name) {
			rc = gq_err(GQ_ERR_NOMEM, "out of memory");
			break;
		}
		rc = parse_entry(item, e);
		if (rc)
			break;
	}
	cJSON_Delete(root);
	if (rc == GQ_OK)
		rc = check_layout(h);
	if (rc)
		gq_st_header_free(h);
	return rc;
}

const gq_st_entry *gq_st_find(const gq_st_header *h, const char *name)
{
	for (int i = 0; i < h->n_tensors; i++)
		if (strcmp(h->tensors[i].name, name) == 0)
			return &h->tensors[i];
	return NULL;
}

const char *gq_st_meta(const gq_st_header *h, const char *key)
{
	for (int i = 0; i < h->n_meta; i++)
		if (strcmp(h->meta_keys[i], key) == 0)
			return h->meta_vals[i];
	return NULL;
}

gq_tensor gq_st_view(const gq_st_entry *e, const uint8_t *data)
{
	gq_tensor t;

	memset(&t, 0, sizeof t);
	t.name = e->name;
	t.dtype = e->dtype;
	t.ndim = e->ndim;
	memcpy(t.shape, e->shape, sizeof t.shape);
	t.data = data ? data + e->begin : NULL;
	t.nbytes = e->end - e->begin;
	return t;
}

void gq_stb_init(gq_st_builder *b)
{
	memset(b, 0, sizeof *b);
}

void gq_stb_free(gq_st_builder *b)
{
	for (int i = 0; i < b->n; i++)
		free((char *)b->tensors[i].name);
	for (int i = 0; i < b->n_meta; i++) {
		free(b->meta_keys[i]);
		free(b->meta_vals[i]);
	}
	free(b->tensors);
	free(b->meta_keys);
	free(b->meta_vals);
	memset(b, 0, sizeof *b);
}

int gq_stb_meta(gq_st_builder *b, const char *key, const char *val)
{
	char *v = strdup(val);

	if (!v)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	for (int i = 0; i < b->n_meta; i++)
		if (strcmp(b->meta_keys[i], key) == 0) {
			free(b->meta_vals[i]);
			b->meta_vals[i] = v;
			return GQ_OK;
		}
	if (b->n_meta == b->cap_meta) {
		int cap = b->cap_meta ? 2 * b->cap_meta : 8;
		char **keys = realloc(b->meta_keys, (size_t)cap * sizeof *keys);
		char **vals = keys ? realloc(b->meta_vals, (size_t)cap * sizeof *vals) : NULL;

		if (keys)
			b->meta_keys = keys;
		if (!vals) {
			free(v);
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		}
		b->meta_vals = vals;
		b->cap_meta = cap;
	}
	b->meta_keys[b->n_meta] = strdup(key);
	if (!b->meta_keys[b->n_meta]) {
		free(v);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	b->meta_vals[b->n_meta++] = v;
	return GQ_OK;
}

int gq_stb_tensor(gq_st_builder *b, const char *name, gq_dtype dtype, int ndim,
		  const int64_t *shape, const void *data)
{
	gq_tensor *t;
	uint64_t numel = 1;

	if (!gq_dtype_writable(dtype))
		return gq_err(GQ_ERR_UNSUPPORTED, "tensor '%s': cannot write dtype %s", name,
			      gq_dtype_name(dtype));
	if (ndim < 0 || ndim > GQ_MAX_DIMS || !name[0] || strcmp(name, "__metadata__") == 0)
		return gq_err(GQ_ERR_ARG, "tensor '%s': invalid name or rank", name);
	for (int i = 0; i < b->n; i++)
		if (strcmp(b->tensors[i].name, name) == 0)
			return gq_err(GQ_ERR_ARG, "duplicate tensor name '%s'", name);
	for (int i = 0; i < ndim; i++)
		if (shape[i] < 0 || gq_mul_u64(numel, (uint64_t)shape[i], &numel))
			return gq_err(GQ_ERR_ARG, "tensor '%s': invalid shape", name);
	if (b->n == b->cap) {
		int cap = b->cap ? 2 * b->cap : 8;
		gq_tensor *nt = realloc(b->tensors, (size_t)cap * sizeof *nt);

		if (!nt)
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		b->tensors = nt;
		b->cap = cap;
	}
	t = &b->tensors[b->n];
	memset(t, 0, sizeof *t);
	t->name = strdup(name);
	if (!t->name)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	t->dtype = dtype;
	t->ndim = ndim;
	for (int i = 0; i < ndim; i++)
		t->shape[i] = shape[i];
	t->data = data;
	if (gq_mul_u64(numel, gq_dtype_size(dtype), &t->nbytes)) {
		free((char *)t->name);
		return gq_err(GQ_ERR_ARG, "tensor '%s': size overflows", name);
	}
	b->n++;
	return GQ_OK;
}

int gq_stb_header(const gq_st_builder *b, char **json, size_t *len, int **order,
		  uint64_t *data_len)
{
	gq_buf s = {0};
	int *ord = malloc(((size_t)b->n + 1) * sizeof *ord);
	uint64_t pos = 0;
	int k = 0;

	if (!ord)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	/* stable order by element size, largest first: keeps every tensor aligned */
	for (size_t size = 8; size >= 1 && !b->keep_order; size /= 2)
		for (int i = 0; i < b->n; i++)
			if (gq_dtype_size(b->tensors[i].dtype) == size)
				ord[k++] = i;
	for (int i = 0; i < b->n && b->keep_order; i++)
		ord[k++] = i;
	gq_buf_append(&s, "{", 1);
	if (b->n_meta) {
		gq_buf_append(&s, "\"__metadata__\":{", 16);
		for (int i = 0; i < b->n_meta; i++) {
			if (i)
				gq_buf_append(&s, ",", 1);
			gq_buf_json_string(&s, b->meta_keys[i]);
			gq_buf_append(&s, ":", 1);
			gq_buf_json_string(&s, b->meta_vals[i]);
		}
		gq_buf_append(&s, "}", 1);
	}
	for (int j = 0; j < k; j++) {
		const gq_tensor *t = &b->tensors[ord[j]];

		if (j || b->n_meta)
			gq_buf_append(&s, ",", 1);
		gq_buf_json_string(&s, t->name);
		gq_buf_printf(&s, ":{\"dtype\":\"%s\",\"shape\":[", gq_dtype_name(t->dtype));
		for (int d = 0; d < t->ndim; d++)
			gq_buf_printf(&s, "%s%lld", d ? "," : "", (long long)t->shape[d]);
		gq_buf_printf(&s, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)pos,
			      (unsigned long long)(pos + t->nbytes));
		pos += t->nbytes;
	}
	gq_buf_append(&s, "}", 1);
	while ((8 + s.len) % 8)
		gq_buf_append(&s, " ", 1);
	if (s.failed || s.len > GQ_ST_MAX_HEADER) {
		int code = s.failed ? GQ_ERR_NOMEM : GQ_ERR_ARG;

		gq_buf_free(&s);
		free(ord);
		return gq_err(code, "header too large");
	}
	*json = s.data;
	*len = s.len;
	*order = ord;
	*data_len = pos;
	return GQ_OK;
}
