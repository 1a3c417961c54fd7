/*
 * tok_bpe.c - the BPE model: one pre-tokenized word to ids, as HF's
 * models::bpe does it (BPE::merge_word, then Word::merge_all).
 *
 * A word starts as one symbol per character (a character missing from the
 * vocab becomes its <0xXX> byte tokens with byte_fallback, else unk, fused
 * or not, else nothing); then the pair with the lowest merge rank is merged,
 * the leftmost one on ties, until no pair has a merge. bpe_merge_ref is that
 * sentence as code, rescanning every pair after each merge (O(n^2)); the
 * fast bpe_merge keeps the candidate pairs in a heap over a linked list of
 * symbols (O(n log n)). The unit tests compare the two on many words.
 */
#include "tok_impl.h"

#include <stdlib.h>
#include <string.h>

#define CACHE_WORD_MAX 64          /* longer words are rare: not cached */
#define CACHE_ENTRIES (1 << 16)    /* bounds the cache of one call */

void tok_bpe_free(tok_ctx *c)
{
	tok_bpe_scratch *s = &c->bpe;

	free(s->id);
	free(s->prev);
	free(s->next);
	free(s->heap);
	free(s->heap_new);
	memset(s, 0, sizeof *s);
	gq_strmap_free(&c->cache);
	free(c->cache_ids.v);
	memset(&c->cache_ids, 0, sizeof c->cache_ids);
}

static int scratch_reserve(tok_bpe_scratch *s, size_t n)
{
	size_t c1 = s->cap, c2 = s->cap, c3 = s->cap;

	if (n <= s->cap)
		return GQ_OK;
	if (tok_grow((void **)&s->id, &c1, n, sizeof *s->id) ||
	    tok_grow((void **)&s->prev, &c2, n, sizeof *s->prev) ||
	    tok_grow((void **)&s->next, &c3, n, sizeof *s->next))
		return GQ_ERR_NOMEM;
	s->cap = c1;
	return GQ_OK;
}

/* The merge of the pair (a, b): its rank and the merged id. */
static inline int find_merge(const gq_tokenizer *t, int32_t a, int32_t b, uint32_t *rank,
			     int32_t *merged)
{
	int32_t key[2] = {a, b};
	int64_t v;

	if (!gq_strmap_getn(&t->merges, (const char *)key, sizeof key, &v))
		return 0;
	*rank = (uint32_t)(v >> 32);
	*merged = (int32_t)(v & 0xFFFFFFFF);
	return 1;
}

/* The word's initial symbols into s->id (at most len of them); returns the count. */
static size_t word_symbols(const gq_tokenizer *t, tok_bpe_scratch *s, const char *w, size_t len)
{
	size_t n = 0;
	int unk = 0; /* an unk is pending: fuse_unk may still extend it */

	for (size_t i = 0, l; i < len; i += l) {
		uint32_t cp;
		int64_t id = -1;
		size_t k;

		l = tok_utf8_get(w + i, &cp);
		if (cp < 0x10000)
			id = t->char_id[cp];
		else if (!gq_strmap_getn(&t->vocab, w + i, l, &id))
			id = -1;
		if (id >= 0) {
			if (unk)
				s->id[n++] = t->unk;
			unk = 0;
			s->id[n++] = (int32_t)id;
			continue;
		}
		for (k = 0; t->byte_fallback && k < l && t->byte_id[(uint8_t)w[i + k]] >= 0; k++)
			;
		if (t->byte_fallback && k == l) {
			/* as in HF, a pending unk is not flushed first: it lands after these */
			for (k = 0; k < l; k++)
				s->id[n++] = t->byte_id[(uint8_t)w[i + k]];
		} else if (t->unk >= 0) {
			if (unk && !t->fuse_unk)
				s->id[n++] = t->unk;
			unk = 1;
		}
	}
	if (unk)
		s->id[n++] = t->unk;
	return n;
}

/* The reference merge loop: rescan every pair, merge the best, repeat. */
static size_t bpe_merge_ref(const gq_tokenizer *t, int32_t *id, size_t n)
{
	while (n > 1) {
		uint32_t best = UINT32_MAX, rank;
		int32_t best_id = -1, merged;
		size_t at = 0;

		for (size_t i = 0; i + 1 < n; i++)
			if (find_merge(t, id[i], id[i + 1], &rank, &merged) && rank < best) {
				best = rank;
				best_id = merged;
				at = i;
			}
		if (best_id < 0)
			break;
		id[at] = best_id;
		memmove(id + at + 1, id + at + 2, (n - at - 2) * sizeof *id);
		n--;
	}
	return n;
}

static int heap_push(tok_bpe_scratch *s, uint64_t key, int32_t merged)
{
	size_t i = s->n_heap, c2 = s->heap_cap;

	if (i == s->heap_cap) {
		if (tok_grow((void **)&s->heap, &s->heap_cap, i + 1, sizeof *s->heap) ||
		    tok_grow((void **)&s->heap_new, &c2, i + 1, sizeof *s->heap_new))
			return GQ_ERR_NOMEM;
	}
	for (; i > 0 && s->heap[(i - 1) / 2] > key; i = (i - 1) / 2) {
		s->heap[i] = s->heap[(i - 1) / 2];
		s->heap_new[i] = s->heap_new[(i - 1) / 2];
	}
	s->heap[i] = key;
	s->heap_new[i] = merged;
	s->n_heap++;
	return GQ_OK;
}

static void heap_pop(tok_bpe_scratch *s, uint64_t *key, int32_t *merged)
{
	uint64_t last = s->heap[--s->n_heap];
	int32_t last_new = s->heap_new[s->n_heap];
	size_t i = 0, n = s->n_heap;

	*key = s->heap[0];
	*merged = s->heap_new[0];
	for (;;) {
		size_t k = 2 * i + 1;

		if (k >= n)
			break;
		if (k + 1 < n && s->heap[k + 1] < s->heap[k])
			k++;
		if (s->heap[k] >= last)
			break;
		s->heap[i] = s->heap[k];
		s->heap_new[i] = s->heap_new[k];
		i = k;
	}
	if (n) {
		s->heap[i] = last;
		s->heap_new[i] = last_new;
	}
}

/*
 * The fast merge loop. A heap entry (rank, left position, merged id) may go
 * stale when a neighbour merges first; it is skipped when popped if the
 * pair now at that position no longer merges into the same id, exactly
 * HF's check (the merged id names the pair: symbols only grow).
 */
static int bpe_merge(const gq_tokenizer *t, tok_bpe_scratch *s, size_t n, size_t *n_out)
{
	int32_t *id = s->id, *prev = s->prev, *next = s->next;
	uint32_t rank;
	int32_t merged;
	size_t k;

	s->n_heap = 0;
	for (size_t i = 0; i < n; i++) {
		prev[i] = (int32_t)i - 1;
		next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
		if (i + 1 < n && find_merge(t, id[i], id[i + 1], &rank, &merged) &&
		    heap_push(s, (uint64_t)rank << 32 | i, merged))
			return GQ_ERR_NOMEM;
	}
	while (s->n_heap) {
		uint64_t key;
		int32_t want, pos, q;

		heap_pop(s, &key, &want);
		pos = (int32_t)(key & 0xFFFFFFFF);
		q = next[pos];
		if (id[pos] < 0 || q < 0 || !find_merge(t, id[pos], id[q], &rank, &merged) ||
		    merged != want)
			continue;
		id[pos] = merged;
		id[q] = -1; /* dead: only a right symbol ever dies, so symbol 0 lives */
		next[pos] = next[q];
		if (next[q] >= 0)
			prev[next[q]] = pos;
		if (prev[pos] >= 0 && find_merge(t, id[prev[pos]], merged, &rank, &want) &&
		    heap_push(s, (uint64_t)rank << 32 | (uint32_t)prev[pos], want))
			return GQ_ERR_NOMEM;
		if (next[pos] >= 0 && find_merge(t, merged, id[next[pos]], &rank, &want) &&
		    heap_push(s, (uint64_t)rank << 32 | (uint32_t)pos, want))
			return GQ_ERR_NOMEM;
	}
	k = 0;
	for (int32_t i = 0; i >= 0; i = next[i])
		id[k++] = id[i];
	*n_out = k;
	return GQ_OK;
}

static int append(tok_ids *out, const int32_t *v, size_t n)
{
	if (!n) /* v may be NULL then */
		return GQ_OK;
	if (out->n + n > out->cap &&
	    tok_grow((void **)&out->v, &out->cap, out->n + n, sizeof *out->v))
		return GQ_ERR_NOMEM;
	memcpy(out->v + out->n, v, n * sizeof *v);
	out->n += n;
	return GQ_OK;
}

/*
 * The fast path remembers the ids of each short word for the rest of the
 * call (as HF's BPE cache does): text repeats its words, and one hash lookup
 * replaces a merge loop.
 */
int tok_bpe_word(tok_ctx *c, const char *w, size_t len, tok_ids *out)
{
	const gq_tokenizer *t = c->t;
	tok_bpe_scratch *s = &c->bpe;
	int cacheable = !c->ref && len <= CACHE_WORD_MAX;
	size_t n;
	int64_t v;

	if (!len)
		return GQ_OK;
	if (t->ignore_merges && gq_strmap_getn(&t->vocab, w, len, &v))
		return tok_ids_push(out, (int32_t)v);
	if (cacheable && gq_strmap_getn(&c->cache, w, len, &v))
		return append(out, c->cache_ids.v + (v >> 16), (size_t)(v & 0xFFFF));
	if (scratch_reserve(s, len))
		return GQ_ERR_NOMEM;
	n = word_symbols(t, s, w, len);
	if (c->ref)
		n = bpe_merge_ref(t, s->id, n);
	else if (n > 1 && bpe_merge(t, s, n, &n))
		return GQ_ERR_NOMEM;
	/* words without ids are not cached: an empty cache_ids has no array to point into */
	if (cacheable && n && c->cache.n < CACHE_ENTRIES) {
		v = (int64_t)c->cache_ids.n << 16 | (int64_t)n;
		if (append(&c->cache_ids, s->id, n) || gq_strmap_putn(&c->cache, w, len, v))
			return GQ_ERR_NOMEM;
	}
	return append(out, s->id, n);
}
