/*
 * test_stream.c - frame streams: round trips through files, concatenation,
 * zstd (whole and mixed), pipes with a writer that waits for the reader,
 * truncation at every byte, corruption, and pass-through byte identity.
 */
#define _GNU_SOURCE
#include "check.h"
#include "hessian.h"
#include "io.h"
#include "stream.h"
#include "tensor.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmpdir[] = "/tmp/gq-test-stream-XXXXXX";

static const char *tmp(const char *name)
{
	static char buf[4][512];
	static int k;
	char *b = buf[k++ % 4];

	snprintf(b, sizeof buf[0], "%s/%s", tmpdir, name);
	return b;
}

/* Frame i of the test streams: kind "test", attribute i, tensors of i-dependent size. */
static void build_frame(gq_st_builder *b, int i, float *x, int32_t *y)
{
	char attr[16];
	int64_t sx[2] = {i + 1, 7}, sy[1] = {3};

	for (int k = 0; k < (i + 1) * 7; k++)
		x[k] = (float)(i * 100 + k) * 0.25f;
	for (int k = 0; k < 3; k++)
		y[k] = -i - k;
	snprintf(attr, sizeof attr, "%d", i);
	gq_stb_init(b);
	CHECK_OK(gq_stb_meta(b, GQ_KIND_KEY, "test"));
	CHECK_OK(gq_stb_meta(b, "i", attr));
	CHECK_OK(gq_stb_tensor(b, "x", GQ_DTYPE_F32, 2, sx, x));
	CHECK_OK(gq_stb_tensor(b, "y", GQ_DTYPE_I32, 1, sy, y));
}

static void write_stream(const char *path, int first, int n, int zstd)
{
	gq_writer_opts o = {zstd, 1, 1};
	gq_writer *w;
	float x[64 * 7];
	int32_t y[3];

	CHECK_OK(gq_writer_open(&w, path, &o));
	for (int i = first; i < first + n; i++) {
		gq_st_builder b;

		build_frame(&b, i, x, y);
		CHECK_OK(gq_writer_put(w, &b));
		gq_stb_free(&b);
	}
	CHECK_OK(gq_writer_close(w, 1));
}

/* Reads path and checks it holds frames first.. in order; returns the count. */
static int read_stream(const char *path, int first, int flags)
{
	gq_reader *r;
	gq_frame f = {0};
	int n = 0, rc;

	CHECK_OK(gq_reader_open(&r, path));
	while ((rc = gq_reader_next(r, &f, flags)) > 0) {
		gq_tensor t;
		char want[16];

		snprintf(want, sizeof want, "%d", first + n);
		CHECK(f.index == n);
		CHECK(f.kind && strcmp(f.kind, "test") == 0);
		CHECK(strcmp(gq_frame_attr(&f, "i"), want) == 0);
		CHECK_OK(gq_frame_tensor(&f, "x", &t));
		CHECK(t.shape[0] == first + n + 1 && t.dtype == GQ_DTYPE_F32);
		if (!(flags & GQ_SKIP_DATA)) {
			float v;

			memcpy(&v, (const uint8_t *)t.data + 4 * 5, 4);
			CHECK(v == (float)((first + n) * 100 + 5) * 0.25f);
		} else {
			CHECK(f.data == NULL);
		}
		n++;
	}
	CHECK(rc == 0);
	if (rc < 0)
		fprintf(stderr, "  %s\n", gq_errmsg());
	gq_frame_free(&f);
	gq_reader_close(r);
	return n;
}

static void cat_files(const char *out, const char **in, int n)
{
	FILE *o = fopen(out, "wb");

	for (int i = 0; i < n; i++) {
		FILE *fp = fopen(in[i], "rb");
		char buf[4096];
		size_t k;

		while ((k = fread(buf, 1, sizeof buf, fp)) > 0)
			fwrite(buf, 1, k, o);
		fclose(fp);
	}
	fclose(o);
}

static void test_roundtrip_file(void)
{
	write_stream(tmp("a.gqs"), 0, 5, 0);
	CHECK(read_stream(tmp("a.gqs"), 0, GQ_READ_DATA) == 5);
	CHECK(read_stream(tmp("a.gqs"), 0, GQ_SKIP_DATA) == 5);
}

static void test_empty_stream(void)
{
	FILE *fp = fopen(tmp("empty"), "wb");

	fclose(fp);
	CHECK(read_stream(tmp("empty"), 0, GQ_READ_DATA) == 0);
}

static void test_concatenated_and_compressed(void)
{
	const char *parts[3];

	write_stream(tmp("p1.gqs"), 0, 3, 0);
	write_stream(tmp("p2.gqs.zst"), 3, 4, 3);
	write_stream(tmp("p3.gqs"), 7, 2, 0);
	CHECK(read_stream(tmp("p2.gqs.zst"), 3, GQ_READ_DATA) == 4);
	/* plain + zstd + plain, and zstd + zstd (a multi-frame zstd stream) */
	parts[0] = tmp("p1.gqs"), parts[1] = tmp("p2.gqs.zst"), parts[2] = tmp("p3.gqs");
	cat_files(tmp("mixed.gqs"), parts, 3);
	CHECK(read_stream(tmp("mixed.gqs"), 0, GQ_READ_DATA) == 9);
	CHECK(read_stream(tmp("mixed.gqs"), 0, GQ_SKIP_DATA) == 9);
	write_stream(tmp("z1.zst"), 0, 3, 1);
	write_stream(tmp("z2.zst"), 3, 3, 19);
	parts[0] = tmp("z1.zst"), parts[1] = tmp("z2.zst");
	cat_files(tmp("zz.zst"), parts, 2);
	CHECK(read_stream(tmp("zz.zst"), 0, GQ_READ_DATA) == 6);
}

/* Pass-through must reproduce the input bytes exactly. */
static void test_pass_through_identity(void)
{
	gq_writer_opts o = {0, 1, 1};
	gq_reader *r;
	gq_writer *w;
	gq_frame f = {0};
	char *a, *b;
	size_t la, lb;

	write_stream(tmp("src.gqs"), 0, 4, 0);
	CHECK_OK(gq_reader_open(&r, tmp("src.gqs")));
	CHECK_OK(gq_writer_open(&w, tmp("dst.gqs"), &o));
	while (gq_reader_next(r, &f, GQ_READ_DATA) > 0)
		CHECK_OK(gq_writer_pass(w, &f));
	CHECK_OK(gq_writer_close(w, 1));
	gq_reader_close(r);
	gq_frame_free(&f);
	CHECK_OK(gq_read_file(tmp("src.gqs"), 1 << 20, &a, &la));
	CHECK_OK(gq_read_file(tmp("dst.gqs"), 1 << 20, &b, &lb));
	CHECK(la == lb && memcmp(a, b, la) == 0);
	free(a);
	free(b);
}

/*
 * A writer that blocks until the reader has consumed each frame: the reader
 * must return frame k without waiting for frame k+1 (plain and zstd).
 */
static void pipe_lockstep(int zstd)
{
	int data[2], ack[2];
	pid_t pid;
	char path[64];
	gq_reader *r;
	gq_frame f = {0};

	CHECK(pipe(data) == 0 && pipe(ack) == 0);
	pid = fork();
	if (pid == 0) {
		gq_writer_opts o = {zstd, 1, 1};
		gq_writer *w;
		float x[64 * 7];
		int32_t y[3];
		char c;

		close(data[0]);
		close(ack[1]);
		dup2(data[1], STDOUT_FILENO);
		close(data[1]);
		if (gq_writer_open(&w, "-", &o))
			_exit(2);
		for (int i = 0; i < 4; i++) {
			gq_st_builder b;

			build_frame(&b, i, x, y);
			if (gq_writer_put(w, &b))
				_exit(3);
			gq_stb_free(&b);
			if (read(ack[0], &c, 1) != 1) /* wait for the reader */
				_exit(4);
		}
		_exit(gq_writer_close(w, 1) || fflush(stdout) ? 5 : 0);
	}
	close(data[1]);
	close(ack[0]);
	alarm(10); /* a deadlock fails the test instead of hanging it */
	snprintf(path, sizeof path, "/dev/fd/%d", data[0]);
	CHECK_OK(gq_reader_open(&r, path));
	for (int i = 0; i < 4; i++) {
		CHECK(gq_reader_next(r, &f, GQ_READ_DATA) == 1);
		CHECK(f.index == i);
		CHECK(write(ack[1], "k", 1) == 1);
	}
	CHECK(gq_reader_next(r, &f, GQ_READ_DATA) == 0);
	alarm(0);
	gq_reader_close(r);
	gq_frame_free(&f);
	close(data[0]);
	close(ack[1]);
	int status;
	waitpid(pid, &status, 0);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void test_pipe_lockstep_plain(void)
{
	pipe_lockstep(0);
}

static void test_pipe_lockstep_zstd(void)
{
	pipe_lockstep(3);
}

/*
 * Every proper prefix of a stream must end cleanly exactly at a frame
 * boundary (bounds[0..nb)) and otherwise fail with a truncation message.
 */
static void truncate_everywhere(const char *src, int flags, const uint64_t *bounds, int nb)
{
	char *buf;
	size_t len;
	int bad = 0;

	CHECK_OK(gq_read_file(src, 1 << 20, &buf, &len));
	for (size_t cut = 0; cut < len; cut++) {
		FILE *fp = fopen(tmp("cut"), "wb");
		gq_reader *r;
		gq_frame f = {0};
		int rc, at_bound = 0;

		fwrite(buf, 1, cut, fp);
		fclose(fp);
		for (int i = 0; i < nb; i++)
			at_bound |= bounds[i] == cut;
		CHECK_OK(gq_reader_open(&r, tmp("cut")));
		while ((rc = gq_reader_next(r, &f, flags)) > 0)
			;
		if (rc == 0 && !at_bound)
			bad++, fprintf(stderr, "  cut %zu: clean end inside a frame\n", cut);
		if (rc < 0 && (at_bound || (!strstr(gq_errmsg(), "truncated") &&
					    !strstr(gq_errmsg(), "ends inside"))))
			bad++, fprintf(stderr, "  cut %zu: %s\n", cut, gq_errmsg());
		gq_frame_free(&f);
		gq_reader_close(r);
	}
	CHECK(bad == 0);
	free(buf);
}

/* Offsets where the frames of a plain stream end (0 included). */
static int frame_bounds(const char *path, uint64_t *bounds, int max)
{
	gq_reader *r;
	gq_frame f = {0};
	int n = 0;

	bounds[n++] = 0;
	CHECK_OK(gq_reader_open(&r, path));
	while (n < max && gq_reader_next(r, &f, GQ_SKIP_DATA) > 0)
		bounds[n++] = f.offset + 8 + f.header_len + f.hdr.data_len;
	gq_reader_close(r);
	gq_frame_free(&f);
	return n;
}

/* The limit an unprivileged process may set a pipe's size to. */
static long pipe_max_bytes(void)
{
	long max = 0;
	FILE *fp = fopen("/proc/sys/fs/pipe-max-size", "r");

	if (fp) {
		if (fscanf(fp, "%ld", &max) != 1)
			max = 0;
		fclose(fp);
	}
	return max;
}

/* Opening either end of a pipe as a stream grows the pipe to GQ_PIPE_BYTES. */
static void test_pipes_grow(void)
{
#ifdef F_SETPIPE_SZ
	gq_writer_opts o = {0, 1, 1};
	gq_writer *w;
	gq_reader *r;
	int p[2];
	char path[64];

	if (pipe_max_bytes() < GQ_PIPE_BYTES) {
		check_skip("/proc/sys/fs/pipe-max-size is below GQ_PIPE_BYTES");
		return;
	}
	CHECK(pipe(p) == 0);
	CHECK(fcntl(p[0], F_GETPIPE_SZ) < GQ_PIPE_BYTES);
	snprintf(path, sizeof path, "/dev/fd/%d", p[0]);
	CHECK_OK(gq_reader_open(&r, path));
	CHECK(fcntl(p[0], F_GETPIPE_SZ) >= GQ_PIPE_BYTES);
	gq_reader_close(r);
	close(p[0]);
	close(p[1]);

	FILE *fp;

	CHECK(pipe(p) == 0);
	CHECK((fp = fdopen(p[1], "w")) != NULL);
	CHECK_OK(gq_writer_open_fp(&w, fp, "pipe", &o));
	CHECK(fcntl(p[0], F_GETPIPE_SZ) >= GQ_PIPE_BYTES);
	CHECK_OK(gq_writer_close(w, 1));
	fclose(fp);
	close(p[0]);
#else
	check_skip("no F_SETPIPE_SZ here");
#endif
}

static void test_truncated_plain(void)
{
	gq_reader *r;
	gq_frame f = {0};

	uint64_t bounds[8];
	int nb;

	write_stream(tmp("t.gqs"), 0, 3, 0);
	nb = frame_bounds(tmp("t.gqs"), bounds, 8);
	CHECK(nb == 4);
	truncate_everywhere(tmp("t.gqs"), GQ_READ_DATA, bounds, nb);
	truncate_everywhere(tmp("t.gqs"), GQ_SKIP_DATA, bounds, nb);
	/* a specific cut: inside frame 1's data names frame 1, its offset and tensor */
	FILE *fp = fopen(tmp("t.gqs"), "rb"), *out = fopen(tmp("t1"), "wb");
	char buf[4096];
	size_t n = fread(buf, 1, sizeof buf, fp);
	fclose(fp);
	CHECK_OK(gq_reader_open(&r, tmp("t.gqs")));
	CHECK(gq_reader_next(r, &f, GQ_READ_DATA) == 1);
	CHECK(gq_reader_next(r, &f, GQ_READ_DATA) == 1);
	uint64_t off1 = f.offset, end1 = f.offset + 8 + f.header_len + f.hdr.data_len;
	gq_reader_close(r);
	fwrite(buf, 1, (size_t)end1 - 3, out);
	fclose(out);
	CHECK(n > end1);
	CHECK_OK(gq_reader_open(&r, tmp("t1")));
	CHECK(gq_reader_next(r, &f, GQ_READ_DATA) == 1);
	char want[128];
	snprintf(want, sizeof want, "frame 1 at byte %llu: truncated", (unsigned long long)off1);
	CHECK_ERR(gq_reader_next(r, &f, GQ_READ_DATA), GQ_ERR_FORMAT, want);
	CHECK(strstr(gq_errmsg(), "tensor 'y' incomplete") != NULL);
	gq_reader_close(r);
	gq_frame_free(&f);
}

static void test_truncated_zstd(void)
{
	uint64_t start = 0;

	/* compressed: only the empty prefix is a clean stream */
	write_stream(tmp("tz.gqs.zst"), 0, 3, 3);
	truncate_everywhere(tmp("tz.gqs.zst"), GQ_READ_DATA, &start, 1);
}

static void test_corrupt_inputs(void)
{
	gq_reader *r;
	gq_frame f = {0};
	FILE *fp;
	char *buf;
	size_t len;

	/* header length beyond the limit */
	fp = fopen(tmp("big"), "wb");
	fwrite("\xff\xff\xff\xff\x00\x00\x00\x00{}", 1, 10, fp);
	fclose(fp);
	CHECK_OK(gq_reader_open(&r, tmp("big")));
	CHECK_ERR(gq_reader_next(r, &f, GQ_READ_DATA), GQ_ERR_FORMAT,
		  "frame 0 at byte 0: header length 4294967295 exceeds the limit");
	gq_reader_close(r);

	/* a header claiming a huge tensor on a pipe: fails as truncated, allocating little */
	fp = fopen(tmp("huge"), "wb");
	const char *h = "{\"t\":{\"dtype\":\"U8\",\"shape\":[1000000000000],"
			"\"data_offsets\":[0,1000000000000]}}";
	uint64_t hl = strlen(h);
	fwrite(&hl, 8, 1, fp);
	fwrite(h, 1, hl, fp);
	fwrite("abc", 1, 3, fp);
	fclose(fp);
	CHECK_OK(gq_reader_open(&r, tmp("huge")));
	CHECK_ERR(gq_reader_next(r, &f, GQ_READ_DATA), GQ_ERR_FORMAT, "has 3 left");
	gq_reader_close(r);

	/* garbage after valid frames names the next frame and its offset */
	write_stream(tmp("g.gqs"), 0, 2, 0);
	CHECK_OK(gq_read_file(tmp("g.gqs"), 1 << 20, &buf, &len));
	fp = fopen(tmp("g.gqs"), "ab");
	fwrite("\x05\x00\x00\x00\x00\x00\x00\x00{oops", 1, 13, fp);
	fclose(fp);
	CHECK_OK(gq_reader_open(&r, tmp("g.gqs")));
	CHECK(gq_reader_next(r, &f, GQ_READ_DATA) == 1);
	CHECK(gq_reader_next(r, &f, GQ_READ_DATA) == 1);
	char want[64];
	snprintf(want, sizeof want, "frame 2 at byte %zu: header is not valid JSON", len);
	CHECK_ERR(gq_reader_next(r, &f, GQ_READ_DATA), GQ_ERR_FORMAT, want);
	gq_reader_close(r);
	free(buf);

	/* flipped bytes inside a zstd stream: corrupt data or checksum error */
	write_stream(tmp("c.zst"), 0, 3, 3);
	CHECK_OK(gq_read_file(tmp("c.zst"), 1 << 20, &buf, &len));
	buf[len / 2] ^= 0x55;
	buf[len / 2 + 1] ^= 0x55;
	fp = fopen(tmp("c.zst"), "wb");
	fwrite(buf, 1, len, fp);
	fclose(fp);
	free(buf);
	CHECK_OK(gq_reader_open(&r, tmp("c.zst")));
	int rc;
	while ((rc = gq_reader_next(r, &f, GQ_READ_DATA)) > 0)
		;
	CHECK(rc < 0);
	CHECK(strstr(gq_errmsg(), "zstd") || strstr(gq_errmsg(), "frame"));
	gq_reader_close(r);
	gq_frame_free(&f);

	CHECK_ERR(gq_reader_open(&r, tmp("does-not-exist")), GQ_ERR_IO, "cannot open");
	CHECK_ERR(gq_reader_open(&r, tmpdir), GQ_ERR_IO, "is a directory");
}

static void test_writer_discards_on_failure(void)
{
	gq_writer_opts o = {0, 1, 1};
	gq_writer *w;

	CHECK_OK(gq_writer_open(&w, tmp("never.gqs"), &o));
	CHECK_OK(gq_writer_close(w, 0));
	CHECK(access(tmp("never.gqs"), F_OK) != 0);
	CHECK_ERR(gq_writer_open(&w, "/nonexistent-dir/x.gqs", &o), GQ_ERR_IO, "cannot create");
}

/* Whether two files hold the same bytes. */
static int same_file(const char *a, const char *b)
{
	FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
	int same = fa && fb, ca, cb;

	while (same && ((ca = fgetc(fa)) != EOF || !feof(fa))) {
		cb = fgetc(fb);
		same = ca == cb;
	}
	same = same && fgetc(fb) == EOF;
	if (fa)
		fclose(fa);
	if (fb)
		fclose(fb);
	return same;
}

/* A queued frame's storage: its tensors' data, freed by the queue once written. */
typedef struct {
	float x[64 * 7];
	int32_t y[3];
	int *released;
} queued_frame;

static void release_frame(void *p)
{
	queued_frame *q = p;

	++*q->released;
	free(q);
}

/* Queues frames first..first+n-1 (build_frame) on q; returns how many puts failed. */
static int queue_frames(gq_queue_writer *q, int first, int n, int *released)
{
	int failed = 0;

	for (int i = first; i < first + n; i++) {
		queued_frame *f = malloc(sizeof *f);
		gq_st_builder b;

		f->released = released;
		build_frame(&b, i, f->x, f->y);
		failed += gq_queue_writer_put(q, &b, release_frame, f) != GQ_OK;
	}
	return failed;
}

/*
 * Frames written on the queue's thread come out in order, byte for byte
 * what direct puts give, with frames passed between drains in place; every
 * frame is released. A limit below one frame still lets each through alone.
 */
static void test_queue_writer(void)
{
	gq_writer_opts o = {0, 1, 1};
	gq_writer *w;
	gq_queue_writer *q;
	int released = 0;

	for (int limit = 0; limit < 2; limit++) {
		released = 0;
		CHECK_OK(gq_writer_open(&w, tmp("queued.gqs"), &o));
		CHECK_OK(gq_queue_writer_start(&q, w, limit ? 1 << 20 : 16));
		CHECK(queue_frames(q, 0, 40, &released) == 0);
		CHECK_OK(gq_queue_writer_drain(q));
		CHECK(released == 40);
		CHECK(queue_frames(q, 40, 24, &released) == 0);
		CHECK_OK(gq_queue_writer_stop(q));
		CHECK(released == 64);
		CHECK_OK(gq_writer_close(w, 1));
		CHECK(read_stream(tmp("queued.gqs"), 0, 0) == 64);
	}
	write_stream(tmp("direct.gqs"), 0, 64, 0);
	CHECK(same_file(tmp("queued.gqs"), tmp("direct.gqs")));
}

/* A write that fails on the thread comes back from a later put and from stop, by name. */
static void test_queue_writer_failure(void)
{
	gq_writer_opts o = {0, 1, 1};
	FILE *full = fopen("/dev/full", "w");
	gq_writer *w;
	gq_queue_writer *q;
	int released = 0;

	if (!full) {
		check_skip("no /dev/full");
		return;
	}
	CHECK_OK(gq_writer_open_fp(&w, full, "/dev/full", &o));
	CHECK_OK(gq_queue_writer_start(&q, w, 16));
	/* with room for one frame, a put waits for the one before: the failure shows */
	CHECK(queue_frames(q, 0, 8, &released) > 0);
	CHECK_ERR(gq_queue_writer_stop(q), GQ_ERR_IO, "/dev/full");
	CHECK(released == 8);
	gq_writer_close(w, 0);
	fclose(full);
}

/*
 * A hessian frame's H whole or packed, float32 or fp16: gq_hessian_frame_bytes
 * says what buffer gq_hessian_frame_matrix needs (none where float32 H is used
 * in place), and a buffer of exactly that size is used without growing it;
 * a packed H of a length no triangle has is named by both.
 */
static void test_hessian_frame_bytes(void)
{
	enum { N = 37, TRI = N * (N + 1) / 2 };
	float H[N * N], tri[TRI], want16[N * N];
	uint16_t h16[N * N], tri16[TRI];
	int64_t whole[2] = {N, N}, packed = TRI, short_len = TRI - 1;
	const uint64_t sq = (uint64_t)N * N * 4, tail = (uint64_t)TRI * 4;
	const struct {
		const char *name;
		gq_dtype dtype;
		int ndim;
		const int64_t *shape;
		const void *data;
		uint64_t bytes;
	} cases[] = {
		{"H", GQ_DTYPE_F32, 2, whole, H, 0},
		{"H_lower", GQ_DTYPE_F32, 1, &packed, tri, sq},
		{"H", GQ_DTYPE_F16, 2, whole, h16, sq},
		{"H_lower", GQ_DTYPE_F16, 1, &packed, tri16, sq + tail},
	};
	uint64_t seed = 5;
	gq_writer_opts o = {0, 1, 1};
	gq_writer *w;
	gq_reader *r;
	gq_frame f = {0};

	for (int i = 0; i < N; i++)
		for (int k = 0; k <= i; k++)
			H[i * N + k] = H[k * N + i] = check_randf(&seed);
	gq_tri_from_sym(H, N, tri);
	for (int i = 0; i < N * N; i++) {
		h16[i] = gq_f32_to_f16(H[i]);
		want16[i] = gq_f16_to_f32(h16[i]);
	}
	for (int i = 0; i < TRI; i++)
		tri16[i] = gq_f32_to_f16(tri[i]);
	CHECK_OK(gq_writer_open(&w, tmp("h.gqs"), &o));
	for (size_t c = 0; c <= sizeof cases / sizeof *cases; c++) {
		gq_st_builder b;

		gq_stb_init(&b);
		CHECK_OK(gq_stb_meta(&b, GQ_KIND_KEY, "hessian"));
		if (c < sizeof cases / sizeof *cases)
			CHECK_OK(gq_stb_tensor(&b, cases[c].name, cases[c].dtype, cases[c].ndim,
					       cases[c].shape, cases[c].data));
		else /* one value short of a triangle */
			CHECK_OK(gq_stb_tensor(&b, "H_lower", GQ_DTYPE_F32, 1, &short_len, tri));
		CHECK_OK(gq_writer_put(w, &b));
		gq_stb_free(&b);
	}
	CHECK_OK(gq_writer_close(w, 1));
	CHECK_OK(gq_reader_open(&r, tmp("h.gqs")));
	for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
		uint64_t bytes, cap;
		const float *got;
		float *buf, *given;
		int64_t n;

		CHECK(gq_reader_next(r, &f, 0) > 0);
		CHECK_OK(gq_hessian_frame_bytes(&f, &bytes));
		CHECK(bytes == cases[c].bytes);
		cap = bytes;
		given = buf = bytes ? malloc(bytes) : NULL;
		CHECK_OK(gq_hessian_frame_matrix(&f, 2, &n, &got, &buf, &cap));
		CHECK(n == N && buf == given && cap == bytes);
		CHECK(bytes ? got == buf : (const void *)got != (const void *)buf);
		CHECK(memcmp(got, cases[c].dtype == GQ_DTYPE_F16 ? want16 : H, sizeof H) == 0);
		free(buf);
	}
	CHECK(gq_reader_next(r, &f, 0) > 0);
	uint64_t bytes;
	float *buf = NULL;
	uint64_t cap = 0;
	const float *got;
	int64_t n;

	CHECK_ERR(gq_hessian_frame_bytes(&f, &bytes), GQ_ERR_FORMAT, "not a packed triangle");
	CHECK_ERR(gq_hessian_frame_matrix(&f, 1, &n, &got, &buf, &cap), GQ_ERR_FORMAT,
		  "not a packed triangle");
	gq_frame_free(&f);
	gq_reader_close(r);
}

/*
 * Frames read one after another into the same gq_frame take the data buffer
 * of an earlier frame when it is big enough (no fresh pages to fault in) and
 * never read past their own data into it: from a file (sizes known) and
 * from a pipe (not known).
 */
static void test_reader_reuses_data(void)
{
	static const int order[] = {40, 2, 3, 60, 1, 60};
	const int n = (int)(sizeof order / sizeof *order);
	gq_writer_opts o = {0, 1, 1};
	gq_writer *w;
	float x[64 * 7];
	int32_t y[3];

	CHECK_OK(gq_writer_open(&w, tmp("reuse.gqs"), &o));
	for (int k = 0; k < n; k++) {
		gq_st_builder b;

		build_frame(&b, order[k], x, y);
		CHECK_OK(gq_writer_put(w, &b));
		gq_stb_free(&b);
	}
	CHECK_OK(gq_writer_close(w, 1));
	for (int piped = 0; piped < 2; piped++) {
		char cmd[600];
		FILE *cat = NULL;
		gq_reader *r;
		gq_frame f = {0};
		const uint8_t *data[6];
		uint64_t cap[6];
		int k = 0, rc;

		if (piped) {
			snprintf(cmd, sizeof cmd, "cat '%s'", tmp("reuse.gqs"));
			CHECK((cat = popen(cmd, "r")) != NULL);
			CHECK_OK(gq_reader_open_fd(&r, dup(fileno(cat)), "cat"));
		} else {
			CHECK_OK(gq_reader_open(&r, tmp("reuse.gqs")));
		}
		while ((rc = gq_reader_next(r, &f, GQ_READ_DATA)) > 0 && k < n) {
			const int i = order[k];
			gq_tensor t, u;
			float first, last;
			int32_t y2;

			CHECK_OK(gq_frame_tensor(&f, "x", &t));
			CHECK_OK(gq_frame_tensor(&f, "y", &u));
			CHECK(t.shape[0] == i + 1 && f.data_cap >= f.hdr.data_len);
			memcpy(&first, t.data, 4);
			memcpy(&last, (const uint8_t *)t.data + 4 * ((i + 1) * 7 - 1), 4);
			memcpy(&y2, (const uint8_t *)u.data + 8, 4);
			CHECK(first == (float)(i * 100) * 0.25f);
			CHECK(last == (float)(i * 100 + (i + 1) * 7 - 1) * 0.25f);
			CHECK(y2 == -i - 2);
			cap[k] = f.data_cap;
			data[k++] = f.data;
		}
		CHECK(rc == 0 && k == n);
		/* 2 and 3 in 40's buffer, 1 and the second 60 in the first 60's */
		CHECK(data[1] == data[0] && data[2] == data[0] && cap[1] == cap[0] && cap[2] == cap[0]);
		CHECK(data[4] == data[3] && data[5] == data[3] && cap[4] == cap[3] && cap[5] == cap[3]);
		CHECK(cap[3] > cap[0]);
		gq_frame_free(&f);
		gq_reader_close(r);
		if (cat)
			CHECK(pclose(cat) == 0);
	}
}

int main(void)
{
	CHECK(mkdtemp(tmpdir) != NULL);
	RUN(test_roundtrip_file);
	RUN(test_empty_stream);
	RUN(test_concatenated_and_compressed);
	RUN(test_pass_through_identity);
	RUN(test_pipe_lockstep_plain);
	RUN(test_pipe_lockstep_zstd);
	RUN(test_pipes_grow);
	RUN(test_reader_reuses_data);
	RUN(test_truncated_plain);
	RUN(test_truncated_zstd);
	RUN(test_corrupt_inputs);
	RUN(test_writer_discards_on_failure);
	RUN(test_queue_writer);
	RUN(test_queue_writer_failure);
	RUN(test_hessian_frame_bytes);
	char cmd[600];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", tmpdir);
	return check_done();
}
