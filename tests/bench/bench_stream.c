/*
 * bench_stream - frame stream throughput: writing and reading Hessian frames
 * plain (the baseline) and zstd-compressed at levels 1 and 3, from one run,
 * with the compression ratio, so users can judge what -z costs and saves;
 * then Hessians through a pipe into a reader that needs them whole, sent
 * whole (the baseline) and as packed triangles unfolded by the reader
 * (gptq-hessian --triangle into gptq-solve).
 *
 *   bench_stream [MB] [DIR]     (default 256 MB of frames under /tmp)
 */
#define _GNU_SOURCE
#include "hessian.h"
#include "linalg.h"
#include "stream.h"
#include "util.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

enum { N = 2048, SAMPLES = 4096 };

/* A realistic Hessian: 2/n X Xᵀ of correlated activations with outlier channels. */
static float *make_hessian(void)
{
	float *X = malloc((size_t)N * SAMPLES * sizeof *X); // [N, SAMPLES]
	float *H = calloc((size_t)N * N, sizeof *H);        // [N, N]
	uint64_t s = 1;

	for (size_t t = 0; t < SAMPLES; t++) {
		float common = (float)((double)((s = s * 6364136223846793005ull + 1) >> 11) * 0x1p-53);

		for (size_t i = 0; i < N; i++) {
			s = s * 6364136223846793005ull + 1442695040888963407ull;
			float r = (float)((double)(s >> 11) * 0x1p-53) - 0.5f;
			X[i * SAMPLES + t] = (i % 97 == 0 ? 20.0f : 1.0f) * (r + 0.3f * common);
		}
	}
	cblas_ssyrk(CblasRowMajor, CblasLower, CblasNoTrans, N, SAMPLES, 2.0f / SAMPLES, X,
		    SAMPLES, 0.0f, H, N);
	for (size_t i = 0; i < N; i++)
		for (size_t j = i + 1; j < N; j++)
			H[i * N + j] = H[j * N + i];
	free(X);
	return H;
}

static double write_stream(const char *path, const float *H, int frames, int level)
{
	gq_writer_opts o = {level, 1, 1};
	int64_t shape[2] = {N, N};
	gq_writer *w;
	double t0 = gq_now();

	if (gq_writer_open(&w, path, &o))
		die("%s", gq_errmsg());
	for (int f = 0; f < frames; f++) {
		gq_st_builder b;

		gq_stb_init(&b);
		if (gq_stb_meta(&b, GQ_KIND_KEY, "hessian") ||
		    gq_stb_tensor(&b, "H", GQ_DTYPE_F32, 2, shape, H) || gq_writer_put(w, &b))
			die("%s", gq_errmsg());
		gq_stb_free(&b);
	}
	if (gq_writer_close(w, 1))
		die("%s", gq_errmsg());
	return gq_now() - t0;
}

static double read_stream(const char *path, int frames)
{
	gq_reader *r;
	gq_frame f = {0};
	double t0 = gq_now();
	int n = 0, rc;

	if (gq_reader_open(&r, path))
		die("%s", gq_errmsg());
	while ((rc = gq_reader_next(r, &f, GQ_READ_DATA)) > 0)
		n++;
	if (rc < 0 || n != frames)
		die("%s: read %d of %d frames: %s", path, n, frames, rc < 0 ? gq_errmsg() : "short");
	gq_frame_free(&f);
	gq_reader_close(r);
	return gq_now() - t0;
}

/*
 * Seconds to send `frames` Hessians through a pipe to a child that reads
 * each whole (unfolding packed ones, as gptq-solve does): tri sends H_lower.
 */
static double through_pipe(const float *H, int frames, int tri)
{
	float *packed = malloc(gq_tri_len(N) * sizeof *packed); /* [N (N + 1) / 2] */
	double t0 = gq_now();
	int p[2], status;
	pid_t pid;

	if (!packed || pipe(p) != 0 || (pid = fork()) < 0)
		die("cannot start the reader:");
	if (pid == 0) {
		gq_reader *r;
		gq_frame f = {0};
		float *buf = NULL;
		uint64_t cap = 0;
		const float *h;
		int64_t n;
		int rc;

		close(p[1]);
		if (gq_reader_open_fd(&r, p[0], "pipe"))
			_exit(1);
		while ((rc = gq_reader_next(r, &f, GQ_READ_DATA)) > 0)
			if (gq_hessian_frame_matrix(&f, gq_threads_default(), &n, &h, &buf, &cap) || n != N)
				_exit(1);
		_exit(rc < 0);
	}
	close(p[0]);
	gq_tri_from_sym(H, N, packed);
	FILE *fp = fdopen(p[1], "w");
	gq_writer_opts o = {0, 1, 1};
	gq_writer *w;

	if (!fp || gq_writer_open_fp(&w, fp, "pipe", &o))
		die("%s", gq_errmsg());
	for (int f = 0; f < frames; f++) {
		gq_st_builder b;

		gq_stb_init(&b);
		if (gq_stb_meta(&b, GQ_KIND_KEY, "hessian") ||
		    gq_stb_hessian(&b, tri ? packed : H, N, tri) ||
		    gq_writer_put(w, &b))
			die("%s", gq_errmsg());
		gq_stb_free(&b);
	}
	if (gq_writer_close(w, 1) || fclose(fp) != 0)
		die("%s", gq_errmsg());
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status))
		die("the reader failed");
	free(packed);
	return gq_now() - t0;
}

int main(int argc, char **argv)
{
	int64_t mb = 256;
	const char *dir = argc > 2 ? argv[2] : "/tmp";
	static const int levels[] = {0, 1, 3};
	double base_w = 0, base_r = 0;
	float *H;
	int frames;

	gq_set_progname("bench_stream");
	if (argc > 1 && gq_parse_i64(argv[1], 16, 1 << 20, &mb))
		die("%s", gq_errmsg());
	frames = (int)(mb * (1 << 20) / ((int64_t)N * N * 4));
	H = make_hessian();
	printf("stream of %d hessian frames (%d x %d f32, %.0f MB), one thread, page cache warm\n",
	       frames, N, N, frames * (double)N * N * 4 / 1e6);
	printf("%-10s %12s %12s %10s %10s %8s\n", "format", "write MB/s", "read MB/s", "write x",
	       "read x", "size %");
	for (int k = 0; k < 3; k++) {
		char path[512];
		struct stat st;
		double tw, tr, mbytes = frames * (double)N * N * 4 / 1e6;

		snprintf(path, sizeof path, "%s/bench-stream-%d-%d.gqs", dir, (int)getpid(), levels[k]);
		tw = write_stream(path, H, frames, levels[k]);
		read_stream(path, frames); /* warm the page cache, then time */
		tr = read_stream(path, frames);
		stat(path, &st);
		unlink(path);
		if (k == 0)
			base_w = tw, base_r = tr;
		printf("%-10s %12.0f %12.0f %10.2f %10.2f %8.1f\n",
		       levels[k] ? (k == 1 ? "zstd -1" : "zstd -3") : "plain", mbytes / tw, mbytes / tr,
		       base_w / tw, base_r / tr, 100.0 * (double)st.st_size / (mbytes * 1e6));
	}
	printf("(x: throughput relative to plain, measured in this run)\n");
	{
		double whole = through_pipe(H, frames, 0), tri = through_pipe(H, frames, 1);
		double mbytes = frames * (double)N * N * 4 / 1e6;

		printf("\nthe same Hessians through a pipe, read whole at the other end\n");
		printf("%-10s %12s %10s\n", "sent as", "H MB/s", "x");
		printf("%-10s %12.0f %10.2f\n", "whole", mbytes / whole, 1.0);
		printf("%-10s %12.0f %10.2f\n", "triangle", mbytes / tri, whole / tri);
		printf("(H MB/s: whole Hessians delivered; the triangle is unfolded by the reader)\n");
	}
	free(H);
	return 0;
}
