/*
 * tok_unicode.c - UTF-8 and Unicode for the tokenizer: strict validation,
 * Rust's lossy decoding, White_Space, Lowercase and the four normalization
 * forms (UAX #15) over the tables in tok_unicode_tables.h.
 *
 * Text handed to these functions is valid UTF-8 (tok_utf8_valid checked it
 * at the API boundary), and every output is valid UTF-8 again.
 */
#include "tok_impl.h"
#include "tok_unicode_tables.h"

#include <stdlib.h>
#include <string.h>

size_t tok_utf8_valid(const char *str, size_t len)
{
	const uint8_t *s = (const uint8_t *)str;
	size_t i = 0;

	while (i < len) {
		uint8_t b = s[i];
		size_t n;
		uint8_t lo = 0x80, hi = 0xBF; /* range of the second byte */

		if (b < 0x80) {
			i++;
			continue;
		}
		if (b >= 0xC2 && b <= 0xDF)
			n = 2;
		else if (b >= 0xE0 && b <= 0xEF)
			n = 3, lo = b == 0xE0 ? 0xA0 : 0x80, hi = b == 0xED ? 0x9F : 0xBF;
		else if (b >= 0xF0 && b <= 0xF4)
			n = 4, lo = b == 0xF0 ? 0x90 : 0x80, hi = b == 0xF4 ? 0x8F : 0xBF;
		else
			return i;
		if (len - i < n || s[i + 1] < lo || s[i + 1] > hi)
			return i;
		for (size_t k = 2; k < n; k++)
			if ((s[i + k] & 0xC0) != 0x80)
				return i;
		i += n;
	}
	return len;
}

size_t tok_utf8_get(const char *str, uint32_t *cp)
{
	const uint8_t *s = (const uint8_t *)str;

	if (s[0] < 0x80) {
		*cp = s[0];
		return 1;
	}
	if (s[0] < 0xE0) {
		*cp = (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
		return 2;
	}
	if (s[0] < 0xF0) {
		*cp = (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
		return 3;
	}
	*cp = (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 |
	      (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
	return 4;
}

size_t tok_utf8_put(char *out, uint32_t c)
{
	if (c < 0x80) {
		out[0] = (char)c;
		return 1;
	}
	if (c < 0x800) {
		out[0] = (char)(0xC0 | c >> 6);
		out[1] = (char)(0x80 | (c & 0x3F));
		return 2;
	}
	if (c < 0x10000) {
		out[0] = (char)(0xE0 | c >> 12);
		out[1] = (char)(0x80 | (c >> 6 & 0x3F));
		out[2] = (char)(0x80 | (c & 0x3F));
		return 3;
	}
	out[0] = (char)(0xF0 | c >> 18);
	out[1] = (char)(0x80 | (c >> 12 & 0x3F));
	out[2] = (char)(0x80 | (c >> 6 & 0x3F));
	out[3] = (char)(0x80 | (c & 0x3F));
	return 4;
}

size_t tok_utf8_last(const char *s, size_t len)
{
	size_t i = len - 1;

	while (i > 0 && ((uint8_t)s[i] & 0xC0) == 0x80)
		i--;
	return i;
}

void tok_utf8_lossy(gq_buf *out, const char *s, size_t len)
{
	static const char fffd[] = "\xEF\xBF\xBD";

	while (len) {
		size_t ok = tok_utf8_valid(s, len), bad;
		const uint8_t *b;

		gq_buf_append(out, s, ok);
		if (ok == len)
			return;
		s += ok;
		len -= ok;
		/*
		 * The maximal subpart: the lead byte plus the continuation bytes
		 * that still fit a well-formed sequence, replaced as one U+FFFD.
		 */
		b = (const uint8_t *)s;
		bad = 1;
		if (b[0] >= 0xC2 && b[0] <= 0xF4) {
			size_t n = b[0] < 0xE0 ? 2 : b[0] < 0xF0 ? 3 : 4;
			uint8_t lo = b[0] == 0xE0 ? 0xA0 : b[0] == 0xF0 ? 0x90 : 0x80;
			uint8_t hi = b[0] == 0xED ? 0x9F : b[0] == 0xF4 ? 0x8F : 0xBF;

			if (len > 1 && b[1] >= lo && b[1] <= hi) {
				bad = 2;
				while (bad < n && bad < len && (b[bad] & 0xC0) == 0x80)
					bad++;
			}
		}
		gq_buf_append(out, fffd, 3);
		s += bad;
		len -= bad;
	}
}

int tok_is_space(uint32_t c)
{
	return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
	       (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
	       c == 0x205F || c == 0x3000;
}

/* ---- normalization forms ---- */

enum {
	SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7,
	LCOUNT = 19, VCOUNT = 21, TCOUNT = 28, NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT,
};

static uint8_t ccc(uint32_t c)
{
	size_t lo = 0, hi = sizeof tok_ccc / sizeof tok_ccc[0];

	if (c < 0x300)
		return 0;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		uint32_t m = tok_ccc[mid] >> 8;

		if (m == c)
			return (uint8_t)tok_ccc[mid];
		if (m < c)
			lo = mid + 1;
		else
			hi = mid;
	}
	return 0;
}

static const struct tok_decomp *decomp(uint32_t c)
{
	size_t lo = 0, hi = sizeof tok_decomp / sizeof tok_decomp[0];

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (tok_decomp[mid].cp == c)
			return &tok_decomp[mid];
		if (tok_decomp[mid].cp < c)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* The composite of a + b, or 0. */
static uint32_t compose(uint32_t a, uint32_t b)
{
	size_t lo = 0, hi = sizeof tok_comp / sizeof tok_comp[0];

	if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
		return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
	if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE &&
	    b < TBASE + TCOUNT)
		return a + (b - TBASE);
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		const struct tok_comp *e = &tok_comp[mid];

		if (e->a == a && e->b == b)
			return e->c;
		if (e->a < a || (e->a == a && e->b < b))
			lo = mid + 1;
		else
			hi = mid;
	}
	return 0;
}

typedef struct {
	uint32_t *v;
	size_t n, cap;
} cp_vec;

static int cp_push(cp_vec *a, uint32_t c)
{
	if (a->n == a->cap && tok_grow((void **)&a->v, &a->cap, a->n + 1, sizeof *a->v))
		return GQ_ERR_NOMEM;
	a->v[a->n++] = c;
	return GQ_OK;
}

/* Full decomposition of c (canonical, or compatibility when compat) appended to d. */
static int decompose(cp_vec *d, uint32_t c, int compat)
{
	const struct tok_decomp *e;

	if (c >= SBASE && c < SBASE + SCOUNT) {
		uint32_t s = c - SBASE;

		if (cp_push(d, LBASE + s / NCOUNT) || cp_push(d, VBASE + s % NCOUNT / TCOUNT))
			return GQ_ERR_NOMEM;
		return s % TCOUNT ? cp_push(d, TBASE + s % TCOUNT) : GQ_OK;
	}
	e = c >= 0xA0 ? decomp(c) : NULL;
	if (e && (e->canon_len || (compat && e->compat_len))) {
		size_t off = e->off + (compat && e->compat_len ? e->canon_len : 0);
		size_t n = compat && e->compat_len ? e->compat_len : e->canon_len;

		for (size_t i = 0; i < n; i++)
			if (cp_push(d, tok_decomp_pool[off + i]))
				return GQ_ERR_NOMEM;
		return GQ_OK;
	}
	return cp_push(d, c);
}

int tok_unicode_normalize(gq_buf *out, const char *s, size_t len, int form)
{
	int compat = form == TOK_NFKC || form == TOK_NFKD;
	int comp = form == TOK_NFC || form == TOK_NFKC;
	cp_vec d = {0};
	size_t i, n, starter;
	uint8_t last;
	char u[4];

	/* ASCII is unchanged by every form, the common case worth a scan */
	for (i = 0; i < len && (uint8_t)s[i] < 0x80; i++)
		;
	if (i == len) {
		gq_buf_append(out, s, len);
		return GQ_OK;
	}
	for (i = 0; i < len;) {
		uint32_t c;

		i += tok_utf8_get(s + i, &c);
		if (decompose(&d, c, compat))
			goto nomem;
	}
	/* canonical order: stable sort of each run of non-starters by class */
	for (i = 1; i < d.n; i++) {
		uint32_t c = d.v[i];
		uint8_t cc = ccc(c);
		size_t j = i;

		if (!cc)
			continue;
		while (j > 0 && ccc(d.v[j - 1]) > cc) {
			d.v[j] = d.v[j - 1];
			j--;
		}
		d.v[j] = c;
	}
	n = d.n;
	if (comp) {
		/*
		 * Canonical composition: a character joins the last starter unless
		 * blocked, i.e. something between them has class 0 or a class not
		 * below its own (after reordering, the last one kept has the max).
		 */
		starter = SIZE_MAX;
		last = 0;
		n = 0;
		for (i = 0; i < d.n; i++) {
			uint32_t c = d.v[i], k;
			uint8_t cc = ccc(c);

			if (starter != SIZE_MAX && (n == starter + 1 || (last && last < cc)) &&
			    (k = compose(d.v[starter], c))) {
				d.v[starter] = k;
				continue;
			}
			if (!cc)
				starter = n;
			last = cc;
			d.v[n++] = c;
		}
	}
	for (i = 0; i < n; i++)
		gq_buf_append(out, u, tok_utf8_put(u, d.v[i]));
	free(d.v);
	return GQ_OK;
nomem:
	free(d.v);
	return gq_err(GQ_ERR_NOMEM, "out of memory");
}

void tok_lowercase(gq_buf *out, const char *s, size_t len)
{
	size_t n_lower = sizeof tok_lower / sizeof tok_lower[0] / 2;
	char u[4];

	for (size_t i = 0; i < len;) {
		uint32_t c, l;
		size_t lo = 0, hi = n_lower;

		i += tok_utf8_get(s + i, &c);
		if (c == 0x130) { /* the one unconditional multi-character lowercase */
			gq_buf_append(out, "i\xCC\x87", 3);
			continue;
		}
		l = c;
		if (c >= 'A' && c <= 'Z') {
			l = c + 32;
		} else if (c >= 0x80) {
			while (lo < hi) {
				size_t mid = (lo + hi) / 2;

				if (tok_lower[2 * mid] == c) {
					l = tok_lower[2 * mid + 1];
					break;
				}
				if (tok_lower[2 * mid] < c)
					lo = mid + 1;
				else
					hi = mid;
			}
		}
		gq_buf_append(out, u, tok_utf8_put(u, l));
	}
}
