/*
 * tok_impl.h - what the tokenizer's source files share: the loaded
 * tokenizer, the pipeline steps it is made of, and the per-call scratch.
 *
 * Not a public header: only lib/tokenizer.c (loading and the public API),
 * lib/tok_bpe.c (the BPE model), lib/tok_text.c (regexes, normalizers,
 * pre-tokenizers, decoders) and lib/tok_unicode.c (UTF-8, Unicode
 * normalization) include it. A loaded gq_tokenizer is never written after
 * gq_tok_load returns, so one may be shared by threads; everything an
 * encode or decode call writes lives in its tok_ctx.
 */
#ifndef GQ_TOK_IMPL_H
#define GQ_TOK_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer.h"
#include "util.h"

#define TOK_MAX_ID (1 << 24) /* ids are < this: bounds the id-indexed tables */

/* The members of a Unicode \w class (Rust regex and Oniguruma), for PCRE2. */
#define TOK_WORD_CLASS "\\p{L}\\p{Nl}\\p{M}\\p{Nd}\\p{Pc}\\x{200c}\\x{200d}"

/* A list of strings stored as spans of one arena: pieces of text or tokens. */
typedef struct {
	gq_buf text;
	size_t *off, *len; /* n spans of text */
	uint8_t *first;    /* n flags: the piece begins the whole input (Metaspace "first") */
	size_t n, cap;
	int failed;        /* an append ran out of memory */
} tok_list;

/* Regex match state of one call (match data and a JIT stack are per thread). */
typedef struct {
	pcre2_match_data *md;
	pcre2_match_context *mctx;
	pcre2_jit_stack *jit; /* created on the first JIT stack overflow */
} tok_matcher;

/*
 * One span [s, e) of a subject. From a regex: tag 1 for a match, 0 for the
 * text between two. From the added-token matcher: the token id, or -1 for text.
 */
typedef struct {
	size_t s, e;
	int32_t tag;
} tok_span;

typedef struct {
	tok_span *v;
	size_t n, cap;
} tok_spans;

/* Growable id array. */
typedef struct {
	int32_t *v;
	size_t n, cap;
} tok_ids;

/* Scratch of the BPE merge loop, reused across the words of one call. */
typedef struct {
	int32_t *id, *prev, *next; /* symbols of the word: ids and live links, -1 at the ends */
	uint64_t *heap;            /* (rank << 32 | position of the left symbol) */
	int32_t *heap_new;         /* merged id of each heap entry */
	size_t cap, heap_cap, n_heap;
} tok_bpe_scratch;

/* What one encode or decode call writes. */
typedef struct {
	const gq_tokenizer *t;
	tok_matcher m;
	tok_bpe_scratch bpe;
	tok_spans spans;
	int ref;            /* use the reference BPE merge loop (and no cache) */
	gq_strmap cache;    /* word -> offset << 16 | count of its ids in cache_ids */
	tok_ids cache_ids;
} tok_ctx;

enum { TOK_NFC, TOK_NFD, TOK_NFKC, TOK_NFKD };

enum tok_norm_kind {
	TOK_N_UNICODE, /* form: TOK_NF* */
	TOK_N_LOWER,
	TOK_N_STRIP,
	TOK_N_PREPEND,
	TOK_N_APPEND,
	TOK_N_REPLACE,
};

typedef struct {
	int kind;
	int form;          /* TOK_N_UNICODE */
	int left, right;   /* TOK_N_STRIP: strip white space on that side */
	char *str;         /* PREPEND/APPEND text, REPLACE replacement */
	size_t len;
	pcre2_code *re;    /* TOK_N_REPLACE */
} tok_norm;

/* How a split keeps the matches (HF SplitDelimiterBehavior). */
enum { TOK_B_REMOVED, TOK_B_ISOLATED, TOK_B_PREV, TOK_B_NEXT, TOK_B_CONTIGUOUS };
enum { TOK_PREPEND_ALWAYS, TOK_PREPEND_FIRST, TOK_PREPEND_NEVER };

enum tok_pre_kind { TOK_P_SPLIT, TOK_P_BYTELEVEL, TOK_P_METASPACE };

typedef struct {
	int kind;
	pcre2_code *re;     /* SPLIT pattern; BYTELEVEL GPT-2 regex or NULL (use_regex false) */
	int behavior;       /* SPLIT */
	int invert;         /* SPLIT */
	int prefix_space;   /* BYTELEVEL add_prefix_space */
	char rep[5];        /* METASPACE replacement, UTF-8, NUL-terminated */
	size_t rep_len;
	int prepend;        /* METASPACE TOK_PREPEND_* */
	int split;          /* METASPACE */
} tok_pre;

enum tok_dec_kind {
	TOK_D_BYTELEVEL,
	TOK_D_REPLACE,
	TOK_D_BYTEFALLBACK,
	TOK_D_FUSE,
	TOK_D_STRIP,
	TOK_D_METASPACE,
	TOK_D_BPE,
};

typedef struct {
	int kind;
	pcre2_code *re;    /* REPLACE */
	char *str;         /* REPLACE replacement, BPE suffix */
	size_t len;
	uint32_t ch;       /* STRIP content, METASPACE replacement */
	int start, stop;   /* STRIP: at most this many ch cut at the start and at the end */
	int prepend;       /* METASPACE TOK_PREPEND_* */
} tok_dec;

typedef struct {
	char *content;     /* as in tokenizer.json */
	size_t len;
	char *norm;        /* normalized form if it differs (decoded from it), or NULL */
	int32_t id;
	uint8_t special, lstrip, rstrip, single_word, normalized;
} tok_added;

/* Leftmost-longest matcher over the added tokens of one kind (normalized or not). */
typedef struct {
	gq_strmap map;     /* pattern -> index in added[] */
	uint8_t first[256]; /* some pattern starts with this byte */
	size_t *lens;      /* distinct pattern lengths, longest first */
	size_t n_lens;
} tok_trie;

struct gq_tokenizer {
	char *path;                 /* tokenizer.json, for messages */
	int32_t n_ids;              /* largest id + 1 */
	char **tok;                 /* [n_ids] what an id decodes from (added wins), or NULL */
	uint32_t *tok_len;          /* [n_ids] */
	uint8_t *special;           /* [n_ids] 1: special added token, dropped by skip_special */

	/* BPE model */
	gq_strmap vocab;            /* token -> id */
	gq_strmap merges;           /* 8 bytes (left id, right id) -> rank << 32 | merged id */
	int32_t *char_id;           /* [0x10000] vocab id of each BMP code point alone, -1: none */
	int32_t byte_id[256];       /* id of "<0xXX>" for byte_fallback, -1: none */
	int32_t unk;                /* unk_token id, -1: none */
	int fuse_unk, byte_fallback, ignore_merges;

	tok_added *added;
	size_t n_added;
	tok_trie raw_trie;          /* added tokens with normalized false: matched on the input */
	tok_trie norm_trie;         /* normalized true: matched on the normalized text */
	pcre2_code *word_re;        /* one \w character, for single_word (NULL when unused) */

	tok_norm *norm;
	size_t n_norm;
	tok_pre *pre;
	size_t n_pre;
	tok_dec *dec;
	size_t n_dec;
	int has_decoder;            /* without one, tokens are joined with spaces */

	int32_t *prefix, *suffix;   /* ids add_special puts around the text */
	size_t n_prefix, n_suffix;
	int32_t bos, eos;
};

/* ---- growable arrays (GQ_ERR_NOMEM on failure) ---- */
int tok_grow(void **p, size_t *cap, size_t need, size_t elem);
int tok_ids_push(tok_ids *a, int32_t id);
int tok_spans_push(tok_spans *a, size_t s, size_t e, int32_t tag);

void tok_list_clear(tok_list *l);
void tok_list_free(tok_list *l);
/* Appends a piece; returns its index or -1 (l->failed set) when out of memory. */
int tok_list_push(tok_list *l, const char *s, size_t len, int first);
/* Starts an empty piece whose bytes are then written with gq_buf_append(&l->text, ...). */
int tok_list_open(tok_list *l, int first);
void tok_list_close(tok_list *l); /* ends the piece tok_list_open started */

/* ---- tok_unicode.c ---- */
size_t tok_utf8_valid(const char *s, size_t len); /* length of the longest valid prefix */
/* Decodes the char at s (valid UTF-8 assumed) into *cp; returns its byte length. */
size_t tok_utf8_get(const char *s, uint32_t *cp);
size_t tok_utf8_put(char *out, uint32_t cp); /* writes 1-4 bytes */
size_t tok_utf8_last(const char *s, size_t len); /* offset of the last char (len > 0) */
/* Rust's String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD. */
void tok_utf8_lossy(gq_buf *out, const char *s, size_t len);
int tok_is_space(uint32_t c); /* Unicode White_Space (Rust char::is_whitespace) */
int tok_unicode_normalize(gq_buf *out, const char *s, size_t len, int form);
void tok_lowercase(gq_buf *out, const char *s, size_t len);

/* ---- tok_text.c ---- */
/* Compiles an Oniguruma/fancy-regex pattern (translated to PCRE2) or a literal. */
int tok_re_compile(pcre2_code **re, const char *pat, size_t len, int literal, const char *what,
		   const char *path);
int tok_matcher_init(tok_matcher *m);
void tok_matcher_free(tok_matcher *m);
/* All matches of re in s, as HF Pattern::find_matches: spans covering s, in order. */
int tok_re_spans(tok_matcher *m, const pcre2_code *re, const char *s, size_t len, tok_spans *out);
/* Runs the normalizers on s into out. */
int tok_normalize(tok_ctx *c, const char *s, size_t len, gq_buf *out);
/* Runs the pre-tokenizers: *in holds the pieces, *tmp is scratch; result in *in. */
int tok_pretokenize(tok_ctx *c, tok_list *in, tok_list *tmp);
/* Runs the decoder chain on the token strings in *in (scratch *tmp), appending the text to out. */
int tok_decode_chain(tok_ctx *c, tok_list *in, tok_list *tmp, gq_buf *out);
/* Splits s at the leftmost-longest added tokens, honouring lstrip/rstrip/single_word. */
int tok_find_added(tok_ctx *c, const tok_trie *trie, const char *s, size_t len, tok_spans *out);

/* ---- tok_bpe.c ---- */
/* Appends the ids of one pre-tokenized word. */
int tok_bpe_word(tok_ctx *c, const char *w, size_t len, tok_ids *out);
void tok_bpe_free(tok_ctx *c); /* the BPE scratch and word cache of c */

#endif
