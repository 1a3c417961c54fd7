/*
 * stream.c - frame reader (zstd-sniffing, pipe-friendly) and frame writer.
 *
 * The reader has two layers: raw bytes from the file descriptor, and logical
 * bytes (raw, or decompressed while inside a zstd frame). Memory for a frame's
 * data grows as the bytes arrive, so a header that claims terabytes on a
 * short input fails as truncated instead of allocating; for an uncompressed
 * regular file the claim is checked against the file size up front.
 */
#define _GNU_SOURCE
#include "stream.h"
#include "io.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#define RAW_CAP (1u << 20)
#define DATA_CHUNK (64ull << 20) /* first allocation for data of unknown availability */

struct gq_reader {
	int fd;
	char *name;
	uint8_t *raw;       /* RAW_CAP bytes; raw[raw_pos..raw_len) unread */
	size_t raw_pos, raw_len;
	int raw_eof;
	int regular;        /* fd is a regular file: raw_total and fd_pos are valid */
	int fifo;           /* fd is a pipe or FIFO: wait with poll() before reading */
	uint64_t raw_total; /* size of the regular file */
	uint64_t fd_pos;    /* bytes consumed from fd by read or lseek */
	ZSTD_DCtx *zd;
	int in_zstd;        /* inside a zstd frame: logical bytes come from zout */
	int sniff;          /* look for the zstd magic before the next raw byte */
	uint8_t *zout;      /* ZSTD_DStreamOutSize() bytes; zout[zout_pos..zout_len) unread */
	size_t zout_pos, zout_len, zout_cap;
	uint64_t offset;    /* logical bytes consumed */
	uint8_t *spare;     /* the largest data buffer of a frame read before and since freed, or NULL */
	uint64_t spare_cap; /* its bytes */
	int64_t index;      /* frames returned so far */
};

/*
 * A pipe carries 64 KB at a time by default: Hessians of hundreds of MB
 * then cross in thousands of context switches. Either end asks for 1 MB
 * (the unprivileged maximum by default); refused, the pipe stays as it was.
 */
static void grow_pipe(int fd)
{
#ifdef F_SETPIPE_SZ
	struct stat st;

	if (fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode) && fcntl(fd, F_GETPIPE_SZ) < GQ_PIPE_BYTES)
		(void)fcntl(fd, F_SETPIPE_SZ, GQ_PIPE_BYTES);
#else
	(void)fd;
#endif
}

int gq_reader_open(gq_reader **out, const char *path)
{
	int use_stdin = !path || strcmp(path, "-") == 0, fd;

	fd = use_stdin ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return gq_err(GQ_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
	return gq_reader_open_fd(out, fd, use_stdin ? "<stdin>" : path);
}

int gq_reader_open_fd(gq_reader **out, int fd, const char *name)
{
	gq_reader *r = calloc(1, sizeof *r);
	struct stat st;

	if (!r) {
		if (fd > STDIN_FILENO)
			close(fd);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	r->fd = fd;
	r->name = strdup(name);
	grow_pipe(fd);
	r->raw = malloc(RAW_CAP);
	r->zout_cap = ZSTD_DStreamOutSize();
	r->zout = malloc(r->zout_cap);
	r->zd = ZSTD_createDCtx();
	if (!r->name || !r->raw || !r->zout || !r->zd) {
		gq_reader_close(r);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	if (fstat(r->fd, &st) == 0) {
		if (S_ISDIR(st.st_mode)) {
			gq_reader_close(r);
			return gq_err(GQ_ERR_IO, "'%s' is a directory", name);
		}
		r->fifo = S_ISFIFO(st.st_mode);
		if (S_ISREG(st.st_mode)) {
			off_t pos = lseek(r->fd, 0, SEEK_CUR);

			r->regular = pos >= 0;
			r->raw_total = (uint64_t)st.st_size;
			r->fd_pos = pos > 0 ? (uint64_t)pos : 0;
		}
	}
	r->sniff = 1;
	*out = r;
	return GQ_OK;
}

void gq_reader_close(gq_reader *r)
{
	if (!r)
		return;
	if (r->fd > STDIN_FILENO)
		close(r->fd);
	ZSTD_freeDCtx(r->zd);
	free(r->spare);
	free(r->zout);
	free(r->raw);
	free(r->name);
	free(r);
}

const char *gq_reader_name(const gq_reader *r)
{
	return r->name;
}

/*
 * read(2) retrying on EINTR; returns bytes read, 0 at EOF, -1 on error.
 * On a FIFO, poll() first: read() on a FIFO whose writer has not opened it
 * yet returns end-of-file at once, while poll() waits for data or for a
 * writer that came and went (gptq-hessian's feedback opens the FIFO before
 * tee does).
 */
static ssize_t read_fd(gq_reader *r, void *dst, size_t n)
{
	ssize_t k;

	if (r->fifo) {
		struct pollfd p = {r->fd, POLLIN, 0};

		while (poll(&p, 1, -1) < 0 && errno == EINTR)
			;
	}
	do
		k = read(r->fd, dst, n);
	while (k < 0 && errno == EINTR);
	if (k < 0) {
		gq_err(GQ_ERR_IO, "cannot read '%s': %s", r->name, strerror(errno));
		return -1;
	}
	r->fd_pos += (uint64_t)k;
	return k;
}

/* Makes at least `want` raw bytes available unless the input ends first. */
static int raw_ensure(gq_reader *r, size_t want)
{
	while (r->raw_len - r->raw_pos < want && !r->raw_eof) {
		ssize_t k;

		if (r->raw_pos > 0) {
			memmove(r->raw, r->raw + r->raw_pos, r->raw_len - r->raw_pos);
			r->raw_len -= r->raw_pos;
			r->raw_pos = 0;
		}
		k = read_fd(r, r->raw + r->raw_len, RAW_CAP - r->raw_len);
		if (k < 0)
			return GQ_ERR_IO;
		if (k == 0)
			r->raw_eof = 1;
		r->raw_len += (size_t)k;
	}
	return GQ_OK;
}

static int is_zstd_magic(const uint8_t *p)
{
	uint32_t m = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
		     (uint32_t)p[3] << 24;

	return m == 0xFD2FB528u || (m & 0xFFFFFFF0u) == 0x184D2A50u;
}

/* Logical bytes available without reading the descriptor, or UINT64_MAX if unknown. */
static uint64_t known_remaining(const gq_reader *r)
{
	if (!r->regular || r->in_zstd || r->zout_pos < r->zout_len || r->sniff)
		return UINT64_MAX;
	return (uint64_t)(r->raw_len - r->raw_pos) + (r->raw_total - r->fd_pos);
}

/*
 * Reads up to n logical bytes into dst (dst NULL: discard them). Returns the
 * count (short only at end of input) or a negative status.
 */
static int64_t logical_read(gq_reader *r, uint8_t *dst, uint64_t n)
{
	uint64_t got = 0;

	while (got < n) {
		if (r->zout_pos < r->zout_len) {
			size_t k = r->zout_len - r->zout_pos;

			if (k > n - got)
				k = (size_t)(n - got);
			if (dst)
				memcpy(dst + got, r->zout + r->zout_pos, k);
			r->zout_pos += k;
			got += k;
			continue;
		}
		if (r->in_zstd) {
			ZSTD_inBuffer in;
			ZSTD_outBuffer out = {r->zout, r->zout_cap, 0};
			size_t ret;

			if (raw_ensure(r, 1))
				return GQ_ERR_IO;
			if (r->raw_pos == r->raw_len)
				return gq_err(GQ_ERR_FORMAT,
					      "%s: compressed input ends inside a zstd frame", r->name);
			in.src = r->raw + r->raw_pos;
			in.size = r->raw_len - r->raw_pos;
			in.pos = 0;
			ret = ZSTD_decompressStream(r->zd, &out, &in);
			r->raw_pos += in.pos;
			if (ZSTD_isError(ret))
				return gq_err(GQ_ERR_FORMAT, "%s: corrupt zstd data near byte %llu: %s",
					      r->name, (unsigned long long)r->offset + got,
					      ZSTD_getErrorName(ret));
			r->zout_pos = 0;
			r->zout_len = out.pos;
			if (ret == 0) {
				r->in_zstd = 0;
				r->sniff = 1;
			}
			continue;
		}
		if (r->sniff) {
			if (raw_ensure(r, 4))
				return GQ_ERR_IO;
			r->sniff = 0;
			if (r->raw_len - r->raw_pos >= 4 && is_zstd_magic(r->raw + r->raw_pos)) {
				ZSTD_DCtx_reset(r->zd, ZSTD_reset_session_only);
				r->in_zstd = 1;
			}
			continue;
		}
		if (r->raw_pos == r->raw_len) {
			ssize_t k;

			/* big reads bypass the buffer, small ones refill it */
			if (dst && n - got >= RAW_CAP) {
				k = read_fd(r, dst + got, (size_t)(n - got > (1u << 30) ? 1u << 30 : n - got));
				if (k < 0)
					return GQ_ERR_IO;
				if (k == 0)
					break;
				got += (uint64_t)k;
				continue;
			}
			r->raw_pos = r->raw_len = 0;
			if (raw_ensure(r, 1))
				return GQ_ERR_IO;
			if (r->raw_len == 0)
				break;
			continue;
		}
		size_t k = r->raw_len - r->raw_pos;

		if (k > n - got)
			k = (size_t)(n - got);
		if (dst)
			memcpy(dst + got, r->raw + r->raw_pos, k);
		r->raw_pos += k;
		got += k;
	}
	r->offset += got;
	return (int64_t)got;
}

/* Skips n logical bytes, seeking when the input allows. Returns bytes skipped. */
static int64_t logical_skip(gq_reader *r, uint64_t n)
{
	uint64_t avail = known_remaining(r);
	uint64_t buffered;

	if (avail == UINT64_MAX || n > avail)
		return logical_read(r, NULL, n);
	buffered = r->raw_len - r->raw_pos;
	if (n <= buffered) {
		r->raw_pos += (size_t)n;
	} else {
		uint64_t rest = n - buffered;

		if (lseek(r->fd, (off_t)rest, SEEK_CUR) < 0)
			return logical_read(r, NULL, n);
		r->fd_pos += rest;
		r->raw_pos = r->raw_len = 0;
	}
	r->offset += n;
	return (int64_t)n;
}

void gq_frame_free(gq_frame *f)
{
	gq_st_header_free(&f->hdr);
	free(f->header_json);
	free(f->data);
	memset(f, 0, sizeof *f);
}

int gq_frame_err(const gq_frame *f, int code, const char *fmt, ...)
{
	char msg[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	return gq_err(code, "%s: frame %lld at byte %llu: %s", f->source, (long long)f->index,
		      (unsigned long long)f->offset, msg);
}

/* First tensor whose bytes end past `got`, for truncation messages. */
static const char *first_incomplete(const gq_st_header *h, uint64_t got)
{
	const gq_st_entry *best = NULL;

	for (int i = 0; i < h->n_tensors; i++)
		if (h->tensors[i].end > got && (!best || h->tensors[i].begin < best->begin))
			best = &h->tensors[i];
	return best ? best->name : "?";
}

static int read_data(gq_reader *r, gq_frame *f, int flags)
{
	uint64_t need = f->hdr.data_len, avail = known_remaining(r), got = 0, cap;
	int64_t k;

	if (avail != UINT64_MAX && need > avail)
		return gq_frame_err(f, GQ_ERR_FORMAT,
				    "truncated: tensor data needs %llu bytes but the input has %llu "
				    "left (tensor '%s' incomplete)",
				    (unsigned long long)need, (unsigned long long)avail,
				    first_incomplete(&f->hdr, avail));
	if (flags & GQ_SKIP_DATA) {
		k = logical_skip(r, need);
		if (k < 0)
			return (int)k;
		got = (uint64_t)k;
	} else if (need > 0) {
		cap = avail != UINT64_MAX || need < DATA_CHUNK ? need : DATA_CHUNK;
		if (r->spare_cap >= need) {
			cap = need; /* reads stop at cap: never into the next frame */
			f->data = r->spare;
			f->data_cap = r->spare_cap;
			r->spare = NULL;
			r->spare_cap = 0;
		} else if (cap > SIZE_MAX || !(f->data = malloc((size_t)cap))) {
			return gq_frame_err(f, GQ_ERR_NOMEM, "out of memory for %llu bytes of data",
					    (unsigned long long)cap);
		} else {
			f->data_cap = cap;
		}
		while (got < need) {
			if (got == cap) {
				uint8_t *p;

				cap = cap * 2 < need ? cap * 2 : need;
				p = cap <= SIZE_MAX ? realloc(f->data, (size_t)cap) : NULL;
				if (!p)
					return gq_frame_err(f, GQ_ERR_NOMEM,
							    "out of memory for %llu bytes of data",
							    (unsigned long long)cap);
				f->data = p;
				f->data_cap = cap;
			}
			uint64_t want = cap - got;

			k = logical_read(r, f->data + got, want);
			if (k < 0)
				return (int)k;
			got += (uint64_t)k;
			if ((uint64_t)k < want)
				break;
		}
	}
	if (got < need)
		return gq_frame_err(f, GQ_ERR_FORMAT,
				    "truncated: tensor data needs %llu bytes but the input ends after "
				    "%llu (tensor '%s' incomplete)",
				    (unsigned long long)need, (unsigned long long)got,
				    first_incomplete(&f->hdr, got));
	return GQ_OK;
}

int gq_reader_next(gq_reader *r, gq_frame *f, int flags)
{
	uint8_t lenbuf[8];
	uint64_t n = 0, avail;
	int64_t k;
	int rc;

	if (f->data && f->data_cap > r->spare_cap) {
		free(r->spare);
		r->spare = f->data;
		r->spare_cap = f->data_cap;
		f->data = NULL;
	}
	gq_frame_free(f);
	f->index = r->index;
	f->source = r->name;
	/* a new frame may start a zstd section (cat plain.gqs packed.gqs.zst) */
	if (!r->in_zstd && r->zout_pos == r->zout_len)
		r->sniff = 1;
	f->offset = r->offset;
	k = logical_read(r, lenbuf, 8);
	if (k < 0)
		return (int)k;
	if (k == 0)
		return 0;
	if (k < 8)
		return gq_frame_err(f, GQ_ERR_FORMAT,
				    "truncated: the input ends after %lld of the 8 length bytes",
				    (long long)k);
	for (int i = 7; i >= 0; i--)
		n = n << 8 | lenbuf[i];
	if (n > GQ_ST_MAX_HEADER)
		return gq_frame_err(f, GQ_ERR_FORMAT,
				    "header length %llu exceeds the limit of %llu bytes (not a "
				    "safetensors frame?)",
				    (unsigned long long)n, GQ_ST_MAX_HEADER);
	if (n < 2)
		return gq_frame_err(f, GQ_ERR_FORMAT, "header length %llu is too small",
				    (unsigned long long)n);
	avail = known_remaining(r);
	if (avail != UINT64_MAX && n > avail)
		return gq_frame_err(f, GQ_ERR_FORMAT,
				    "truncated: header needs %llu bytes but the input has %llu left",
				    (unsigned long long)n, (unsigned long long)avail);
	f->header_json = malloc((size_t)n + 1);
	if (!f->header_json)
		return gq_frame_err(f, GQ_ERR_NOMEM, "out of memory");
	k = logical_read(r, (uint8_t *)f->header_json, n);
	if (k < 0)
		return (int)k;
	if ((uint64_t)k < n)
		return gq_frame_err(f, GQ_ERR_FORMAT,
				    "truncated: header needs %llu bytes but the input ends after %lld",
				    (unsigned long long)n, (long long)k);
	f->header_json[n] = '\0';
	f->header_len = n;
	rc = gq_st_parse(f->header_json, (size_t)n, f->offset + 8, &f->hdr);
	if (rc)
		return gq_err_wrap(rc, "%s: frame %lld at byte %llu", f->source, (long long)f->index,
				   (unsigned long long)f->offset);
	f->kind = gq_st_meta(&f->hdr, GQ_KIND_KEY);
	rc = read_data(r, f, flags);
	if (rc)
		return rc;
	r->index++;
	return 1;
}

int gq_frame_tensor(const gq_frame *f, const char *name, gq_tensor *t)
{
	const gq_st_entry *e = gq_st_find(&f->hdr, name);

	if (!e)
		return gq_frame_err(f, GQ_ERR_FORMAT, "%s frame has no tensor '%s'",
				    f->kind ? f->kind : "safetensors", name);
	*t = gq_st_view(e, f->data);
	return GQ_OK;
}

const char *gq_frame_attr(const gq_frame *f, const char *key)
{
	return gq_st_meta(&f->hdr, key);
}

/* ---- writer ---- */

struct gq_writer {
	FILE *fp;
	char *name;
	gq_atomic atomic;
	int is_atomic;
	ZSTD_CCtx *zc;
	uint8_t *zbuf; /* zcap bytes of compressed output awaiting fwrite */
	size_t zcap;
};

static int writer_setup(gq_writer *w, const gq_writer_opts *o, gq_writer **out);

int gq_writer_open_fp(gq_writer **out, FILE *fp, const char *name, const gq_writer_opts *o)
{
	gq_writer *w = calloc(1, sizeof *w);

	if (!w)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	w->fp = fp;
	w->name = strdup(name);
	return writer_setup(w, o, out);
}

int gq_writer_open(gq_writer **out, const char *path, const gq_writer_opts *o)
{
	gq_writer *w = calloc(1, sizeof *w);
	int rc;

	if (!w)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	if (!path || strcmp(path, "-") == 0) {
		if (isatty(STDOUT_FILENO) && !o->force_tty) {
			free(w);
			return gq_err(GQ_ERR_ARG,
				      "refusing to write binary frames to a terminal (redirect "
				      "stdout, use -o FILE, or --force)");
		}
		w->fp = stdout;
		w->name = strdup("<stdout>");
	} else {
		rc = gq_atomic_open(&w->atomic, path);
		if (rc) {
			free(w);
			return rc;
		}
		w->is_atomic = 1;
		w->fp = w->atomic.fp;
		w->name = strdup(path);
	}
	return writer_setup(w, o, out);
}

/* Common tail of the open functions: name check and compression context. */
static int writer_setup(gq_writer *w, const gq_writer_opts *o, gq_writer **out)
{
	if (!w->name) {
		gq_writer_close(w, 0);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	grow_pipe(fileno(w->fp));
	if (o->zstd_level > 0) {
		w->zc = ZSTD_createCCtx();
		w->zcap = ZSTD_CStreamOutSize();
		w->zbuf = malloc(w->zcap);
		if (!w->zc || !w->zbuf) {
			gq_writer_close(w, 0);
			return gq_err(GQ_ERR_NOMEM, "out of memory");
		}
		ZSTD_CCtx_setParameter(w->zc, ZSTD_c_compressionLevel, o->zstd_level);
		ZSTD_CCtx_setParameter(w->zc, ZSTD_c_checksumFlag, 1);
		/* a libzstd built without threads rejects this: then compress on one */
		if (o->threads > 1)
			ZSTD_CCtx_setParameter(w->zc, ZSTD_c_nbWorkers, o->threads);
	}
	*out = w;
	return GQ_OK;
}

static int zstd_push(gq_writer *w, const void *p, size_t n, ZSTD_EndDirective mode)
{
	ZSTD_inBuffer in = {p, n, 0};
	size_t left;

	do {
		ZSTD_outBuffer out = {w->zbuf, w->zcap, 0};

		left = ZSTD_compressStream2(w->zc, &out, &in, mode);
		if (ZSTD_isError(left))
			return gq_err(GQ_ERR_IO, "zstd compression failed: %s",
				      ZSTD_getErrorName(left));
		if (gq_fwrite_all(w->fp, w->zbuf, out.pos, w->name))
			return GQ_ERR_IO;
	} while (mode == ZSTD_e_continue ? in.pos < in.size : left != 0);
	return GQ_OK;
}

static int write_bytes(gq_writer *w, const void *p, uint64_t n)
{
	const uint8_t *b = p;

	/* in pieces: size_t arguments and zstd's buffers stay reasonable */
	while (n > 0) {
		size_t k = n > (1u << 30) ? 1u << 30 : (size_t)n;
		int rc = w->zc ? zstd_push(w, b, k, ZSTD_e_continue) : gq_fwrite_all(w->fp, b, k, w->name);

		if (rc)
			return rc;
		b += k;
		n -= k;
	}
	return GQ_OK;
}

static int end_frame(gq_writer *w)
{
	if (w->zc && zstd_push(w, NULL, 0, ZSTD_e_flush))
		return GQ_ERR_IO;
	if (fflush(w->fp) != 0)
		return gq_err(GQ_ERR_IO, "cannot write '%s': %s", w->name, strerror(errno));
	return GQ_OK;
}

static int write_header(gq_writer *w, const char *json, uint64_t len)
{
	uint8_t lenbuf[8];

	for (int i = 0; i < 8; i++)
		lenbuf[i] = (uint8_t)(len >> (8 * i));
	if (write_bytes(w, lenbuf, 8))
		return GQ_ERR_IO;
	return write_bytes(w, json, len);
}

int gq_writer_put(gq_writer *w, const gq_st_builder *b)
{
	char *json;
	size_t len;
	int *order;
	uint64_t data_len;
	int rc = gq_stb_header(b, &json, &len, &order, &data_len);

	if (rc)
		return rc;
	rc = write_header(w, json, len);
	for (int i = 0; i < b->n && rc == GQ_OK; i++)
		rc = write_bytes(w, b->tensors[order[i]].data, b->tensors[order[i]].nbytes);
	free(json);
	free(order);
	return rc ? rc : end_frame(w);
}

int gq_writer_pass(gq_writer *w, const gq_frame *f)
{
	int rc;

	if (!f->data && f->hdr.data_len)
		return gq_frame_err(f, GQ_ERR_ARG, "frame was read without its data");
	rc = write_header(w, f->header_json, f->header_len);
	if (rc == GQ_OK)
		rc = write_bytes(w, f->data, f->hdr.data_len);
	return rc ? rc : end_frame(w);
}

int gq_writer_close(gq_writer *w, int ok)
{
	int rc = GQ_OK;

	if (!w)
		return GQ_OK;
	if (ok && w->zc)
		rc = zstd_push(w, NULL, 0, ZSTD_e_end);
	if (ok && rc == GQ_OK && fflush(w->fp) != 0)
		rc = gq_err(GQ_ERR_IO, "cannot write '%s': %s", w->name, strerror(errno));
	if (w->is_atomic) {
		if (ok && rc == GQ_OK)
			rc = gq_atomic_commit(&w->atomic, 1);
		else
			gq_atomic_abort(&w->atomic);
	}
	ZSTD_freeCCtx(w->zc);
	free(w->zbuf);
	free(w->name);
	free(w);
	return rc;
}

int gq_st_write_file(const char *path, const gq_st_builder *b)
{
	gq_writer_opts o = {0};
	gq_writer *w;
	int rc = gq_writer_open(&w, path, &o);

	if (rc)
		return rc;
	rc = gq_writer_put(w, b);
	int close_rc = gq_writer_close(w, rc == GQ_OK);
	return rc ? rc : close_rc;
}
