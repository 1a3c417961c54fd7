/*
 * io.c - atomic outputs with a signal-safe cleanup registry, bounded reads,
 * read-only mappings.
 *
 * The registry is a fixed array of malloc'd paths published through volatile
 * pointers: the signal handler only reads them and calls unlink/rmdir, both
 * async-signal-safe. Files inside a temporary directory are registered after
 * it, so walking the registry backwards empties a directory before removing it.
 */
#define _GNU_SOURCE
#include "io.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define REG_MAX 4096

static char *volatile reg_path[REG_MAX];
static volatile sig_atomic_t reg_is_dir[REG_MAX];
static int reg_owner[REG_MAX]; /* slot of the directory a file lives in, or -1 */
static int reg_used;            /* slots ever handed out (high-water mark) */
static int handlers_installed;
static volatile sig_atomic_t holding;  /* writing a line, or creating a temporary: signals wait */
static volatile sig_atomic_t held_sig; /* the signal that came meanwhile, or 0 */

static void reg_cleanup_all(void)
{
	for (int i = reg_used - 1; i >= 0; i--) {
		char *p = reg_path[i];

		if (!p)
			continue;
		if (reg_is_dir[i])
			rmdir(p);
		else
			unlink(p);
	}
}

static void on_signal(int sig)
{
	/*
	 * Blocking the signal would not do: OpenBLAS's threads do not block it,
	 * and the kernel hands it to one of them. So whichever thread runs this
	 * notes it, and gq_put_line acts on it once its line is out.
	 */
	if (holding) {
		held_sig = sig;
		return;
	}
	reg_cleanup_all();
	signal(sig, SIG_DFL);
	raise(sig);
}

static void on_exit_cleanup(void)
{
	reg_cleanup_all();
}

void gq_atomic_install_handlers(void)
{
	static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
	struct sigaction sa, old;

	if (handlers_installed)
		return;
	handlers_installed = 1;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	/* a held signal returns: a write it interrupts must resume, not fail with EINTR */
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
		/* one ignored from the start (nohup, a shell's background job) stays ignored */
		if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN)
			sigaction(sigs[i], &sa, NULL);
	atexit(on_exit_cleanup);
}

static int reg_add(const char *path, int is_dir, int owner)
{
	char *copy;
	int slot = -1;

	for (int i = 0; i < reg_used; i++)
		if (!reg_path[i]) {
			slot = i;
			break;
		}
	if (slot < 0) {
		if (reg_used == REG_MAX)
			return gq_err(GQ_ERR_IO, "too many temporary outputs open (%d)", REG_MAX);
		slot = reg_used;
	}
	copy = strdup(path);
	if (!copy)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	reg_is_dir[slot] = is_dir;
	reg_owner[slot] = owner;
	reg_path[slot] = copy; /* publish last: the handler sees a complete entry */
	if (slot == reg_used)
		reg_used++;
	return slot;
}

/*
 * Signals wait while a line is written (gq_put_line) and between creating a
 * temporary and registering it, where one would leave it behind: blocking
 * signals covers only this thread, and the kernel may hand a kill to
 * another (OpenBLAS's, the pool's). release_signals acts on one that came
 * meanwhile.
 */
static int hold_signals(void)
{
	int was = holding;

	holding = 1;
	return was;
}

static void release_signals(int was)
{
	holding = was;
	if (!was && held_sig)
		on_signal(held_sig);
}

static void reg_drop(int slot)
{
	char *p = reg_path[slot];

	reg_path[slot] = NULL;
	free(p);
}

static char *tmp_name(const char *path)
{
	size_t n = strlen(path);
	char *t = malloc(n + 12);

	if (t)
		snprintf(t, n + 12, "%s.tmp.XXXXXX", path);
	return t;
}

int gq_atomic_open(gq_atomic *a, const char *path)
{
	mode_t mask;
	int fd;

	memset(a, 0, sizeof *a);
	a->slot = -1;
	a->final_path = strdup(path);
	a->tmp_path = tmp_name(path);
	if (!a->final_path || !a->tmp_path) {
		gq_atomic_abort(a);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	/* no signal acts while the file exists but is not yet registered */
	int was = hold_signals();

	fd = mkstemp(a->tmp_path);
	if (fd >= 0) {
		a->slot = reg_add(a->tmp_path, 0, -1);
		if (a->slot < 0) {
			unlink(a->tmp_path);
			close(fd);
			fd = -2;
		}
	}
	release_signals(was);
	if (fd == -2) {
		gq_atomic_abort(a);
		return GQ_ERR_IO;
	}
	if (fd < 0) {
		int e = errno;
		gq_atomic_abort(a);
		return gq_err(GQ_ERR_IO, "cannot create '%s': %s", path, strerror(e));
	}
	mask = umask(0);
	umask(mask);
	fchmod(fd, 0666 & ~mask);
	a->fp = fdopen(fd, "wb");
	if (!a->fp) {
		close(fd);
		gq_atomic_abort(a);
		return gq_err(GQ_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
	}
	return GQ_OK;
}

int gq_atomic_mkdir(gq_atomic *a, const char *path)
{
	char *made;
	int was;

	memset(a, 0, sizeof *a);
	a->slot = -1;
	a->is_dir = 1;
	a->final_path = strdup(path);
	a->tmp_path = tmp_name(path);
	if (!a->final_path || !a->tmp_path) {
		gq_atomic_abort(a);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	was = hold_signals(); /* as in gq_atomic_open */
	made = mkdtemp(a->tmp_path);
	if (made) {
		a->slot = reg_add(a->tmp_path, 1, -1);
		if (a->slot < 0)
			rmdir(a->tmp_path);
	}
	release_signals(was);
	if (!made) {
		int e = errno;
		gq_atomic_abort(a);
		return gq_err(GQ_ERR_IO, "cannot create directory '%s': %s", path, strerror(e));
	}
	if (a->slot < 0) {
		gq_atomic_abort(a);
		return GQ_ERR_IO;
	}
	mode_t mask = umask(0);
	umask(mask);
	chmod(a->tmp_path, 0777 & ~mask);
	return GQ_OK;
}

int gq_atomic_dir_file(gq_atomic *dir, const char *name, char **out_path)
{
	size_t n;
	char *p;
	int slot;

	if (!dir->is_dir || dir->slot < 0)
		return gq_err(GQ_ERR_ARG, "not an open atomic directory");
	if (!gq_safe_filename(name))
		return gq_err(GQ_ERR_ARG, "unsafe file name '%s' for '%s'", name, dir->final_path);
	n = strlen(dir->tmp_path) + strlen(name) + 2;
	p = malloc(n);
	if (!p)
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	snprintf(p, n, "%s/%s", dir->tmp_path, name);
	slot = reg_add(p, 0, dir->slot);
	if (slot < 0) {
		free(p);
		return slot;
	}
	*out_path = p;
	return GQ_OK;
}

static int fsync_path(const char *path, int is_dir)
{
	int fd = open(path, (is_dir ? O_DIRECTORY : 0) | O_RDONLY);
	int rc = 0;

	if (fd < 0)
		return -1;
	/* some filesystems refuse fsync on directories: not an error for us */
	if (fsync(fd) != 0 && !(is_dir && (errno == EINVAL || errno == EBADF)))
		rc = -1;
	close(fd);
	return rc;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

int gq_atomic_commit(gq_atomic *a, int replace)
{
	char *parent;
	int rc = GQ_OK;

	if (a->slot < 0)
		return gq_err(GQ_ERR_ARG, "output '%s' is not open", a->final_path);
	if (a->fp) {
		FILE *fp = a->fp;

		a->fp = NULL;
		if (fflush(fp) != 0 || ferror(fp) || fsync(fileno(fp)) != 0) {
			int e = errno;
			fclose(fp);
			gq_atomic_abort(a);
			return gq_err(GQ_ERR_IO, "cannot write '%s': %s", a->final_path, strerror(e));
		}
		if (fclose(fp) != 0) {
			int e = errno;
			gq_atomic_abort(a);
			return gq_err(GQ_ERR_IO, "cannot write '%s': %s", a->final_path, strerror(e));
		}
	}
	if (a->is_dir) {
		for (int i = 0; i < reg_used; i++)
			if (reg_path[i] && reg_owner[i] == a->slot && fsync_path(reg_path[i], 0) != 0) {
				int e = errno;
				gq_atomic_abort(a);
				return gq_err(GQ_ERR_IO, "cannot sync '%s': %s", a->final_path,
					      strerror(e));
			}
		fsync_path(a->tmp_path, 1);
	}
	if (rename(a->tmp_path, a->final_path) != 0) {
		int e = errno;
		char *aside;

		if (!a->is_dir || !replace || (e != ENOTEMPTY && e != EEXIST)) {
			if (a->is_dir && (e == ENOTEMPTY || e == EEXIST))
				gq_err(GQ_ERR_IO, "'%s' already exists (not replacing it)",
				       a->final_path);
			else
				gq_err(GQ_ERR_IO, "cannot rename to '%s': %s", a->final_path,
				       strerror(e));
			gq_atomic_abort(a);
			return GQ_ERR_IO;
		}
		/* replace a directory: move the old one aside, swap, remove the old one */
		aside = tmp_name(a->final_path);
		if (!aside || !mkdtemp(aside) || rmdir(aside) != 0 ||
		    rename(a->final_path, aside) != 0 || rename(a->tmp_path, a->final_path) != 0) {
			gq_err(GQ_ERR_IO, "cannot replace '%s': %s", a->final_path, strerror(errno));
			free(aside);
			gq_atomic_abort(a);
			return GQ_ERR_IO;
		}
		nftw(aside, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
		free(aside);
	}
	for (int i = 0; i < reg_used; i++)
		if (reg_path[i] && reg_owner[i] == a->slot)
			reg_drop(i);
	reg_drop(a->slot);
	a->slot = -1;
	parent = strdup(a->final_path);
	if (parent) {
		fsync_path(dirname(parent), 1);
		free(parent);
	}
	free(a->tmp_path);
	free(a->final_path);
	a->tmp_path = a->final_path = NULL;
	return rc;
}

void gq_atomic_abort(gq_atomic *a)
{
	if (a->fp) {
		fclose(a->fp);
		a->fp = NULL;
	}
	if (a->slot >= 0) {
		for (int i = reg_used - 1; i >= 0; i--)
			if (reg_path[i] && reg_owner[i] == a->slot) {
				unlink(reg_path[i]);
				reg_drop(i);
			}
		if (a->is_dir)
			nftw(a->tmp_path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
		else
			unlink(a->tmp_path);
		reg_drop(a->slot);
		a->slot = -1;
	}
	free(a->tmp_path);
	free(a->final_path);
	a->tmp_path = a->final_path = NULL;
}

int gq_read_file(const char *path, size_t max_bytes, char **out, size_t *out_len)
{
	struct stat st;
	FILE *fp = fopen(path, "rb");
	char *buf;
	size_t n;

	if (!fp)
		return gq_err(GQ_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
	if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
		fclose(fp);
		return gq_err(GQ_ERR_IO, "'%s' is not a regular file", path);
	}
	if ((uint64_t)st.st_size > max_bytes) {
		fclose(fp);
		return gq_err(GQ_ERR_FORMAT, "'%s' is too large (%lld bytes, limit %zu)", path,
			      (long long)st.st_size, max_bytes);
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		fclose(fp);
		return gq_err(GQ_ERR_NOMEM, "out of memory reading '%s'", path);
	}
	n = fread(buf, 1, (size_t)st.st_size, fp);
	if (n != (size_t)st.st_size || ferror(fp)) {
		int e = ferror(fp) ? errno : 0;
		free(buf);
		fclose(fp);
		return gq_err(GQ_ERR_IO, "cannot read '%s': %s", path,
			      e ? strerror(e) : "file changed while reading");
	}
	fclose(fp);
	buf[n] = '\0';
	*out = buf;
	*out_len = n;
	return GQ_OK;
}

int gq_mmap_open(gq_mmap *m, const char *path)
{
	struct stat st;
	int fd;

	memset(m, 0, sizeof *m);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return gq_err(GQ_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return gq_err(GQ_ERR_IO, "'%s' is not a regular file", path);
	}
	m->size = (size_t)st.st_size;
	if (m->size > 0) {
		void *p = mmap(NULL, m->size, PROT_READ, MAP_PRIVATE, fd, 0);

		if (p == MAP_FAILED) {
			int e = errno;
			close(fd);
			return gq_err(GQ_ERR_IO, "cannot map '%s': %s", path, strerror(e));
		}
		m->data = p;
	}
	close(fd);
	m->path = strdup(path);
	if (!m->path) {
		gq_mmap_close(m);
		return gq_err(GQ_ERR_NOMEM, "out of memory");
	}
	return GQ_OK;
}

void gq_mmap_close(gq_mmap *m)
{
	if (m->data)
		munmap((void *)m->data, m->size);
	free(m->path);
	memset(m, 0, sizeof *m);
}

int gq_fwrite_all(FILE *fp, const void *buf, size_t n, const char *path)
{
	if (n && fwrite(buf, 1, n, fp) != n)
		return gq_err(GQ_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
	return GQ_OK;
}

int gq_close_stdout(void)
{
	int bad = fflush(stdout) != 0 || ferror(stdout);

	if (fclose(stdout) != 0)
		bad = 1;
	if (bad)
		return gq_err(GQ_ERR_IO, "cannot write '<stdout>': %s", strerror(errno));
	return GQ_OK;
}

int gq_put_line(const char *line)
{
	int bad, e, was;

	gq_atomic_install_handlers();
	was = hold_signals();
	bad = fputs(line, stdout) == EOF || putchar('\n') == EOF || fflush(stdout) != 0;
	e = errno;
	release_signals(was);
	if (bad)
		return gq_err(GQ_ERR_IO, "cannot write '<stdout>': %s", strerror(e));
	return GQ_OK;
}

int gq_safe_filename(const char *name)
{
	if (!name[0] || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return 0;
	for (const char *p = name; *p; p++)
		if (*p == '/' || *p == '\\')
			return 0;
	return 1;
}

int gq_read_input(const char *path, size_t max_bytes, char **out, size_t *out_len)
{
	gq_buf b = {0};
	char chunk[65536];
	size_t k;

	if (strcmp(path, "-") != 0)
		return gq_read_file(path, max_bytes, out, out_len);
	while ((k = fread(chunk, 1, sizeof chunk, stdin)) > 0 && b.len <= max_bytes)
		gq_buf_append(&b, chunk, k);
	if (ferror(stdin) || b.failed || b.len > max_bytes) {
		int too_big = !ferror(stdin) && !b.failed;

		gq_buf_free(&b);
		return too_big ? gq_err(GQ_ERR_FORMAT, "<stdin> is too large (limit %zu bytes)", max_bytes)
			       : gq_err(GQ_ERR_IO, "cannot read '<stdin>'");
	}
	gq_buf_append(&b, "", 1);
	if (b.failed) {
		gq_buf_free(&b);
		return gq_err(GQ_ERR_NOMEM, "out of memory reading <stdin>");
	}
	*out = b.data;
	*out_len = b.len - 1;
	return GQ_OK;
}
