/*
 * tokenizer.h - Hugging Face tokenizer.json (BPE models) in C: encode text
 * to ids and decode ids to text exactly as the `tokenizers` library does,
 * for byte-level BPE (GPT-2, Qwen2, Llama-3) and SentencePiece-style BPE
 * (Llama, Mistral) with their added tokens, normalizers, pre-tokenizers,
 * post-processor and decoders.
 *
 * A loaded tokenizer is read-only, so threads may share one. Functions that
 * can fail return a gq_status (GQ_OK or a negative code with gq_errmsg()
 * set); tokenizer.json is untrusted input and each defect is reported by name.
 */
#ifndef GQ_TOKENIZER_H
#define GQ_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct gq_tokenizer gq_tokenizer;

/*
 * Loads path: a directory holding tokenizer.json, or a tokenizer.json file.
 * tokenizer_config.json (else special_tokens_map.json) in the same
 * directory, when present, names the BOS/EOS tokens and may set
 * add_bos_token/add_eos_token; for tokenizer_class LlamaTokenizer(Fast) it
 * also selects the pipeline transformers 5 builds for Llama (see
 * tokenizer.c). Supported, anything else is GQ_ERR_UNSUPPORTED:
 *   model        BPE (no dropout, continuing_subword_prefix, end_of_word_suffix)
 *   normalizer   NFC NFD NFKC NFKD Lowercase Strip Prepend Append Replace Sequence
 *   pre_tokenizer ByteLevel Split Metaspace Whitespace WhitespaceSplit Digits
 *                Punctuation BertPreTokenizer CharDelimiterSplit Sequence
 *   post_processor TemplateProcessing ByteLevel BertProcessing RobertaProcessing Sequence
 *   decoder      ByteLevel Replace ByteFallback Fuse Strip Metaspace BPEDecoder Sequence
 */
int gq_tok_load(gq_tokenizer **t, const char *path);
void gq_tok_free(gq_tokenizer *t);

/*
 * Encodes len bytes of UTF-8 text (invalid UTF-8 is GQ_ERR_FORMAT). Added
 * tokens written in the text (e.g. "<|endoftext|>") become their ids.
 * add_special adds what the post-processor adds (BOS for Llama-style
 * tokenizers, nothing for GPT-2), as adjusted by tokenizer_config.json.
 * *ids is malloc'd: the caller frees it (it may be NULL when *n_ids is 0).
 */
int gq_tok_encode(const gq_tokenizer *t, const char *text, size_t len, int add_special,
		  int32_t **ids, size_t *n_ids);
/* The same with the reference BPE merge loop (slow; the spec the fast one is tested against). */
int gq_tok_encode_ref(const gq_tokenizer *t, const char *text, size_t len, int add_special,
		      int32_t **ids, size_t *n_ids);

/*
 * Decodes ids to UTF-8 text: *text is malloc'd and NUL-terminated, *len
 * bytes long. skip_special drops special tokens (HF skip_special_tokens).
 * Ids without a token (negative, past the vocabulary, holes) are dropped,
 * as HF drops them. The output is always valid UTF-8: byte tokens that do
 * not form characters come out as U+FFFD.
 */
int gq_tok_decode(const gq_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
		  char **text, size_t *len);

int32_t gq_tok_vocab_size(const gq_tokenizer *t); /* largest id + 1, added tokens included */
/*
 * BOS: the token the post-processor puts first (stories260K's "<s>" is id 1
 * there, not the added token 512), else tokenizer_config's bos_token; -1
 * when none. EOS: tokenizer_config's eos_token, else the token the
 * post-processor puts last; -1 when none (the bare GPT-2 tokenizer.json
 * names none: take eos_token_id from the model's config then).
 */
int32_t gq_tok_bos(const gq_tokenizer *t);
int32_t gq_tok_eos(const gq_tokenizer *t);
int gq_tok_add_bos(const gq_tokenizer *t); /* 1 if encode(add_special=1) prepends BOS */
/* Whether id is a special added token (what skip_special drops). */
int gq_tok_is_special(const gq_tokenizer *t, int32_t id);
/* The token string of id (as in the vocabulary, e.g. "Ġthe"), or NULL; *len its bytes. */
const char *gq_tok_token(const gq_tokenizer *t, int32_t id, size_t *len);

/*
 * Streaming decode, for printing tokens as a model generates them. Text
 * cannot be decoded one id at a time: byte-fallback and byte-level tokens
 * split characters across ids, and decoders such as Strip or Metaspace
 * treat the first token differently. The stream (HF's DecodeStream
 * algorithm) decodes a short window of recent ids and returns only the
 * text that became final, holding back an incomplete character:
 *
 *	gq_tok_stream *s;
 *	gq_tok_stream_init(&s, tok, 1);
 *	for each generated id:
 *		gq_tok_stream_put(s, id, &piece, &n);  // n may be 0
 *		fwrite(piece, 1, n, stdout);
 *	gq_tok_stream_free(s);
 *
 * Concatenated, the pieces equal gq_tok_decode of all the ids, except that
 * bytes which never complete a character are held back (gq_tok_stream_put
 * gives them up as U+FFFD once 8 more ids have not completed them).
 */
typedef struct gq_tok_stream gq_tok_stream;

int gq_tok_stream_init(gq_tok_stream **s, const gq_tokenizer *t, int skip_special);
/* *text (owned by the stream, valid until the next call) is the newly final text, *len bytes. */
int gq_tok_stream_put(gq_tok_stream *s, int32_t id, const char **text, size_t *len);
void gq_tok_stream_free(gq_tok_stream *s);

#endif
