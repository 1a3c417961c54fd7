/*
 * test_pack.c - AutoGPTQ packing: fast packers against the bit-cursor
 * references for every width, unpack(pack(x)) == x for codes and zeros in
 * both checkpoint formats, the documented 3-bit word layout, refusals, and
 * the threaded dequantization of qlinear frames.
 */
#include "check.h"
#include "pack.h"
#include "qlinear.h"
#include "stream.h"
#include "tensor.h"

#include <stdlib.h>

static void test_roundtrip_all_widths(void)
{
	static const int widths[] = {2, 3, 4, 8};
	uint64_t seed = 5;

	for (int k = 0; k < 4; k++) {
		int bits = widths[k];
		int64_t out = 96, in = 192, groups = 6;
		uint8_t *codes = malloc((size_t)(out * in)), *back = malloc((size_t)(out * in));
		int32_t *qw = malloc((size_t)(in * bits / 32 * out) * 4), *qr = malloc((size_t)(in * bits / 32 * out) * 4);
		uint8_t zeros[6 * 96], zback[6 * 96];
		int32_t qz[6 * 96];

		for (int64_t i = 0; i < out * in; i++)
			codes[i] = (uint8_t)(check_rand(&seed) & ((1u << bits) - 1));
		CHECK_OK(gq_pack_check(bits, out, in, "t"));
		gq_pack_qweight(codes, out, in, bits, qw);
		gq_pack_qweight_ref(codes, out, in, bits, qr);
		CHECK(memcmp(qw, qr, (size_t)(in * bits / 32 * out) * 4) == 0);
		gq_unpack_qweight(qw, out, in, bits, back);
		CHECK(memcmp(codes, back, (size_t)(out * in)) == 0);
		memset(back, 0, (size_t)(out * in));
		gq_unpack_qweight_ref(qw, out, in, bits, back);
		CHECK(memcmp(codes, back, (size_t)(out * in)) == 0);
		for (int fmt = 0; fmt < 2; fmt++) {
			for (int64_t i = 0; i < groups * out; i++)
				zeros[i] = (uint8_t)(1 + check_rand(&seed) % ((1u << bits) - 1));
			if (fmt == GQ_FORMAT_GPTQ_V2)
				zeros[3] = 0;
			CHECK_OK(gq_pack_qzeros(zeros, groups, out, bits, (gq_ckpt_format)fmt, qz));
			gq_unpack_qzeros(qz, groups, out, bits, (gq_ckpt_format)fmt, zback);
			CHECK(memcmp(zeros, zback, (size_t)(groups * out)) == 0);
		}
		free(codes);
		free(back);
		free(qw);
		free(qr);
	}
}

static void test_known_layouts(void)
{
	uint8_t codes[32], z[8] = {8, 8, 8, 8, 8, 8, 8, 8};
	int32_t qw[3], qz[1];

	/* 4-bit: codes 0..7 of one output column, lowest nibble first */
	for (int i = 0; i < 8; i++)
		codes[i] = (uint8_t)i;
	gq_pack_qweight(codes, 1, 8, 4, qw);
	CHECK((uint32_t)qw[0] == 0x76543210u);
	/* v1 stores zero - 1: eight zeros of 8 become 0x77777777 */
	CHECK_OK(gq_pack_qzeros(z, 1, 8, 4, GQ_FORMAT_GPTQ, qz));
	CHECK((uint32_t)qz[0] == 0x77777777u);
	CHECK_OK(gq_pack_qzeros(z, 1, 8, 4, GQ_FORMAT_GPTQ_V2, qz));
	CHECK((uint32_t)qz[0] == 0x88888888u);
	/* 3-bit: c10 splits 2+1 bits over words 0/1, c21 1+2 over words 1/2 */
	memset(codes, 0, sizeof codes);
	codes[10] = 7;
	codes[21] = 7;
	codes[31] = 5;
	gq_pack_qweight(codes, 1, 32, 3, qw);
	CHECK((uint32_t)qw[0] == 0xC0000000u);
	CHECK((uint32_t)qw[1] == 0x80000001u);
	CHECK((uint32_t)qw[2] == (0x3u | 5u << 29));
}

static void test_refusals(void)
{
	uint8_t z[8] = {0, 1, 1, 1, 1, 1, 1, 1};
	int32_t qz[1];

	CHECK_ERR(gq_pack_check(3, 64, 48, "m.q_proj"), GQ_ERR_UNSUPPORTED,
		  "m.q_proj: [64, 48] cannot be packed at 3 bits (both dimensions must be multiples of 32)");
	CHECK_ERR(gq_pack_check(4, 12, 64, "x"), GQ_ERR_UNSUPPORTED, "multiples of 8");
	CHECK_ERR(gq_pack_check(5, 32, 32, "x"), GQ_ERR_ARG, "cannot pack 5-bit codes");
	CHECK_ERR(gq_pack_qzeros(z, 1, 8, 4, GQ_FORMAT_GPTQ, qz), GQ_ERR_UNSUPPORTED, "use gptq_v2");
}

/*
 * gq_qlinear_dequant in 5 spans of 1000 rows (GPTQ_THREADS=5, 5.5 M
 * weights), with act-order groups, against the formula element by element.
 */
static void test_qlinear_dequant_threaded(void)
{
	gq_qlinear ql = {.rows = 5000, .cols = 1100, .n_groups = 9};
	const int64_t n = ql.rows * ql.cols;
	float *W = malloc((size_t)n * sizeof *W); /* [rows, cols] */
	uint64_t seed = 3;

	ql.codes = malloc((size_t)n);
	ql.scales = malloc((size_t)(ql.n_groups * ql.rows) * sizeof *ql.scales);
	ql.zeros = malloc((size_t)(ql.n_groups * ql.rows));
	ql.g_idx = malloc((size_t)ql.cols * sizeof *ql.g_idx);
	for (int64_t i = 0; i < n; i++)
		ql.codes[i] = (uint8_t)(check_randf(&seed) * 8 + 8);
	for (int64_t i = 0; i < ql.n_groups * ql.rows; i++) {
		ql.scales[i] = gq_f32_to_f16(check_randf(&seed) * 0.1f + 0.11f);
		ql.zeros[i] = (uint8_t)(i % 16);
	}
	for (int64_t c = 0; c < ql.cols; c++)
		ql.g_idx[c] = (int32_t)((c * 7) % ql.n_groups);
	setenv("GPTQ_THREADS", "5", 1);
	gq_qlinear_dequant(&ql, W);
	unsetenv("GPTQ_THREADS");
	int64_t bad = 0;
	for (int64_t r = 0; r < ql.rows; r++)
		for (int64_t c = 0; c < ql.cols; c++) {
			int32_t g = ql.g_idx[c];
			float want = gq_f16_to_f32(ql.scales[g * ql.rows + r]) *
				     ((float)ql.codes[r * ql.cols + c] - (float)ql.zeros[g * ql.rows + r]);

			bad += W[r * ql.cols + c] != want;
		}
	CHECK(bad == 0);
	gq_qlinear_free(&ql);
	free(W);
}

/* ql with codes[at] set to `code`, through a stream file and back: parse's (copy 1) or view's status. */
static int reparse(gq_qlinear *ql, int64_t at, uint8_t code, int copy)
{
	const char *path = "/tmp/gq-test-pack-qlinear.gqs";
	gq_writer_opts o = {0, 1, 1};
	uint8_t saved = ql->codes[at];
	gq_st_builder b;
	gq_writer *w;
	gq_reader *r;
	gq_frame f = {0};
	gq_qlinear got;
	int rc;

	ql->codes[at] = code;
	CHECK_OK(gq_qlinear_frame(ql, &b));
	CHECK_OK(gq_writer_open(&w, path, &o));
	CHECK_OK(gq_writer_put(w, &b));
	CHECK_OK(gq_writer_close(w, 1));
	gq_stb_free(&b);
	ql->codes[at] = saved;
	CHECK_OK(gq_reader_open(&r, path));
	CHECK(gq_reader_next(r, &f, GQ_READ_DATA) == 1);
	rc = copy ? gq_qlinear_parse(&got, &f) : gq_qlinear_view(&got, &f);
	if (rc == GQ_OK) {
		const uint8_t *lo = f.data, *hi = lo + f.hdr.data_len;

		CHECK(memcmp(got.codes, ql->codes, (size_t)(ql->rows * ql->cols)) == 0);
		/* a view points into the frame, a parse owns copies */
		CHECK((got.codes >= lo && got.codes < hi) == !copy);
		if (copy)
			gq_qlinear_free(&got);
	}
	gq_frame_free(&f);
	gq_reader_close(r);
	remove(path);
	return rc;
}

/*
 * Codes too large for their width are found wherever they are: within the
 * 8-byte words checked at once and in the tail after them; codes of exactly
 * 2^bits - 1 pass. Parsing copies, a view does not.
 */
static void test_qlinear_code_ranges(void)
{
	gq_qlinear ql = {.name = "m", .bits = 4, .group_size = -1, .rows = 3, .cols = 13, .n_groups = 1};

	ql.codes = calloc(39, 1);
	ql.scales = calloc(3, 2);
	ql.zeros = calloc(3, 1);
	ql.g_idx = calloc(13, sizeof *ql.g_idx);
	for (int k = 0; k < 3; k++)
		ql.scales[k] = gq_f32_to_f16(0.5f);
	for (int bits = 2; bits <= 4; bits++) {
		uint8_t maxq = (uint8_t)((1 << bits) - 1);

		ql.bits = bits;
		memset(ql.codes, maxq, 39);
		for (int copy = 0; copy < 2; copy++) {
			CHECK_OK(reparse(&ql, 5, maxq, copy));
			CHECK_ERR(reparse(&ql, 8, maxq + 1, copy), GQ_ERR_FORMAT, "at 8 exceeds");
			CHECK_ERR(reparse(&ql, 37, 255, copy), GQ_ERR_FORMAT, "at 37 exceeds");
		}
	}
	gq_qlinear_free(&ql);
}

int main(void)
{
	RUN(test_roundtrip_all_widths);
	RUN(test_known_layouts);
	RUN(test_refusals);
	RUN(test_qlinear_dequant_threaded);
	RUN(test_qlinear_code_ranges);
	return check_done();
}
