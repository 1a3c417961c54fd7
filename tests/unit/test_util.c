/*
 * test_util.c - strict number parsing, the string map and the byte buffer.
 */
#include "check.h"

static void test_parse_numbers(void)
{
	int64_t i;
	double d;
	uint64_t s;

	CHECK_OK(gq_parse_i64("42", 0, 100, &i));
	CHECK(i == 42);
	CHECK_ERR(gq_parse_i64("4x", 0, 100, &i), GQ_ERR_ARG, "not an integer");
	CHECK_ERR(gq_parse_i64("", 0, 100, &i), GQ_ERR_ARG, "empty");
	CHECK_ERR(gq_parse_i64("101", 0, 100, &i), GQ_ERR_ARG, "out of range [0, 100]");
	CHECK_ERR(gq_parse_i64("99999999999999999999", 0, INT64_MAX, &i), GQ_ERR_ARG, "out of range");
	CHECK_OK(gq_parse_f64("0.01", 0, 1, &d));
	CHECK(d == 0.01);
	CHECK_ERR(gq_parse_f64("nan", 0, 1, &d), GQ_ERR_ARG, "not a finite number");
	CHECK_ERR(gq_parse_f64("2", 0, 1, &d), GQ_ERR_ARG, "out of range");
	CHECK_OK(gq_parse_size("4G", &s));
	CHECK(s == 4ull << 30);
	CHECK_OK(gq_parse_size("512MB", &s));
	CHECK(s == 512ull << 20);
	CHECK_OK(gq_parse_size("100", &s));
	CHECK(s == 100);
	CHECK_ERR(gq_parse_size("-1", &s), GQ_ERR_ARG, "not a size");
	CHECK_ERR(gq_parse_size("3X", &s), GQ_ERR_ARG, "not a size");
	CHECK_ERR(gq_parse_size("99999999999T", &s), GQ_ERR_ARG, "too large");
}

static void test_strmap(void)
{
	gq_strmap m = {0};
	int64_t v;
	char key[32];

	for (int i = 0; i < 10000; i++) {
		snprintf(key, sizeof key, "k%d", i);
		CHECK_OK(gq_strmap_put(&m, key, i));
	}
	CHECK(m.n == 10000);
	CHECK(gq_strmap_get(&m, "k1234", &v) && v == 1234);
	CHECK(!gq_strmap_get(&m, "k10000", &v));
	CHECK_OK(gq_strmap_put(&m, "k5", -1));
	CHECK(gq_strmap_get(&m, "k5", &v) && v == -1 && m.n == 10000);
	/* keys with NUL bytes are distinct from their prefixes */
	CHECK_OK(gq_strmap_putn(&m, "a\0b", 3, 7));
	CHECK(!gq_strmap_get(&m, "a", &v));
	CHECK(gq_strmap_getn(&m, "a\0b", 3, &v) && v == 7);
	gq_strmap_free(&m);
	CHECK(!gq_strmap_get(&m, "k1", &v));
}

static void test_buf(void)
{
	gq_buf b = {0};

	gq_buf_printf(&b, "%d-%s", 7, "x");
	gq_buf_json_string(&b, "q\"\\\n\x01");
	CHECK(strcmp(b.data, "7-x\"q\\\"\\\\\\n\\u0001\"") == 0);
	CHECK(!b.failed);
	gq_buf_free(&b);
}

static void test_json_nul(void)
{
	/* a NUL; an escaped backslash, then one; a NUL then a digit */
	const char *yes[] = {"{\"p\": \"a\\u0000b\"}", "[\"\\\\\\u0000\"]", "\"\\u00001\""};
	/* an escaped backslash, then u0000 as text; cut short; U+0001 */
	const char *no[] = {"{\"p\": \"a\\\\u0000b\"}", "\"\\u000", "\"\\u0001\""};

	for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
		CHECK(gq_json_has_nul(yes[i], strlen(yes[i])));
	for (size_t i = 0; i < sizeof no / sizeof *no; i++)
		CHECK(!gq_json_has_nul(no[i], strlen(no[i])));
}

int main(void)
{
	RUN(test_parse_numbers);
	RUN(test_strmap);
	RUN(test_buf);
	RUN(test_json_nul);
	return check_done();
}
