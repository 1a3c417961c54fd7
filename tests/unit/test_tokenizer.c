/*
 * test_tokenizer.c - the tokenizer against Hugging Face: the ids and text
 * that transformers gives for the shared cases (GPT-2, Llama-2, Qwen2,
 * stories260K) and llama.cpp's GPT-2 test strings; every pipeline step on
 * tokenizers derived from those (expected values from the Rust `tokenizers`
 * 0.23, generated once); the fast BPE against the reference merge loop;
 * streaming decode; Unicode; the project's own tokenizer and corpus
 * (tests/data, made by tests/gen/gen-*.py), which need nothing from ../shared;
 * and corrupt tokenizer.json files, each of which must fail with a message
 * naming the defect (also run under ASan).
 */
#define _GNU_SOURCE
#include "check.h"
#include "io.h"
#include "tok_impl.h"
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <fcntl.h>
#include <unistd.h>

static char dir[] = "/tmp/gq-test-tok-XXXXXX";

/* ---- helpers ---- */

static void write_file(const char *path, const char *text, size_t len)
{
	FILE *f = fopen(path, "wb");

	if (!f || fwrite(text, 1, len, f) != len || fclose(f)) {
		perror(path);
		exit(1);
	}
}

/* Writes json (and config, unless NULL) to dir/name/ and loads that directory. */
static int load_json(gq_tokenizer **t, const char *name, const char *json, const char *config)
{
	char sub[600], p[700];

	snprintf(sub, sizeof sub, "%s/%s", dir, name);
	mkdir(sub, 0755);
	snprintf(p, sizeof p, "%s/tokenizer.json", sub);
	write_file(p, json, strlen(json));
	snprintf(p, sizeof p, "%s/tokenizer_config.json", sub);
	if (config)
		write_file(p, config, strlen(config));
	else
		unlink(p);
	return gq_tok_load(t, sub);
}

/* load_json with ' written for " (the JSON below would drown in backslashes) */
static int load_sq(gq_tokenizer **t, const char *name, const char *json, const char *config)
{
	char *j = strdup(json), *c = config ? strdup(config) : NULL;
	int rc;

	for (char *p = j; *p; p++)
		*p = *p == '\'' ? '"' : *p;
	for (char *p = c; p && *p; p++)
		*p = *p == '\'' ? '"' : *p;
	rc = load_json(t, name, j, c);
	free(j);
	free(c);
	return rc;
}

/* A shared tokenizer.json with the top-level keys of patch replaced ("model" merged key by key). */
static int load_patched(gq_tokenizer **t, const char *base_rel, const char *name, const char *patch)
{
	const char *base = check_shared(base_rel);
	cJSON *root, *p, *item;
	char *data, *json;
	size_t len;
	int rc;

	if ((rc = gq_read_file(base, 64 << 20, &data, &len)))
		return rc;
	root = cJSON_ParseWithLength(data, len);
	p = cJSON_Parse(patch);
	free(data);
	if (!root || !p) {
		fprintf(stderr, "  %s: bad base or patch JSON\n", name);
		exit(1);
	}
	/* cJSON_ReplaceItemInObject frees the item's own name: pass it a copy */
	while ((item = p->child)) {
		cJSON *model = cJSON_GetObjectItem(root, "model"), *f;
		char key[64];

		cJSON_DetachItemViaPointer(p, item);
		snprintf(key, sizeof key, "%s", item->string);
		if (strcmp(key, "model")) {
			cJSON_DeleteItemFromObject(root, key);
			cJSON_AddItemToObject(root, key, item);
			continue;
		}
		while ((f = item->child)) {
			cJSON_DetachItemViaPointer(item, f);
			snprintf(key, sizeof key, "%s", f->string);
			cJSON_DeleteItemFromObject(model, key);
			cJSON_AddItemToObject(model, key, f);
		}
		cJSON_Delete(item);
	}
	json = cJSON_PrintUnformatted(root);
	rc = load_json(t, name, json, NULL);
	free(json);
	cJSON_Delete(root);
	cJSON_Delete(p);
	return rc;
}

static size_t id_count(const int32_t *ids)
{
	size_t n = 0;

	while (ids[n] >= 0)
		n++;
	return n;
}

static void print_ids(const char *what, const int32_t *ids, size_t n)
{
	fprintf(stderr, "    %s:", what);
	for (size_t i = 0; i < n && i < 40; i++)
		fprintf(stderr, " %d", ids[i]);
	fprintf(stderr, "%s\n", n > 40 ? " ..." : "");
}

static int same_ids(const char *what, const int32_t *got, size_t n, const int32_t *want, size_t nw)
{
	if (n == nw && (!n || !memcmp(got, want, n * sizeof *got)))
		return 1;
	fprintf(stderr, "  %s: ids differ\n", what);
	print_ids("got ", got, n);
	print_ids("want", want, nw);
	return 0;
}

static int same_text(const char *what, const char *got, size_t len, const char *want)
{
	if (got && len == strlen(want) && !memcmp(got, want, len) && !got[len])
		return 1;
	fprintf(stderr, "  %s: got '%.*s', want '%s'\n", what, got ? (int)len : 6,
		got ? got : "(null)", want);
	return 0;
}

/* ---- the shared HF cases ---- */

static void run_cases(const char *tok_rel, const char *cases_rel)
{
	const char *tp = check_shared(tok_rel), *cp = check_shared(cases_rel);
	gq_tokenizer *t;
	char *data;
	size_t len;
	cJSON *root, *c;
	int n = 0;

	if (!tp || !cp) {
		check_skip("../shared tokenizers absent");
		return;
	}
	CHECK_OK(gq_tok_load(&t, tp));
	if (check_test_failed)
		return;
	CHECK_OK(gq_read_file(cp, 64 << 20, &data, &len));
	root = cJSON_ParseWithLength(data, len);
	CHECK(root != NULL);
	cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
		const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
		const char *decoded = cJSON_GetObjectItem(c, "decoded")->valuestring;
		const cJSON *want = cJSON_GetObjectItem(c, "ids"), *v;
		size_t nw = (size_t)cJSON_GetArraySize(want), k = 0, n_ids, out_len;
		int32_t *ids, *wv = malloc((nw + 1) * sizeof *wv);
		char *out;

		cJSON_ArrayForEach(v, want)
			wv[k++] = (int32_t)v->valuedouble;
		CHECK_OK(gq_tok_encode(t, text, strlen(text), 0, &ids, &n_ids));
		CHECK(same_ids(text, ids, n_ids, wv, nw));
		/* decode the expected ids, so a decode bug is not hidden by an encode one */
		CHECK_OK(gq_tok_decode(t, wv, nw, 0, &out, &out_len));
		CHECK(same_text(text, out, out_len, decoded));
		free(out);
		free(wv);
		free(ids);
		n++;
	}
	CHECK(n > 0);
	cJSON_Delete(root);
	free(data);
	gq_tok_free(t);
}

static void test_cases_gpt2(void)
{
	run_cases("tokenizers/gpt2", "tokenizers/gpt2.cases.json");
}

static void test_cases_llama2(void)
{
	run_cases("tokenizers/llama2", "tokenizers/llama2.cases.json");
}

static void test_cases_qwen2(void)
{
	run_cases("tokenizers/qwen2", "tokenizers/qwen2.cases.json");
}

static void test_cases_stories260k(void)
{
	run_cases("models/stories260K", "models/stories260K/tokenizer.cases.json");
}

/* llama.cpp's tokenizer tests: .inp cases split by a marker, .out one line of ids per case */
static void test_llamacpp_gpt2(void)
{
	const char *tp = check_shared("tokenizers/gpt2");
	const char *ip = check_shared("tokenizers/llamacpp-vocab/ggml-vocab-gpt-2.gguf.inp");
	const char *op = check_shared("tokenizers/llamacpp-vocab/ggml-vocab-gpt-2.gguf.out");
	static const char sep[] = "\n__ggml_vocab_test__\n";
	gq_tokenizer *t;
	char *inp, *outp, *in_at, *out_at, *end, *nl;
	size_t il, ol;
	int n = 0;

	if (!tp || !ip || !op) {
		check_skip("../shared llama.cpp vocab tests absent");
		return;
	}
	CHECK_OK(gq_tok_load(&t, tp));
	CHECK_OK(gq_read_file(ip, 1 << 20, &inp, &il));
	CHECK_OK(gq_read_file(op, 1 << 20, &outp, &ol));
	if (check_test_failed)
		return;
	for (in_at = inp, out_at = outp; (end = strstr(in_at, sep)) && (nl = strchr(out_at, '\n'));
	     in_at = end + sizeof sep - 1, out_at = nl + 1, n++) {
		int32_t *ids, want[1024];
		size_t n_ids, nw = 0;
		char *p;

		*end = '\0';
		*nl = '\0';
		for (p = out_at; *p && nw < 1024;) {
			want[nw++] = (int32_t)strtol(p, &p, 10);
			while (*p == ' ')
				p++;
		}
		CHECK_OK(gq_tok_encode(t, in_at, strlen(in_at), 0, &ids, &n_ids));
		CHECK(same_ids(in_at, ids, n_ids, want, nw));
		free(ids);
	}
	CHECK(n >= 40);
	free(inp);
	free(outp);
	gq_tok_free(t);
}

/* ---- pipeline steps, on tokenizers derived from the shared ones ---- */

struct tcase {
	const char *text;
	int32_t ids[24]; /* ending in -1 */
	const char *decoded, *decoded_skip; /* skip_special 0 and 1 */
};

struct variant {
	const char *name, *base;
	int add_special;
	const char *patch;
	const struct tcase *cases;
	size_t n;
};

/*
 * Generated with the Rust tokenizers 0.23 (npm package "tokenizers"): the
 * shared tokenizer.json of `base` patched with `patch`, then encode(text,
 * add_special) and decode(ids, skip_special = 0 and 1).
 */
static const struct tcase llama3_cases[] = {
	{"Hello<|begin_of_text|>world",
		{50257, 15496, 50257, 6894, -1},
		"<|begin_of_text|>Hello<|begin_of_text|>world",
		"Helloworld"},
	{" rstrip<mask>\302\205 rstrip theHello",
		{50257, 50261, 50259, 50261, 1169, 15496, -1},
		"<|begin_of_text|> rstrip<mask> rstriptheHello",
		" rstrip<mask> rstriptheHello"},
	{"a [SEP]  b",
		{50257, 64, 50260, 220, 275, -1},
		"<|begin_of_text|>a[SEP]  b",
		"a  b"},
	{"x  <mask>  y",
		{50257, 87, 50259, 88, -1},
		"<|begin_of_text|>x<mask>y",
		"x<mask>y"},
	{"phony ony ony. <mask>",
		{50257, 23021, 220, 1647, 220, 1647, 13, 50259, -1},
		"<|begin_of_text|>phony ony ony.<mask>",
		"phony ony ony.<mask>"},
	{"I'M 12345 don't\015\012\012  \011ok",
		{50257, 40, 6, 44, 220, 10163, 2231, 836, 470, 201, 628, 220, 220, 197, 482, -1},
		"<|begin_of_text|>I'M 12345 don't\015\012\012  \011ok",
		"I'M 12345 don't\015\012\012  \011ok"},
	{"",
		{50257, -1},
		"<|begin_of_text|>",
		""},
	{"<|eot_id|>",
		{50257, 50258, -1},
		"<|begin_of_text|><|eot_id|>",
		""},
	{"e\314\201 caf\303\251 \360\237\230\200 \344\275\240\345\245\275",
		{50257, 68, 136, 223, 40304, 30325, 222, 220, 19526, 254, 25001, 121, -1},
		"<|begin_of_text|>e\314\201 caf\303\251 \360\237\230\200 \344\275\240\345\245\275",
		"e\314\201 caf\303\251 \360\237\230\200 \344\275\240\345\245\275"},
};

static const struct tcase qwen2_cases[] = {
	{"e\314\201t\303\251 A\314\212 12345 'S 'll",
		{25125, 2634, 6184, 227, 220, 16, 17, 18, 19, 20, 705, 50, 705, 297, -1},
		"\303\251t\303\251 \303\205 12345 'S 'll",
		"\303\251t\303\251 \303\205 12345 'S 'll"},
	{"\341\204\200\341\205\241\341\206\250 \344\275\240\345\245\275\344\270\226\347"
		"\225\214",
		{166, 108, 223, 220, 19526, 254, 25001, 121, 10310, 244, 45911, 234, -1},
		"\352\260\201 \344\275\240\345\245\275\344\270\226\347\225\214",
		"\352\260\201 \344\275\240\345\245\275\344\270\226\347\225\214"},
	{"  x\012\012  y  ",
		{220, 2124, 628, 220, 331, 220, 220, -1},
		"  x\012\012  y  ",
		"  x\012\012  y  "},
};

static const struct tcase norm_cases[] = {
	{"  \357\254\201nd \357\274\250\357\274\245\357\274\254\357\274\254\357\274\257   "
		"Stra\303\237e\302\240\304\260  ",
		{13355, 19796, 23748, 3534, 39683, 68, 1312, 136, 229, -1},
		" \302\273find hello stra\303\237e i\314\207",
		" \302\273find hello stra\303\237e i\314\207"},
	{"hello<|endoftext|>  HELLO ",
		{50257, 50256, 50257, -1},
		"\357\277\275hello<|endoftext|>\357\277\275hello",
		"\357\277\275hello\357\277\275hello"},
	{"\342\221\240\342\205\247 \343\200\200x",
		{13355, 16, 85, 15479, 2124, -1},
		" \302\2731viii x",
		" \302\2731viii x"},
};

static const struct tcase split_cases[] = {
	{"foo bar.. boo!?x 123 o",
		{69, 78, 78, 2318, 13, 13, 275, 78, 78, 0, 30, 87, 220, 16, 17, 18, 220, 78, -1},
		"foo bar.. boo!?x 123 o",
		"foo bar.. boo!?x 123 o"},
	{"  oo  o, 4o5",
		{220, 220, 78, 78, 220, 220, 78, 11, 220, 19, 78, 20, -1},
		"  oo  o, 4o5",
		"  oo  o, 4o5"},
};

static const struct tcase split2_cases[] = {
	{"beautiful queue  aeiou x",
		{-1},
		"",
		""},
	{"I   see",
		{-1},
		"",
		""},
};

static const struct tcase whitespace_cases[] = {
	{"Hello, world!! it's 42\302\260C",
		{18435, 837, 995, 37867, 340, 705, 264, 5433, 22074, 327, -1},
		" Hello , world !! it ' s 42 \302\260 C",
		" Hello , world !! it ' s 42 \302\260 C"},
	{"don't  stop",
		{836, 705, 256, 2245, -1},
		" don ' t stop",
		" don ' t stop"},
};

static const struct tcase metaspace_cases[] = {
	{"Once upon a time<sep>there was<sep> a  cat",
		{403, 407, 261, 378, 514, 413, 260, 276, 286, 514, 261, 410, 280, 294, -1},
		"Once upon a time<sep>there was<sep> a  cat",
		"Once upon a time<sep>there was<sep> a  cat"},
	{" Lily<s>said hi",
		{317, 512, 419, 412, 292, 270, 417, -1},
		"Lily<s>said hi",
		"Lilysaid hi"},
	{"\342\226\201x\342\226\201 y",
		{410, 444, 410, 348, -1},
		"x  y",
		"x  y"},
};

static const struct tcase ignore_cases[] = {
	{"the little girl",
		{265, 376, 298, 315, 421, -1},
		"the little girl",
		"the little girl"},
	{"Lily saw a big ball",
		{317, 394, 261, 370, 268, 388, -1},
		"Lily saw a big ball",
		"Lily saw a big ball"},
};

static const struct tcase unk_cases[] = {
	{"ab c",
		{0, 0, 0, 0, 0, -1},
		"<unk><unk><unk><unk><unk>",
		""},
	{"<s>xy</s>",
		{1, 0, 0, 0, 2, -1},
		"<s><unk><unk><unk></s>",
		""},
};

static const struct tcase unkfuse_cases[] = {
	{"ab c",
		{0, -1},
		"<unk>",
		""},
	{"<s>xy</s>",
		{1, 0, 2, -1},
		"<s><unk></s>",
		""},
};

static const struct variant variants[] = {
	{"llama3", "tokenizers/gpt2/tokenizer.json", 1,
		"{\"added_tokens\": [{\"id\": 50256, \"content\": \"<|endoftext|>\", \"single_wor"
		"d\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"speci"
		"al\": true}, {\"id\": 50257, \"content\": \"<|begin_of_text|>\", \"single_word\""
		": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special"
		"\": true}, {\"id\": 50258, \"content\": \"<|eot_id|>\", \"single_word\": false, "
		"\"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true},"
		" {\"id\": 50259, \"content\": \"<mask>\", \"single_word\": false, \"lstrip\": tr"
		"ue, \"rstrip\": true, \"normalized\": false, \"special\": false}, {\"id\": 50260"
		", \"content\": \"[SEP]\", \"single_word\": false, \"lstrip\": true, \"rstrip\": "
		"false, \"normalized\": false, \"special\": true}, {\"id\": 1647, \"content\": \""
		"ony\", \"single_word\": true, \"lstrip\": false, \"rstrip\": false, \"normalized"
		"\": false, \"special\": false}, {\"id\": 50261, \"content\": \" rstrip\", \"sing"
		"le_word\": false, \"lstrip\": false, \"rstrip\": true, \"normalized\": false, \""
		"special\": false}], \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers"
		"\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(?i:'s|'t|'re|'ve|'m|'ll|'"
		"d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{"
		"N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"}, \"behavior\": "
		"\"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", \"add_prefix_space\""
		": false, \"trim_offsets\": true, \"use_regex\": false}]}, \"post_processor\": {"
		"\"type\": \"Sequence\", \"processors\": [{\"type\": \"ByteLevel\", \"add_prefix_"
		"space\": true, \"trim_offsets\": false, \"use_regex\": true}, {\"type\": \"Templ"
		"ateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<|begin_of_text|>\","
		" \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"pair\": ["
		"], \"special_tokens\": {\"<|begin_of_text|>\": {\"id\": \"<|begin_of_text|>\", "
		"\"ids\": [50257], \"tokens\": [\"<|begin_of_text|>\"]}}}]}}",
		llama3_cases, sizeof llama3_cases / sizeof llama3_cases[0]},
	{"qwen2", "tokenizers/gpt2/tokenizer.json", 0,
		"{\"normalizer\": {\"type\": \"NFC\"}, \"pre_tokenizer\": {\"type\": \"Sequence\""
		", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(?i:'s|'t"
		"|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}| ?[^\\\\s\\"
		"\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"}, \"b"
		"ehavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", \"add_pre"
		"fix_space\": false, \"trim_offsets\": true, \"use_regex\": false}]}}",
		qwen2_cases, sizeof qwen2_cases / sizeof qwen2_cases[0]},
	{"norm", "tokenizers/gpt2/tokenizer.json", 0,
		"{\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFKC\"}"
		", {\"type\": \"Lowercase\"}, {\"type\": \"Strip\", \"strip_left\": true, \"strip"
		"_right\": true}, {\"type\": \"Replace\", \"pattern\": {\"Regex\": \"\\\\s+\"}, "
		"\"content\": \" \"}, {\"type\": \"Prepend\", \"prepend\": \"\302\273\"}]}, \"pre"
		"_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offse"
		"ts\": true, \"use_regex\": true}, \"added_tokens\": [{\"id\": 50256, \"content\""
		": \"<|endoftext|>\", \"single_word\": false, \"lstrip\": false, \"rstrip\": fals"
		"e, \"normalized\": false, \"special\": true}, {\"id\": 50257, \"content\": \"HEL"
		"LO\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized"
		"\": true, \"special\": false}, {\"id\": 50258, \"content\": \"Stra\303\237e\", "
		"\"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": tr"
		"ue, \"special\": false}]}",
		norm_cases, sizeof norm_cases / sizeof norm_cases[0]},
	{"split", "tokenizers/gpt2/tokenizer.json", 0,
		"{\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Sp"
		"lit\", \"pattern\": {\"Regex\": \"\\\\s+|o\"}, \"behavior\": \"MergedWithNext\","
		" \"invert\": false}, {\"type\": \"Punctuation\", \"behavior\": \"MergedWithPrevi"
		"ous\"}, {\"type\": \"Digits\", \"individual_digits\": true}, {\"type\": \"ByteLe"
		"vel\", \"add_prefix_space\": false, \"trim_offsets\": true, \"use_regex\": false"
		"}]}}",
		split_cases, sizeof split_cases / sizeof split_cases[0]},
	{"split2", "tokenizers/gpt2/tokenizer.json", 0,
		"{\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Sp"
		"lit\", \"pattern\": {\"Regex\": \"[aeiou]\"}, \"behavior\": \"Contiguous\", \"in"
		"vert\": false}, {\"type\": \"WhitespaceSplit\"}, {\"type\": \"Split\", \"pattern"
		"\": {\"String\": \" \"}, \"behavior\": \"Removed\", \"invert\": true}, {\"type\""
		": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, \"use_regex"
		"\": false}]}}",
		split2_cases, sizeof split2_cases / sizeof split2_cases[0]},
	{"whitespace", "tokenizers/gpt2/tokenizer.json", 0,
		"{\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Wh"
		"itespace\"}, {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offset"
		"s\": true, \"use_regex\": false}]}}",
		whitespace_cases, sizeof whitespace_cases / sizeof whitespace_cases[0]},
	{"metaspace", "models/stories260K/tokenizer.json", 0,
		"{\"normalizer\": null, \"added_tokens\": [{\"id\": 0, \"content\": \"<unk>\", \""
		"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": fals"
		"e, \"special\": true}, {\"id\": 512, \"content\": \"<s>\", \"single_word\": fals"
		"e, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": tru"
		"e}, {\"id\": 513, \"content\": \"</s>\", \"single_word\": false, \"lstrip\": fal"
		"se, \"rstrip\": false, \"normalized\": false, \"special\": true}, {\"id\": 514, "
		"\"content\": \"<sep>\", \"single_word\": false, \"lstrip\": false, \"rstrip\": f"
		"alse, \"normalized\": false, \"special\": false}], \"pre_tokenizer\": {\"type\":"
		" \"Metaspace\", \"replacement\": \"\342\226\201\", \"prepend_scheme\": \"first\""
		", \"split\": true}, \"decoder\": {\"type\": \"Metaspace\", \"replacement\": \""
		"\342\226\201\", \"prepend_scheme\": \"first\", \"split\": true}}",
		metaspace_cases, sizeof metaspace_cases / sizeof metaspace_cases[0]},
	{"ignore", "models/stories260K/tokenizer.json", 0,
		"{\"model\": {\"ignore_merges\": true}}",
		ignore_cases, sizeof ignore_cases / sizeof ignore_cases[0]},
	{"unk", "tokenizers/llama2/tokenizer.json", 0,
		"{\"model\": {\"unk_token\": \"<unk>\", \"fuse_unk\": false}}",
		unk_cases, sizeof unk_cases / sizeof unk_cases[0]},
	{"unkfuse", "tokenizers/llama2/tokenizer.json", 0,
		"{\"model\": {\"unk_token\": \"<unk>\", \"fuse_unk\": true}}",
		unkfuse_cases, sizeof unkfuse_cases / sizeof unkfuse_cases[0]},
};

static void test_hf_variants(void)
{
	if (!check_shared("tokenizers/gpt2") || !check_shared("models/stories260K")) {
		check_skip("../shared tokenizers absent");
		return;
	}
	for (size_t v = 0; v < sizeof variants / sizeof variants[0]; v++) {
		const struct variant *var = &variants[v];
		gq_tokenizer *t;

		CHECK_OK(load_patched(&t, var->base, var->name, var->patch));
		if (check_test_failed)
			return;
		for (size_t k = 0; k < var->n; k++) {
			const struct tcase *c = &var->cases[k];
			int32_t *ids;
			size_t n, len;
			char *text, what[160];

			snprintf(what, sizeof what, "%s '%.60s'", var->name, c->text);
			CHECK_OK(gq_tok_encode(t, c->text, strlen(c->text), var->add_special, &ids,
					       &n));
			CHECK(same_ids(what, ids, n, c->ids, id_count(c->ids)));
			free(ids);
			for (int skip = 0; skip < 2; skip++) {
				const char *want = skip ? c->decoded_skip : c->decoded;

				CHECK_OK(gq_tok_decode(t, c->ids, id_count(c->ids), skip, &text,
						       &len));
				CHECK(same_text(what, text, len, want));
				free(text);
			}
		}
		gq_tok_free(t);
	}
}

/* ---- the fast BPE against the reference ---- */

/* A random snippet of src at character boundaries, or random code points. */
static size_t snippet(uint64_t *rng, const char *src, size_t src_len, size_t max, char *out)
{
	size_t a, n;

	if (check_rand(rng) % 4 == 0) {
		/* random characters, weighted to ASCII, white space and multi-byte ones */
		static const char *const parts[] = {
			" ", "  ", "\n", "\t", "'s", "\xc3\xa9", "e\xcc\x81", "\xe2\x96\x81",
			"\xf0\x9f\xa6\x99", "\xe4\xbd\xa0", "123", "!?", "the", "a",
		};
		n = 0;
		while (n + 8 < max && check_rand(rng) % 32) {
			const char *p = parts[check_rand(rng) % (sizeof parts / sizeof parts[0])];

			if (check_rand(rng) % 3 == 0)
				out[n++] = (char)(' ' + check_rand(rng) % 95);
			else
				n += (size_t)sprintf(out + n, "%s", p);
		}
		return n;
	}
	a = check_rand(rng) % src_len;
	n = check_rand(rng) % max;
	if (n > src_len - a)
		n = src_len - a;
	while (a > 0 && ((unsigned char)src[a] & 0xC0) == 0x80)
		a--, n++;
	while (n > 0 && a + n < src_len && ((unsigned char)src[a + n] & 0xC0) == 0x80)
		n--;
	memcpy(out, src + a, n);
	return n;
}

static void ref_vs_fast(const char *tok_rel, size_t max_len, int round_trip)
{
	const char *texts[] = {"text/wiki.test.raw", "text/tinystories_val_first.txt"};
	char *src[2], buf[4096];
	size_t src_len[2];
	uint64_t rng = 12345;
	gq_tokenizer *t;
	int cases = 0;

	if (!check_shared(tok_rel) || !check_shared(texts[0]) || !check_shared(texts[1])) {
		check_skip("../shared tokenizers or texts absent");
		return;
	}
	CHECK_OK(gq_tok_load(&t, check_shared(tok_rel)));
	for (int i = 0; i < 2; i++)
		CHECK_OK(gq_read_file(check_shared(texts[i]), 64 << 20, &src[i], &src_len[i]));
	if (check_test_failed)
		return;
	for (int k = 0; k < 3000 && !check_test_failed; k++) {
		/* mostly short snippets: the reference is quadratic in a word's length */
		size_t max = k % 50 ? max_len / 5 : max_len, n1, n2, dl;
		size_t len = snippet(&rng, src[k % 2], src_len[k % 2], max, buf);
		int32_t *fast, *ref;
		char *dec;

		CHECK_OK(gq_tok_encode(t, buf, len, 0, &fast, &n1));
		CHECK_OK(gq_tok_encode_ref(t, buf, len, 0, &ref, &n2));
		CHECK(same_ids(tok_rel, fast, n1, ref, n2));
		if (round_trip) { /* byte-level BPE is lossless */
			CHECK_OK(gq_tok_decode(t, fast, n1, 0, &dec, &dl));
			CHECK(dl == len && !memcmp(dec, buf, len));
			free(dec);
		}
		free(fast);
		free(ref);
		cases++;
	}
	CHECK(cases == 3000);
	free(src[0]);
	free(src[1]);
	gq_tok_free(t);
}

static void test_ref_vs_fast_gpt2(void)
{
	ref_vs_fast("tokenizers/gpt2", 2000, 1);
}

static void test_ref_vs_fast_stories260k(void)
{
	/* no pre-tokenizer: a snippet is one word, where the heap earns its keep */
	ref_vs_fast("models/stories260K", 1500, 0);
}

/* ---- BOS, EOS, add_special ---- */

static void test_specials(void)
{
	gq_tokenizer *t;
	int32_t *ids;
	size_t n, len;
	const char *tok;

	if (!check_shared("tokenizers/gpt2") || !check_shared("models/stories260K")) {
		check_skip("../shared tokenizers absent");
		return;
	}
	/* stories260K: the template's BOS is id 1 ("\n<s>\n" in the vocab), not the added <s> */
	CHECK_OK(gq_tok_load(&t, check_shared("models/stories260K")));
	CHECK(gq_tok_vocab_size(t) == 514);
	CHECK(gq_tok_bos(t) == 1 && gq_tok_add_bos(t) == 1);
	CHECK(gq_tok_eos(t) == 513);
	CHECK_OK(gq_tok_encode(t, "Once", 4, 1, &ids, &n));
	CHECK(n >= 2 && ids[0] == 1);
	free(ids);
	CHECK(gq_tok_is_special(t, 512) && !gq_tok_is_special(t, 1) && !gq_tok_is_special(t, 9999));
	tok = gq_tok_token(t, 3, &len);
	CHECK(tok && len == 6 && !memcmp(tok, "<0x00>", 6));
	CHECK(!gq_tok_token(t, 514, &len) && !gq_tok_token(t, -1, &len));
	gq_tok_free(t);
	/* GPT-2: no BOS, nothing added; the bare tokenizer names no EOS */
	CHECK_OK(gq_tok_load(&t, check_shared("tokenizers/gpt2/tokenizer.json")));
	CHECK(gq_tok_vocab_size(t) == 50257);
	CHECK(gq_tok_bos(t) == -1 && gq_tok_eos(t) == -1 && !gq_tok_add_bos(t));
	CHECK_OK(gq_tok_encode(t, "Hi<|endoftext|>", 15, 1, &ids, &n));
	CHECK(n == 2 && ids[0] == 17250 && ids[1] == 50256);
	free(ids);
	gq_tok_free(t);
	/* Llama-2: no BOS in the template, but transformers' LlamaTokenizer adds one */
	CHECK_OK(gq_tok_load(&t, check_shared("tokenizers/llama2")));
	CHECK(gq_tok_bos(t) == 1 && gq_tok_eos(t) == 2 && gq_tok_add_bos(t));
	CHECK_OK(gq_tok_encode(t, "", 0, 1, &ids, &n));
	CHECK(n == 1 && ids[0] == 1);
	free(ids);
	gq_tok_free(t);
	/* Qwen2: bos_token null, EOS from the config */
	CHECK_OK(gq_tok_load(&t, check_shared("tokenizers/qwen2")));
	CHECK(gq_tok_bos(t) == -1 && gq_tok_eos(t) == 0 && !gq_tok_add_bos(t));
	gq_tok_free(t);
	/* add_bos_token false removes the template's BOS; {"content": ...} names are read */
	CHECK_OK(load_sq(&t, "nobos",
			 "{'model': {'type': 'BPE', 'vocab': {'<s>': 0, 'a': 1, '</s>': 2},"
			 " 'merges': []}, 'post_processor': {'type': 'TemplateProcessing',"
			 " 'single': [{'SpecialToken': {'id': '<s>'}}, {'Sequence': {'id': 'A'}},"
			 " {'SpecialToken': {'id': '</s>'}}],"
			 " 'special_tokens': {'<s>': {'ids': [0]}, '</s>': {'ids': [2]}}}}",
			 "{'add_bos_token': false, 'eos_token': {'content': '</s>'}}"));
	CHECK(gq_tok_bos(t) == 0 && !gq_tok_add_bos(t) && gq_tok_eos(t) == 2);
	CHECK_OK(gq_tok_encode(t, "aa", 2, 1, &ids, &n));
	CHECK(n == 3 && ids[0] == 1 && ids[1] == 1 && ids[2] == 2);
	free(ids);
	gq_tok_free(t);
}

/* ---- streaming decode ---- */

static void stream_matches(const gq_tokenizer *t, const char *text, int skip)
{
	gq_tok_stream *s;
	gq_buf all = {0};
	int32_t *ids;
	size_t n, len, plen;
	char *want;
	const char *piece;

	CHECK_OK(gq_tok_encode(t, text, strlen(text), 1, &ids, &n));
	CHECK_OK(gq_tok_decode(t, ids, n, skip, &want, &len));
	CHECK_OK(gq_tok_stream_init(&s, t, skip));
	for (size_t i = 0; i < n; i++) {
		CHECK_OK(gq_tok_stream_put(s, ids[i], &piece, &plen));
		/* a piece never ends inside a character */
		CHECK(tok_utf8_valid(piece, plen) == plen);
		gq_buf_append(&all, piece, plen);
	}
	gq_buf_append(&all, "", 0);
	CHECK(same_text("stream", all.data, all.len, want));
	gq_tok_stream_free(s);
	gq_buf_free(&all);
	free(want);
	free(ids);
}

static void test_stream(void)
{
	static const char *const texts[] = {
		"Once upon a time, there was a little girl named Lily.",
		" leading space, 🦙 emoji, 你好世界 and é́ accents\n\nnew lines",
		"<s>special</s> tokens <unk> inside",
	};
	static const char *const toks[] = {"models/stories260K", "tokenizers/gpt2"};
	gq_tokenizer *t;
	gq_tok_stream *s;
	const char *piece;
	size_t plen;
	int32_t bytes[3] = {3 + 0xE4, 3 + 0xBD, 3 + 0xA0}; /* 你 as three byte-fallback tokens */

	if (!check_shared(toks[0]) || !check_shared(toks[1])) {
		check_skip("../shared tokenizers absent");
		return;
	}
	for (int k = 0; k < 2; k++) {
		CHECK_OK(gq_tok_load(&t, check_shared(toks[k])));
		for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
			for (int skip = 0; skip < 2; skip++)
				stream_matches(t, texts[i], skip);
		gq_tok_free(t);
	}
	/* a character split over byte tokens comes out whole, with the last byte */
	CHECK_OK(gq_tok_load(&t, check_shared(toks[0])));
	CHECK_OK(gq_tok_stream_init(&s, t, 0));
	for (int i = 0; i < 3; i++) {
		CHECK_OK(gq_tok_stream_put(s, bytes[i], &piece, &plen));
		CHECK(i < 2 ? plen == 0 : plen == 3 && !memcmp(piece, "\xe4\xbd\xa0", 3));
	}
	/* bytes that never complete a character are given up as U+FFFD after 8 ids */
	piece = gq_tok_token(t, 412, &plen);
	CHECK(same_text("id 412", piece, plen, "a"));
	CHECK_OK(gq_tok_stream_put(s, 412, &piece, &plen));
	CHECK(plen == 1 && piece[0] == 'a');
	for (int i = 0; i < 8; i++) {
		CHECK_OK(gq_tok_stream_put(s, bytes[0], &piece, &plen));
		CHECK(i < 7 ? plen == 0 : plen == 8 * 3 && !memcmp(piece, "\xef\xbf\xbd", 3));
	}
	gq_tok_stream_free(s);
	gq_tok_free(t);
}

/* ---- the project's own tokenizer (tests/data/tokenizer): needs nothing from ../shared ---- */

/*
 * tests/gen/gen-tokenizer.py trained it on tests/data/corpus.txt: byte-level
 * BPE, ids 0-255 the bytes, 256-445 merges, 446 <s> (BOS, put first by the
 * template) and 447 </s> (EOS).
 */
static void test_own_tokenizer(void)
{
	gq_tokenizer *t;
	char *text, *dec;
	size_t len, n, n_ref, dl, paras = 0;
	int32_t *ids, *ref;
	const char *tok;

	CHECK_OK(gq_tok_load(&t, check_testdata("tokenizer")));
	if (check_test_failed)
		return;
	CHECK(gq_tok_vocab_size(t) == 448);
	CHECK(gq_tok_bos(t) == 446 && gq_tok_eos(t) == 447 && gq_tok_add_bos(t));
	CHECK(gq_tok_is_special(t, 446) && gq_tok_is_special(t, 447) && !gq_tok_is_special(t, 445));
	tok = gq_tok_token(t, 32, &len);
	CHECK(same_text("id 32", tok, len, "\xc4\xa0")); /* GPT-2's symbol for the space byte */
	tok = gq_tok_token(t, 446, &len);
	CHECK(same_text("id 446", tok, len, "<s>"));
	CHECK_OK(gq_tok_encode(t, "", 0, 1, &ids, &n));
	CHECK(n == 1 && ids[0] == 446);
	free(ids);
	CHECK_OK(gq_tok_encode(t, "The end.</s>", 12, 0, &ids, &n));
	CHECK(n >= 2 && ids[0] != 446 && ids[n - 1] == 447);
	free(ids);

	/* all of the corpus: BOS first, nothing special after it, lossless, compact */
	CHECK_OK(gq_read_file(check_testdata("corpus.txt"), 16 << 20, &text, &len));
	if (check_test_failed) {
		gq_tok_free(t);
		return;
	}
	CHECK_OK(gq_tok_encode(t, text, len, 1, &ids, &n));
	CHECK(n > 1 && ids[0] == 446);
	for (size_t i = 1; i < n; i++)
		if (ids[i] < 0 || ids[i] >= 446) {
			fprintf(stderr, "  corpus id %zu is %d\n", i, ids[i]);
			CHECK(0);
			break;
		}
	CHECK_OK(gq_tok_decode(t, ids, n, 1, &dec, &dl));
	CHECK(dec && dl == len && !memcmp(dec, text, len));
	free(dec);
	CHECK_OK(gq_tok_decode(t, ids, n, 0, &dec, &dl));
	CHECK(dec && dl == len + 3 && !memcmp(dec, "<s>", 3) && !memcmp(dec + 3, text, len));
	free(dec);
	printf("#   corpus.txt: %zu bytes, %zu tokens, %.3f tokens/byte\n", len, n - 1,
	       (double)(n - 1) / (double)len);
	CHECK((double)(n - 1) < 0.6 * (double)len);
	free(ids);

	/* paragraph by paragraph: fast BPE == reference, each round-trips */
	for (char *p = text, *end; p && !check_test_failed; p = end ? end + 2 : NULL) {
		size_t pl;

		end = strstr(p, "\n\n");
		pl = end ? (size_t)(end - p) : len - (size_t)(p - text);
		CHECK_OK(gq_tok_encode(t, p, pl, paras % 2, &ids, &n));
		CHECK_OK(gq_tok_encode_ref(t, p, pl, paras % 2, &ref, &n_ref));
		CHECK(same_ids("corpus paragraph", ids, n, ref, n_ref));
		CHECK_OK(gq_tok_decode(t, ids, n, 1, &dec, &dl));
		CHECK(dec && dl == pl && !memcmp(dec, p, pl));
		free(dec);
		free(ids);
		free(ref);
		paras++;
	}
	CHECK(paras >= 100);
	/* streaming decode gives the same text, accents and emoji included */
	for (int skip = 0; skip < 2; skip++)
		stream_matches(t, "Zo\xc3\xab said \xe2\x80\x9cwow\xe2\x80\x9d \xe2\x80\x94 "
			       "and smiled. \xf0\x9f\x99\x82\n\nThe end.", skip);
	free(text);
	gq_tok_free(t);
}

/* ---- Unicode ---- */

static void expect_norm(int form, const char *in, const char *want)
{
	gq_buf b = {0};

	CHECK_OK(tok_unicode_normalize(&b, in, strlen(in), form));
	gq_buf_append(&b, "", 0);
	CHECK(same_text(in, b.data, b.len, want));
	gq_buf_free(&b);
}

static void test_unicode(void)
{
	gq_buf b = {0};

	/* the full Unicode NormalizationTest.txt passes too (checked when the tables were made) */
	expect_norm(TOK_NFC, "e\xcc\x81", "\xc3\xa9");
	expect_norm(TOK_NFD, "\xc3\xa9", "e\xcc\x81");
	/* reordered by combining class, then composed past the lower class */
	expect_norm(TOK_NFC, "a\xcc\x80\xcc\x96", "\xc3\xa0\xcc\x96");
	/* Hangul, algorithmic both ways */
	expect_norm(TOK_NFC, "\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8", "\xea\xb0\x81");
	expect_norm(TOK_NFD, "\xea\xb0\x81", "\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8");
	/* a composition exclusion stays decomposed */
	expect_norm(TOK_NFC, "\xe0\xa5\x98", "\xe0\xa4\x95\xe0\xa4\xbc");
	/* compatibility forms only under K */
	expect_norm(TOK_NFKC, "\xef\xac\x81 \xe2\x91\xa0", "fi 1");
	expect_norm(TOK_NFC, "\xef\xac\x81", "\xef\xac\x81");
	expect_norm(TOK_NFKD, "\xe1\xba\x9b\xcc\xa3", "s\xcc\xa3\xcc\x87");
	tok_lowercase(&b, "\xc4\xb0STANBUL \xce\xa3\xce\x91\xce\xa3", 15);
	gq_buf_append(&b, "", 0);
	CHECK(same_text("lowercase", b.data, b.len, "i\xcc\x87stanbul \xcf\x83\xce\xb1\xcf\x83"));
	/* strict UTF-8 */
	CHECK(tok_utf8_valid("a\xc0\xaf", 3) == 1);         /* overlong */
	CHECK(tok_utf8_valid("\xed\xa0\x80", 3) == 0);      /* surrogate */
	CHECK(tok_utf8_valid("\xf4\x90\x80\x80", 4) == 0);  /* past U+10FFFF */
	CHECK(tok_utf8_valid("\xf0\x9f\xa6\x99", 4) == 4);
	/* lossy decoding: one U+FFFD per maximal invalid subpart, as Rust */
	b.len = 0;
	tok_utf8_lossy(&b, "\xf0\x9f\xa6" "a\xed\xa0\x80\xc0", 8);
	gq_buf_append(&b, "", 0);
	CHECK(same_text("lossy", b.data, b.len,
			"\xef\xbf\xbd" "a\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"));
	gq_buf_free(&b);
}

/* ---- corrupt and unsupported tokenizer.json ---- */

#define M(v, m) "{'model': {'type': 'BPE', 'vocab': " v ", 'merges': " m "}"
#define AB "{'a': 0, 'b': 1, 'ab': 2}"
#define GOOD M(AB, "[]")

static void test_corrupt(void)
{
	static const struct {
		const char *json;
		int code;
		const char *msg;
	} bad[] = {
		{M(AB, "['a b']"), GQ_ERR_FORMAT, "invalid JSON near byte"}, /* truncated */
		{"[1, 2]", GQ_ERR_FORMAT, "must hold a JSON object"},
		{"{}", GQ_ERR_FORMAT, "missing 'model'"},
		{"{'model': 3}", GQ_ERR_FORMAT, "'model' must be an object"},
		{"{'model': {'type': 'Unigram'}}", GQ_ERR_UNSUPPORTED, "model type 'Unigram'"},
		{"{'model': {'type': 'BPE', 'vocab': {}}}", GQ_ERR_FORMAT, "missing 'merges'"},
		{M("[]", "[]") "}", GQ_ERR_FORMAT, "'vocab' must be an object"},
		{M("{'a': '0'}", "[]") "}", GQ_ERR_FORMAT, "id of 'a' must be an integer"},
		{M("{'a': -1}", "[]") "}", GQ_ERR_FORMAT,
		 "id of 'a' must be an integer in [0, 16777216)"},
		{M("{'a': 1e9}", "[]") "}", GQ_ERR_FORMAT, "id of 'a' must be an integer"},
		{M("{'a': 1.5}", "[]") "}", GQ_ERR_FORMAT, "id of 'a' must be an integer"},
		{M("{'a': 0, 'b': 0}", "[]") "}", GQ_ERR_FORMAT, "id 0 is used by"},
		{M("{'a': 0, 'a': 1}", "[]") "}", GQ_ERR_FORMAT, "token 'a' appears twice"},
		{M(AB, "{}") "}", GQ_ERR_FORMAT, "'merges' must be an array"},
		{M(AB, "['a c']") "}", GQ_ERR_FORMAT, "merges[0]: unknown token 'c'"},
		{M(AB, "['a b', ['b', 'a']]") "}", GQ_ERR_FORMAT,
		 "merges[1]: merged token 'ba' is not"},
		{M(AB, "['ab']") "}", GQ_ERR_FORMAT, "is not two tokens and one space"},
		{M(AB, "[['a']]") "}", GQ_ERR_FORMAT, "merges[0] must be"},
		{M(AB, "[7]") "}", GQ_ERR_FORMAT, "merges[0] must be"},
		{M(AB, "[], 'unk_token': '<unk>'") "}", GQ_ERR_FORMAT,
		 "unk_token '<unk>' is not in"},
		{M(AB, "[], 'byte_fallback': 1") "}", GQ_ERR_FORMAT,
		 "'byte_fallback' must be true or"},
		{M(AB, "[], 'dropout': 0.1") "}", GQ_ERR_UNSUPPORTED, "dropout"},
		{GOOD ", 'added_tokens': {}}", GQ_ERR_FORMAT, "'added_tokens' must be an array"},
		{GOOD ", 'added_tokens': [{'id': 3}]}", GQ_ERR_FORMAT,
		 "added_tokens[0]: missing 'content'"},
		{GOOD ", 'added_tokens': [{'id': '3', 'content': 'x'}]}", GQ_ERR_FORMAT,
		 "added_tokens[0]: 'id' must be an integer"},
		{GOOD ", 'added_tokens': [{'id': 3, 'content': 'x', 'lstrip': 1}]}", GQ_ERR_FORMAT,
		 "'lstrip' must be true or false"},
		{GOOD ", 'added_tokens': [{'id': 3, 'content': 'x'}, {'id': 4, 'content': 'x'}]}",
		 GQ_ERR_FORMAT, "'x' appears twice"},
		{M("{'a': 0, 'b': 2}", "[]") ", 'added_tokens': [{'id': 3, 'content': 'x'}, "
		 "{'id': 4, 'content': 'y'}]}", GQ_ERR_FORMAT, "id 2 of 'x' is already 'b'"},
		{GOOD ", 'normalizer': {'type': 'Precompiled'}}", GQ_ERR_UNSUPPORTED,
		 "normalizer type 'Precompiled' is not supported"},
		{GOOD ", 'normalizer': {'type': 'Replace', 'pattern': {'Regex': '(['},"
		 " 'content': ''}}", GQ_ERR_FORMAT, "bad regex '(['"},
		{GOOD ", 'normalizer': [1]}", GQ_ERR_FORMAT, "normalizer must be an object"},
		{GOOD ", 'pre_tokenizer': {'type': 'Split', 'pattern': 'x'}}", GQ_ERR_FORMAT,
		 "'pattern' must be an object"},
		{GOOD ", 'pre_tokenizer': {'type': 'Split', 'pattern': {'String': 'x'},"
		 " 'behavior': 'Up'}}", GQ_ERR_FORMAT, "unknown behavior 'Up'"},
		{GOOD ", 'pre_tokenizer': {'type': 'Metaspace', 'replacement': 'ab'}}",
		 GQ_ERR_FORMAT, "'replacement' must be one character"},
		{GOOD ", 'pre_tokenizer': {'type': 'Split', 'pattern': {'Regex': '[a&&b]'}}}",
		 GQ_ERR_UNSUPPORTED, "class intersection"},
		{GOOD ", 'pre_tokenizer': {'type': 'UnicodeScripts'}}", GQ_ERR_UNSUPPORTED,
		 "pre_tokenizer type 'UnicodeScripts'"},
		{GOOD ", 'decoder': {'type': 'WordPiece'}}", GQ_ERR_UNSUPPORTED,
		 "decoder type 'WordPiece'"},
		{GOOD ", 'decoder': {'type': 'Strip', 'content': ' ', 'start': -1}}", GQ_ERR_FORMAT,
		 "'start' must be an integer"},
		{GOOD ", 'post_processor': {'type': 'TemplateProcessing', 'single': "
		 "[{'SpecialToken': {'id': '<s>'}}, {'Sequence': {'id': 'A'}}], "
		 "'special_tokens': {}}}", GQ_ERR_FORMAT,
		 "special token '<s>' is not in 'special_tokens'"},
		{GOOD ", 'post_processor': {'type': 'TemplateProcessing', 'single': "
		 "[{'SpecialToken': {'id': '<s>'}}, {'Sequence': {'id': 'A'}}], "
		 "'special_tokens': {'<s>': {'ids': [3]}}}}",
		 GQ_ERR_FORMAT, "special token id must be an integer in [0, 3)"},
		{GOOD ", 'post_processor': {'type': 'TemplateProcessing', 'single': []}}",
		 GQ_ERR_FORMAT, "'single' must hold the sequence A once"},
		{M("{'a\xff': 0}", "[]") "}", GQ_ERR_FORMAT, "not valid UTF-8 (byte 38)"},
	};
	char deep[6000], path[700];
	gq_tokenizer *t;
	int32_t *ids;
	size_t n;
	int fd;

	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		CHECK_ERR(load_sq(&t, "bad", bad[i].json, NULL), bad[i].code, bad[i].msg);
		CHECK(t == NULL);
		CHECK(strstr(gq_errmsg(), "/bad/tokenizer.json: ") != NULL);
	}
	/* Sequences nested deeper than we follow */
	strcpy(deep, GOOD ", 'pre_tokenizer': ");
	for (int i = 0; i < 10; i++)
		strcat(deep, "{'type': 'Sequence', 'pretokenizers': [");
	for (int i = 0; i < 10; i++)
		strcat(deep, "]}");
	strcat(deep, "}");
	CHECK_ERR(load_sq(&t, "bad", deep, NULL), GQ_ERR_FORMAT, "nested too deep");
	/* JSON nested past cJSON's limit */
	memset(deep, '[', 3000);
	deep[3000] = '\0';
	CHECK_ERR(load_json(&t, "bad", deep, NULL), GQ_ERR_FORMAT, "invalid JSON");
	/* tokenizer_config.json is checked as well */
	CHECK_ERR(load_sq(&t, "bad", GOOD "}", "{'bos_token': 3}"), GQ_ERR_FORMAT,
		  "tokenizer_config.json: 'bos_token' must be a string");
	CHECK_ERR(load_sq(&t, "bad", GOOD "}", "{'add_bos_token': 'yes'}"), GQ_ERR_FORMAT,
		  "'add_bos_token' must be true or false");
	CHECK_ERR(load_sq(&t, "bad", GOOD "}", "{'bos_token'"), GQ_ERR_FORMAT,
		  "tokenizer_config.json: invalid JSON");
	/* missing, and too large to read (a sparse file: nothing is written) */
	snprintf(path, sizeof path, "%s/none", dir);
	CHECK_ERR(gq_tok_load(&t, path), GQ_ERR_IO, "cannot open");
	snprintf(path, sizeof path, "%s/bad/tokenizer.json", dir);
	fd = open(path, O_WRONLY | O_TRUNC);
	CHECK(fd >= 0 && ftruncate(fd, (off_t)(256u << 20) + 1) == 0);
	close(fd);
	CHECK_ERR(gq_tok_load(&t, path), GQ_ERR_FORMAT, "is too large");
	unlink(path);
	/* a good tokenizer refuses invalid UTF-8 text */
	CHECK_OK(load_sq(&t, "good", M(AB, "['a b']") "}", NULL));
	if (!t)
		return;
	CHECK_ERR(gq_tok_encode(t, "ab\xc3", 3, 0, &ids, &n), GQ_ERR_FORMAT,
		  "not valid UTF-8 (byte 2)");
	CHECK_OK(gq_tok_encode(t, "abab", 4, 0, &ids, &n));
	CHECK(n == 2 && ids[0] == 2 && ids[1] == 2);
	free(ids);
	gq_tok_free(t);
}

int main(void)
{
	char cmd[600];

	if (!mkdtemp(dir)) {
		perror(dir);
		return 1;
	}
	RUN(test_cases_gpt2);
	RUN(test_cases_llama2);
	RUN(test_cases_qwen2);
	RUN(test_cases_stories260k);
	RUN(test_llamacpp_gpt2);
	RUN(test_hf_variants);
	RUN(test_ref_vs_fast_gpt2);
	RUN(test_ref_vs_fast_stories260k);
	RUN(test_specials);
	RUN(test_stream);
	RUN(test_own_tokenizer);
	RUN(test_unicode);
	RUN(test_corrupt);
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", dir);
	return check_done();
}
