/*
 * test_safetensors.c - the header parser's validation, one test per way a
 * header can be wrong, and builder -> parser round trips.
 */
#include "check.h"
#include "safetensors.h"

static int parse(const char *json, gq_st_header *h)
{
	return gq_st_parse(json, strlen(json), 8, h);
}

static void test_valid_header(void)
{
	gq_st_header h;
	const char *j = "{\"__metadata__\":{\"gptq.kind\":\"hessian\",\"layer\":\"3\"},"
			"\"b\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[16,22]},"
			"\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
			"\"empty\":{\"dtype\":\"I8\",\"shape\":[0,5],\"data_offsets\":[22,22]}}   ";

	CHECK_OK(parse(j, &h));
	CHECK(h.n_tensors == 3);
	CHECK(h.data_len == 22);
	CHECK(strcmp(gq_st_meta(&h, "gptq.kind"), "hessian") == 0);
	CHECK(gq_st_meta(&h, "missing") == NULL);
	CHECK(gq_st_find(&h, "a")->dtype == GQ_DTYPE_F32);
	CHECK(gq_st_find(&h, "b")->shape[0] == 3);
	CHECK(gq_st_find(&h, "empty")->ndim == 2);
	gq_st_header_free(&h);

	CHECK_OK(parse("{}", &h));
	CHECK(h.n_tensors == 0 && h.data_len == 0);
	gq_st_header_free(&h);
	CHECK_OK(parse("{\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,8]}}", &h));
	CHECK(h.tensors[0].ndim == 0 && h.data_len == 8);
	gq_st_header_free(&h);
}

static void test_json_errors(void)
{
	gq_st_header h;

	CHECK_ERR(parse("{\"a\":", &h), GQ_ERR_FORMAT, "not valid JSON");
	CHECK_ERR(parse("{\"a\" 1}", &h), GQ_ERR_FORMAT, "error at byte 13");
	CHECK_ERR(parse("[1,2]", &h), GQ_ERR_FORMAT, "not a JSON object");
	CHECK_ERR(parse("{} x", &h), GQ_ERR_FORMAT, "junk after the header JSON at byte 11");
	CHECK_ERR(gq_st_parse("{\"\xff\":1}", 7, 8, &h), GQ_ERR_FORMAT, "not valid UTF-8 at byte 10");
	CHECK_ERR(parse("{\"\xed\xa0\x80\":1}", &h), GQ_ERR_FORMAT, "not valid UTF-8");
	CHECK_ERR(parse("{\"__metadata__\":{\"k\":1}}", &h), GQ_ERR_FORMAT,
		  "__metadata__ value of 'k' is not a string");
	CHECK_ERR(parse("{\"__metadata__\":[]}", &h), GQ_ERR_FORMAT, "__metadata__ is not an object");
	CHECK_ERR(parse("{\"__metadata__\":{},\"__metadata__\":{}}", &h), GQ_ERR_FORMAT,
		  "duplicate __metadata__");
}

static void test_entry_errors(void)
{
	gq_st_header h;

	CHECK_ERR(parse("{\"t\":5}", &h), GQ_ERR_FORMAT, "tensor 't': entry is not an object");
	CHECK_ERR(parse("{\"t\":{\"shape\":[1],\"data_offsets\":[0,4]}}", &h), GQ_ERR_FORMAT,
		  "tensor 't': missing dtype");
	CHECK_ERR(parse("{\"t\":{\"dtype\":\"F7\",\"shape\":[1],\"data_offsets\":[0,4]}}", &h),
		  GQ_ERR_FORMAT, "tensor 't': unknown dtype 'F7'");
	CHECK_ERR(parse("{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", &h), GQ_ERR_FORMAT,
		  "tensor 't': missing shape");
	CHECK_ERR(parse("{\"t\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", &h),
		  GQ_ERR_FORMAT, "shape holds something other than a size");
	CHECK_ERR(parse("{\"t\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", &h),
		  GQ_ERR_FORMAT, "shape holds something other than a size");
	CHECK_ERR(parse("{\"t\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,4]}}", &h),
		  GQ_ERR_FORMAT, "shape holds something other than a size");
	CHECK_ERR(parse("{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
			"\"data_offsets\":[0,4]}}", &h),
		  GQ_ERR_FORMAT, "9 dimensions");
	CHECK_ERR(parse("{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", &h),
		  GQ_ERR_FORMAT, "data_offsets is not a pair");
	CHECK_ERR(parse("{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1e300]}}", &h),
		  GQ_ERR_FORMAT, "data_offsets is not a pair of sizes below 2^53");
	CHECK_ERR(parse("{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", &h),
		  GQ_ERR_FORMAT, "end before begin");
	CHECK_ERR(parse("{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", &h),
		  GQ_ERR_FORMAT, "empty name");
}

static void test_size_errors(void)
{
	gq_st_header h;

	CHECK_ERR(parse("{\"t\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", &h),
		  GQ_ERR_FORMAT,
		  "tensor 't': data_offsets [0, 12] hold 12 bytes but shape [2, 2] x F32 needs 16");
	/* 2^32 * 2^32 elements overflow 64 bits before the dtype size is applied */
	CHECK_ERR(parse("{\"t\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],"
			"\"data_offsets\":[0,4]}}", &h),
		  GQ_ERR_FORMAT, "shape overflows 64 bits");
	CHECK_ERR(parse("{\"t\":{\"dtype\":\"F64\",\"shape\":[4294967296,1073741824],"
			"\"data_offsets\":[0,4]}}", &h),
		  GQ_ERR_FORMAT, "byte size overflows 64 bits");
}

static void test_layout_errors(void)
{
	gq_st_header h;

	CHECK_ERR(parse("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
			"\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}", &h),
		  GQ_ERR_FORMAT, "tensor 'b': data_offsets [2, 6] overlap tensor 'a'");
	CHECK_ERR(parse("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", &h),
		  GQ_ERR_FORMAT, "leave bytes [0, 4) not covered");
	CHECK_ERR(parse("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
			"\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[6,10]}}", &h),
		  GQ_ERR_FORMAT, "leave bytes [4, 6) not covered");
	CHECK_ERR(parse("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
			"\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", &h),
		  GQ_ERR_FORMAT, "duplicate tensor name 'a'");
	/* \u0000 truncates the C name: it must collide, not alias silently */
	CHECK_ERR(parse("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
			"\"a\\u0000x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", &h),
		  GQ_ERR_FORMAT, "duplicate tensor name 'a'");
}

static void test_builder_roundtrip(void)
{
	float a[6] = {1, 2, 3, 4, 5, 6};
	uint16_t b[3] = {1, 2, 3};
	uint8_t c[5] = {9, 8, 7, 6, 5};
	double d = 3.5;
	int64_t sa[2] = {2, 3}, sb[1] = {3}, sc[1] = {5};
	gq_st_builder bld;
	gq_st_header h;
	char *json;
	size_t len;
	int *order;
	uint64_t data_len;

	gq_stb_init(&bld);
	CHECK_OK(gq_stb_meta(&bld, "gptq.kind", "qlinear"));
	CHECK_OK(gq_stb_meta(&bld, "quote\"and\\slash", "line\nbreak"));
	CHECK_OK(gq_stb_meta(&bld, "gptq.kind", "tokens")); /* replaces */
	CHECK_OK(gq_stb_tensor(&bld, "c", GQ_DTYPE_U8, 1, sc, c));
	CHECK_OK(gq_stb_tensor(&bld, "b", GQ_DTYPE_F16, 1, sb, b));
	CHECK_OK(gq_stb_tensor(&bld, "a", GQ_DTYPE_F32, 2, sa, a));
	CHECK_OK(gq_stb_tensor(&bld, "d", GQ_DTYPE_F64, 0, NULL, &d));
	CHECK_ERR(gq_stb_tensor(&bld, "a", GQ_DTYPE_F32, 2, sa, a), GQ_ERR_ARG, "duplicate");
	CHECK_ERR(gq_stb_tensor(&bld, "f8", GQ_DTYPE_F8_E4M3, 1, sc, c), GQ_ERR_UNSUPPORTED,
		  "cannot write dtype F8_E4M3");
	CHECK_OK(gq_stb_header(&bld, &json, &len, &order, &data_len));
	CHECK((8 + len) % 8 == 0);
	CHECK(data_len == 8 + 24 + 6 + 5);
	/* largest element first: d (8), a (4), b (2), c (1) */
	CHECK(order[0] == 3 && order[1] == 2 && order[2] == 1 && order[3] == 0);
	CHECK_OK(gq_st_parse(json, len, 8, &h));
	CHECK(h.data_len == data_len);
	CHECK(strcmp(gq_st_meta(&h, "gptq.kind"), "tokens") == 0);
	CHECK(strcmp(gq_st_meta(&h, "quote\"and\\slash"), "line\nbreak") == 0);
	CHECK(gq_st_find(&h, "d")->begin == 0 && gq_st_find(&h, "a")->begin == 8);
	CHECK(gq_st_find(&h, "a")->shape[1] == 3);
	gq_st_header_free(&h);
	free(json);
	free(order);
	gq_stb_free(&bld);
}

int main(void)
{
	RUN(test_valid_header);
	RUN(test_json_errors);
	RUN(test_entry_errors);
	RUN(test_size_errors);
	RUN(test_layout_errors);
	RUN(test_builder_roundtrip);
	return check_done();
}
