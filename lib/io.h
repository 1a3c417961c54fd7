/*
 * io.h - atomic outputs, bounded file reads and read-only mappings.
 *
 * Invariant: a named output exists under its final name only when complete.
 * Outputs are written under a temporary name in the same directory, fsynced
 * and renamed; every temporary path lives in a process-wide registry that an
 * atexit hook and a SIGINT/SIGTERM/SIGHUP handler unlink, so neither die()
 * nor Ctrl-C leaves a half-written file or directory behind.
 */
#ifndef GQ_IO_H
#define GQ_IO_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct {
	char *final_path;
	char *tmp_path;
	FILE *fp;   /* open on tmp_path, for files; NULL for directories */
	int is_dir;
	int slot;   /* index in the cleanup registry */
} gq_atomic;

/* Creates "<path>.tmp.XXXXXX" beside path and opens it for writing. */
int gq_atomic_open(gq_atomic *a, const char *path);
/* Creates a temporary directory beside path; files go in with gq_atomic_dir_file(). */
int gq_atomic_mkdir(gq_atomic *a, const char *path);
/* Path of a file inside an atomic directory (malloc'd); registers it for cleanup. */
int gq_atomic_dir_file(gq_atomic *dir, const char *name, char **out_path);
/*
 * Flushes, fsyncs and renames to the final name. Directories replace an
 * existing output only if `replace` is set (files always replace).
 */
int gq_atomic_commit(gq_atomic *a, int replace);
/* Removes the temporary output; safe to call after a failed commit. */
void gq_atomic_abort(gq_atomic *a);

/*
 * Installs the signal handlers and atexit hook (idempotent; tools call it
 * once). Signals ignored at start (nohup, background jobs) stay ignored.
 */
void gq_atomic_install_handlers(void);

/* A whole regular file read into memory, refusing files larger than max_bytes. */
int gq_read_file(const char *path, size_t max_bytes, char **out, size_t *out_len);
/* The same, or all of stdin for "-" (NUL-terminated either way). */
int gq_read_input(const char *path, size_t max_bytes, char **out, size_t *out_len);

typedef struct {
	const uint8_t *data; /* size bytes, read-only, NULL when size == 0 */
	size_t size;
	char *path;
} gq_mmap;

int gq_mmap_open(gq_mmap *m, const char *path);
void gq_mmap_close(gq_mmap *m);

/* Writes all of buf to fp; GQ_ERR_IO with the path and strerror on failure. */
int gq_fwrite_all(FILE *fp, const void *buf, size_t n, const char *path);
/* Flushes and checks stdout at the end of a tool (EPIPE counts as failure). */
int gq_close_stdout(void);

/*
 * Writes line and a newline to stdout and flushes. SIGINT, SIGTERM and SIGHUP
 * arriving meanwhile take effect once the line is out, so an interrupted
 * tool's output ends with a whole line (JSON lines stay parseable); SIGKILL
 * cannot be held back.
 */
int gq_put_line(const char *line);
/* A name is safe inside an output directory: no '/', no "..", not empty, no NUL. */
int gq_safe_filename(const char *name);

#endif
