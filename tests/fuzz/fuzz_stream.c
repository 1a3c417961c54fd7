/*
 * fuzz_stream.c - the frame reader on arbitrary bytes, as a regular file and
 * as a pipe (the two paths differ: a file's size bounds allocations up front,
 * a pipe's data grows as it arrives), then what the tools do with each frame:
 * describe it with statistics (gptq-dump --stats), pass it through a writer,
 * and parse qlinear, tokens and activations frames as gptq-pack, gptq-hessian
 * and --resume would.
 */
#define _GNU_SOURCE
#include "fuzz.h"

#include "calib.h"
#include "collect.h"
#include "describe.h"
#include "qlinear.h"
#include "stream.h"
#include "util.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static FILE *devnull;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	gq_verbosity = 0;
	devnull = fopen("/dev/null", "wb");
	return 0;
}

static void use_frame(const gq_frame *f)
{
	gq_describe_opts o = {1, 0.01, 1};
	gq_buf b = {0};

	gq_describe_frame(f, f->source, &o, &b);
	gq_buf_free(&b);
	if (f->kind && strcmp(f->kind, "qlinear") == 0) {
		gq_qlinear q = {0};

		/* dequantizing is what --unpack checks do; bounded so one input stays fast */
		if (gq_qlinear_parse(&q, f) == GQ_OK && q.rows * q.cols <= (1 << 20)) {
			float *W = malloc((size_t)(q.rows * q.cols + 1) * sizeof *W);

			if (W)
				gq_qlinear_dequant(&q, W);
			free(W);
		}
		gq_qlinear_free(&q);
	} else if (f->kind && strcmp(f->kind, "tokens") == 0) {
		gq_samples s = {0};

		gq_samples_from_frame(f, 1000, &s);
		gq_samples_free(&s);
	} else if (f->kind && strcmp(f->kind, "activations") == 0) {
		gq_sample s;
		int layer;

		if (gq_sample_from_activations(f, 64, &s, &layer) == GQ_OK) {
			free(s.x);
			free(s.mask);
		}
	}
}

static void read_all(int fd, const char *name, int flags)
{
	gq_reader *r;
	gq_writer *w = NULL;
	gq_writer_opts wo = {0, 1, 1};
	gq_frame f = {0};

	if (gq_reader_open_fd(&r, fd, name))
		return;
	if (!(flags & GQ_SKIP_DATA) && devnull)
		gq_writer_open_fp(&w, devnull, "/dev/null", &wo);
	while (gq_reader_next(r, &f, flags) > 0) {
		if (!(flags & GQ_SKIP_DATA))
			use_frame(&f);
		if (w)
			gq_writer_pass(w, &f);
	}
	gq_frame_free(&f);
	gq_writer_close(w, 1);
	gq_reader_close(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int fd = memfd_create("fuzz", MFD_CLOEXEC), p[2];

	if (fd >= 0) {
		if (write(fd, data, size) == (ssize_t)size && lseek(fd, 0, SEEK_SET) == 0) {
			int fd2 = dup(fd);

			read_all(fd, "file", GQ_READ_DATA);
			if (fd2 >= 0 && lseek(fd2, 0, SEEK_SET) == 0)
				read_all(fd2, "file", GQ_SKIP_DATA); /* lseek over the data */
			else if (fd2 >= 0)
				close(fd2);
		} else {
			close(fd);
		}
	}
	/* a pipe holds the whole input, so one thread can fill it and then read */
	if (pipe2(p, O_CLOEXEC) == 0) {
		if (fcntl(p[1], F_SETPIPE_SZ, 1 << 20) >= (int)size &&
		    write(p[1], data, size) == (ssize_t)size) {
			close(p[1]);
			read_all(p[0], "pipe", GQ_READ_DATA);
		} else {
			close(p[0]);
			close(p[1]);
		}
	}
	return 0;
}
