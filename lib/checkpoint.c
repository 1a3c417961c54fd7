/*
 * checkpoint.c - shard discovery, mmap, validation and lookup.
 *
 * A shard's bytes must be exactly 8 + N + data_len: trailing bytes are as
 * much an error as missing ones (the format forbids unindexed data). File
 * names from model.safetensors.index.json are untrusted: anything with a path
 * separator or "..", or a tensor the index maps to a shard that lacks it, is
 * refused before use.
 */
#define _GNU_SOURCE
#include "checkpoint.h"
#include "io.h"
#include "safetensors.h"
#include "util.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define INDEX_NAME "model.safetensors.index.json"
#define MAX_INDEX_BYTES (256u << 20)

typedef struct {
	char *file;         /* file name within the directory */
	gq_mmap map;
	gq_st_header hdr;
	const uint8_t *data;/* start of the data section inside map */
} shard;

typedef struct {
	int shard;
	int entry;
} slot;

struct gq_ckpt {
	char *path;
	shard *shards;  /* n_shards */
	int n_shards;
	slot *order;    /* n_tensors, in shard then header order */
	int n_tensors;
	gq_strmap index; /* tensor name -> position in order */
};

static int join_path(const char *dir, const char *file, char **out)
{
	size_t n = strlen(dir) + strlen(file) + 2;

	*out = malloc(n);
	if (!*out)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	snprintf(*out, n, "%s/%s", dir, file);
	return GQ_OK;
}

/* Maps and validates path; file is its name within the checkpoint directory. */
static int open_shard(shard *s, const char *path, const char *file)
{
	const char *display = path;
	uint64_t n = 0, expect;
	int rc;

	s->file = strdup(file);
	if (!s->file)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	rc = gq_mmap_open(&s->map, path);
	if (rc)
		return rc;
	if (s->map.size < 8)
		return gq_err(GQ_ERR_FORMAT, "%s: truncated: %zu bytes, too short for a header length",
			      display, s->map.size);
	for (int i = 7; i >= 0; i--)
		n = n << 8 | s->map.data[i];
	if (n > GQ_ST_MAX_HEADER)
		return gq_err(GQ_ERR_FORMAT, "%s: header length %llu exceeds the limit of %llu bytes",
			      display, (unsigned long long)n, GQ_ST_MAX_HEADER);
	if (n > s->map.size - 8)
		return gq_err(GQ_ERR_FORMAT,
			      "%s: truncated: header needs %llu bytes but the file has %zu left",
			      display, (unsigned long long)n, s->map.size - 8);
	rc = gq_st_parse((const char *)s->map.data + 8, (size_t)n, 8, &s->hdr);
	if (rc)
		return gq_err_wrap(rc, "%s", display);
	expect = 8 + n + s->hdr.data_len;
	if (expect > s->map.size)
		return gq_err(GQ_ERR_FORMAT,
			      "%s: truncated: tensors need %llu bytes of data but the file has %llu",
			      display, (unsigned long long)s->hdr.data_len,
			      (unsigned long long)(s->map.size - 8 - n));
	if (expect < s->map.size)
		return gq_err(GQ_ERR_FORMAT,
			      "%s: %llu bytes after the last tensor are not covered by any tensor",
			      display, (unsigned long long)(s->map.size - expect));
	s->data = s->map.data + 8 + n;
	/*
	 * The header now lives in s->hdr: drop the pages reading it mapped (the
	 * kernel maps 64 KiB around a fault), or a checkpoint of thousands of
	 * shards would keep hundreds of MB resident before any tensor is read.
	 */
	madvise((void *)s->map.data, s->map.size, MADV_DONTNEED);
	return GQ_OK;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Shard names from the index (unique, sorted) and checks of its weight_map. */
static int read_index(const char *dir, char ***files, int *n_files, cJSON **map_out)
{
	char *path, *text;
	size_t len;
	cJSON *root, *map, *kv;
	int rc, n = 0;
	char **v;

	rc = join_path(dir, INDEX_NAME, &path);
	if (rc)
		return rc;
	rc = gq_read_file(path, MAX_INDEX_BYTES, &text, &len);
	if (rc) {
		free(path);
		return rc;
	}
	root = cJSON_ParseWithLength(text, len);
	free(text);
	if (!root) {
		rc = gq_err(GQ_ERR_FORMAT, "%s: not valid JSON", path);
		free(path);
		return rc;
	}
	map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
	if (!cJSON_IsObject(map)) {
		cJSON_Delete(root);
		rc = gq_err(GQ_ERR_FORMAT, "%s: no weight_map object", path);
		free(path);
		return rc;
	}
	v = calloc((size_t)cJSON_GetArraySize(map) + 1, sizeof *v);
	if (!v) {
		cJSON_Delete(root);
		free(path);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	cJSON_ArrayForEach(kv, map) {
		if (!cJSON_IsString(kv) || !gq_safe_filename(kv->valuestring)) {
			rc = gq_err(GQ_ERR_FORMAT, "%s: tensor '%s' maps to an invalid file name", path,
				    kv->string);
			break;
		}
		v[n++] = kv->valuestring;
	}
	free(path);
	if (rc) {
		free(v);
		cJSON_Delete(root);
		return rc;
	}
	qsort(v, (size_t)n, sizeof *v, cmp_str);
	*n_files = 0;
	for (int i = 0; i < n; i++)
		if (i == 0 || strcmp(v[i], v[i - 1]) != 0)
			v[(*n_files)++] = v[i];
	*files = v; /* strings borrowed from *map_out */
	*map_out = root;
	return GQ_OK;
}

static int list_files(const char *dir, int shards, char ***files, int *n_files);

/*
 * model-00001-of-00004.safetensors style names, sorted, when there is no
 * index; failing those, a lone *.safetensors file (AutoGPTQ names its output
 * after model_file_base_name, e.g. gptq_model-4bit-128g.safetensors).
 */
static int list_shard_files(const char *dir, char ***files, int *n_files)
{
	int rc = list_files(dir, 1, files, n_files);

	if (rc || *n_files > 0)
		return rc;
	free(*files);
	if ((rc = list_files(dir, 0, files, n_files)) || *n_files <= 1)
		return rc;
	for (int i = 0; i < *n_files; i++)
		free((*files)[i]);
	free(*files);
	*n_files = 0;
	*files = NULL;
	return gq_err(GQ_ERR_NOTFOUND, "'%s' has several .safetensors files and no %s to say which "
		      "hold the model", dir, INDEX_NAME);
}

/* Sorted names in dir: model-*-of-*.safetensors shards, or with shards 0 any *.safetensors. */
static int list_files(const char *dir, int shards, char ***files, int *n_files)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char **v = NULL;
	int n = 0, cap = 0;

	if (!d)
		return gq_err(GQ_ERR_IO, "cannot open '%s': %s", dir, strerror(errno));
	while ((e = readdir(d))) {
		unsigned a, b;
		char tail[32];
		size_t len = strlen(e->d_name);

		if (shards ? sscanf(e->d_name, "model-%u-of-%u.safetensor%31s", &a, &b, tail) != 3 ||
				     strcmp(tail, "s") != 0
			   : len <= 12 || strcmp(e->d_name + len - 12, ".safetensors") != 0)
			continue;
		if (n == cap) {
			char **nv = realloc(v, (size_t)(cap = cap ? cap * 2 : 8) * sizeof *v);
			if (!nv)
				break;
			v = nv;
		}
		if (!(v[n] = strdup(e->d_name)))
			break;
		n++;
	}
	closedir(d);
	if (e) {
		for (int i = 0; i < n; i++)
			free(v[i]);
		free(v);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	if (n > 0)
		qsort(v, (size_t)n, sizeof *v, cmp_str);
	*files = v;
	*n_files = n;
	return GQ_OK;
}

static int build_lookup(gq_ckpt *c)
{
	int total = 0, k = 0;

	for (int s = 0; s < c->n_shards; s++)
		total += c->shards[s].hdr.n_tensors;
	c->order = calloc((size_t)total + 1, sizeof *c->order);
	if (!c->order)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	for (int s = 0; s < c->n_shards; s++)
		for (int i = 0; i < c->shards[s].hdr.n_tensors; i++) {
			const char *name = c->shards[s].hdr.tensors[i].name;
			int64_t prev;

			if (gq_strmap_get(&c->index, name, &prev))
				return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s' appears in both %s and %s",
					      c->path, name, c->shards[c->order[prev].shard].file,
					      c->shards[s].file);
			if (gq_strmap_put(&c->index, name, k))
				return GQ_ERR_NOMEM;
			c->order[k].shard = s;
			c->order[k].entry = i;
			k++;
		}
	c->n_tensors = k;
	return GQ_OK;
}

/* Every weight_map entry must name a tensor present in the shard it points to. */
static int check_index(const gq_ckpt *c, const cJSON *root)
{
	const cJSON *kv;

	cJSON_ArrayForEach(kv, cJSON_GetObjectItemCaseSensitive(root, "weight_map")) {
		int64_t pos;

		if (!gq_strmap_get(&c->index, kv->string, &pos))
			return gq_err(GQ_ERR_FORMAT, "%s: index maps tensor '%s' to %s, which lacks it",
				      c->path, kv->string, kv->valuestring);
		if (strcmp(c->shards[c->order[pos].shard].file, kv->valuestring) != 0)
			return gq_err(GQ_ERR_FORMAT, "%s: index maps tensor '%s' to %s but it is in %s",
				      c->path, kv->string, kv->valuestring,
				      c->shards[c->order[pos].shard].file);
	}
	return GQ_OK;
}

int gq_ckpt_open(gq_ckpt **out, const char *path)
{
	gq_ckpt *c = calloc(1, sizeof *c);
	struct stat st;
	char **files = NULL, *single = NULL;
	cJSON *index_root = NULL;
	int n_files = 0, rc = GQ_OK, files_owned = 0;

	if (!c || !(c->path = strdup(path))) {
		free(c);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	if (stat(path, &st) != 0) {
		rc = gq_err(GQ_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
		goto out;
	}
	if (S_ISDIR(st.st_mode)) {
		char *probe;

		if ((rc = join_path(path, INDEX_NAME, &probe)))
			goto out;
		int has_index = access(probe, F_OK) == 0;
		free(probe);
		if ((rc = join_path(path, "model.safetensors", &probe)))
			goto out;
		int has_single = access(probe, F_OK) == 0;
		free(probe);
		if (has_index) {
			rc = read_index(path, &files, &n_files, &index_root);
		} else if (has_single) {
			single = "model.safetensors";
			files = &single;
			n_files = 1;
		} else {
			rc = list_shard_files(path, &files, &n_files);
			files_owned = 1;
			if (rc == GQ_OK && n_files == 0)
				rc = gq_err(GQ_ERR_NOTFOUND,
					    "'%s' has no model.safetensors, %s, model-*-of-*.safetensors or other "
					    "*.safetensors file",
					    path, INDEX_NAME);
		}
		if (rc)
			goto out;
	}
	c->n_shards = S_ISDIR(st.st_mode) ? n_files : 1;
	c->shards = calloc((size_t)c->n_shards, sizeof *c->shards);
	if (!c->shards) {
		rc = gq_err(GQ_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (int i = 0; i < c->n_shards && rc == GQ_OK; i++) {
		char *full;

		if (!S_ISDIR(st.st_mode)) {
			rc = open_shard(&c->shards[i], path, path);
			continue;
		}
		if ((rc = join_path(path, files[i], &full)))
			break;
		rc = open_shard(&c->shards[i], full, files[i]);
		free(full);
	}
	if (rc == GQ_OK)
		rc = build_lookup(c);
	if (rc == GQ_OK && index_root)
		rc = check_index(c, index_root);
out:
	if (files_owned) {
		for (int i = 0; i < n_files; i++)
			free(files[i]);
		free(files);
	} else if (index_root) {
		free(files);
	}
	cJSON_Delete(index_root);
	if (rc) {
		gq_ckpt_close(c);
		return rc;
	}
	*out = c;
	return GQ_OK;
}

void gq_ckpt_close(gq_ckpt *c)
{
	if (!c)
		return;
	for (int i = 0; i < c->n_shards; i++) {
		gq_st_header_free(&c->shards[i].hdr);
		gq_mmap_close(&c->shards[i].map);
		free(c->shards[i].file);
	}
	free(c->shards);
	free(c->order);
	gq_strmap_free(&c->index);
	free(c->path);
	free(c);
}

const char *gq_ckpt_path(const gq_ckpt *c)
{
	return c->path;
}

int gq_ckpt_count(const gq_ckpt *c)
{
	return c->n_tensors;
}

int gq_ckpt_n_files(const gq_ckpt *c)
{
	return c->n_shards;
}

const char *gq_ckpt_file_path(const gq_ckpt *c, int i)
{
	return i >= 0 && i < c->n_shards ? c->shards[i].map.path : NULL;
}

const char *gq_ckpt_meta(const gq_ckpt *c, const char *key)
{
	for (int i = 0; i < c->n_shards; i++) {
		const char *v = gq_st_meta(&c->shards[i].hdr, key);

		if (v)
			return v;
	}
	return NULL;
}

static const gq_st_entry *entry_at(const gq_ckpt *c, int i, const shard **s)
{
	*s = &c->shards[c->order[i].shard];
	return &(*s)->hdr.tensors[c->order[i].entry];
}

const char *gq_ckpt_name(const gq_ckpt *c, int i)
{
	const shard *s;

	return i >= 0 && i < c->n_tensors ? entry_at(c, i, &s)->name : NULL;
}

static const gq_st_entry *lookup(const gq_ckpt *c, const char *name, const shard **s)
{
	int64_t pos;

	if (!gq_strmap_get(&c->index, name, &pos))
		return NULL;
	return entry_at(c, (int)pos, s);
}

const char *gq_ckpt_file_of(const gq_ckpt *c, const char *name)
{
	const shard *s;

	return lookup(c, name, &s) ? s->file : NULL;
}

int gq_ckpt_has(const gq_ckpt *c, const char *name)
{
	const shard *s;

	return lookup(c, name, &s) != NULL;
}

int gq_ckpt_get(const gq_ckpt *c, const char *name, gq_tensor *t)
{
	const shard *s;
	const gq_st_entry *e = lookup(c, name, &s);

	if (!e)
		return gq_err(GQ_ERR_NOTFOUND, "%s: no tensor '%s'", c->path, name);
	*t = gq_st_view(e, s->data);
	return GQ_OK;
}

int gq_ckpt_read_f32(const gq_ckpt *c, const char *name, float *dst, uint64_t numel)
{
	gq_tensor t;
	int rc = gq_ckpt_get(c, name, &t);

	if (rc)
		return rc;
	if (gq_tensor_numel(&t) != numel)
		return gq_err(GQ_ERR_FORMAT, "%s: tensor '%s' has %llu elements, expected %llu",
			      c->path, name, (unsigned long long)gq_tensor_numel(&t),
			      (unsigned long long)numel);
	gq_convert_to_f32(t.dtype, t.data, 0, numel, dst);
	return GQ_OK;
}

void gq_ckpt_release(const gq_ckpt *c, const char *name)
{
	gq_tensor t;
	uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), lo, hi;

	if (gq_ckpt_get(c, name, &t) || !t.nbytes)
		return;
	/*
	 * Every page the tensor touches, shared ones included: the mapping is
	 * read-only and private, so a neighbour still in use simply faults its
	 * page in again, while pages left at tensor boundaries (and those the
	 * kernel maps around a fault) would add up over thousands of tensors.
	 */
	lo = (uintptr_t)t.data & ~(page - 1);
	hi = ((uintptr_t)t.data + t.nbytes + page - 1) & ~(page - 1);
	if (hi > lo)
		madvise((void *)lo, hi - lo, MADV_DONTNEED);
}
