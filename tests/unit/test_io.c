/*
 * test_io.c - atomic outputs: nothing under the final name until commit,
 * temporaries removed on abort, on exit (die) and on SIGTERM/SIGINT, and
 * directory outputs that appear whole or not at all.
 */
#define _GNU_SOURCE
#include "check.h"
#include "io.h"

#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[] = "/tmp/gq-test-io-XXXXXX";

static const char *in_dir(const char *name)
{
	static char buf[4][512];
	static int k;
	char *b = buf[k++ % 4];

	snprintf(b, sizeof buf[0], "%s/%s", dir, name);
	return b;
}

static int entries(void)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

static void test_commit_and_abort(void)
{
	gq_atomic a;
	char *text;
	size_t len;

	CHECK_OK(gq_atomic_open(&a, in_dir("out.txt")));
	fputs("hello", a.fp);
	CHECK(access(in_dir("out.txt"), F_OK) != 0);
	CHECK(entries() == 1);
	CHECK_OK(gq_atomic_commit(&a, 1));
	CHECK_OK(gq_read_file(in_dir("out.txt"), 100, &text, &len));
	CHECK(len == 5 && memcmp(text, "hello", 5) == 0);
	free(text);
	/* replacing keeps the old content until commit */
	CHECK_OK(gq_atomic_open(&a, in_dir("out.txt")));
	fputs("partial", a.fp);
	gq_atomic_abort(&a);
	CHECK_OK(gq_read_file(in_dir("out.txt"), 100, &text, &len));
	CHECK(len == 5);
	free(text);
	CHECK(entries() == 1);
	unlink(in_dir("out.txt"));
}

static void test_directory_output(void)
{
	gq_atomic d;
	char *p;
	FILE *fp;

	CHECK_OK(gq_atomic_mkdir(&d, in_dir("ckpt")));
	CHECK_OK(gq_atomic_dir_file(&d, "a.safetensors", &p));
	fp = fopen(p, "w");
	fputs("x", fp);
	fclose(fp);
	free(p);
	CHECK_ERR(gq_atomic_dir_file(&d, "../escape", &p), GQ_ERR_ARG, "unsafe file name");
	CHECK(access(in_dir("ckpt"), F_OK) != 0);
	CHECK_OK(gq_atomic_commit(&d, 0));
	CHECK(access(in_dir("ckpt/a.safetensors"), F_OK) == 0);
	/* an existing directory is replaced only when asked */
	CHECK_OK(gq_atomic_mkdir(&d, in_dir("ckpt")));
	CHECK_ERR(gq_atomic_commit(&d, 0), GQ_ERR_IO, "already exists");
	CHECK_OK(gq_atomic_mkdir(&d, in_dir("ckpt")));
	CHECK_OK(gq_atomic_dir_file(&d, "b.safetensors", &p));
	fp = fopen(p, "w");
	fclose(fp);
	free(p);
	CHECK_OK(gq_atomic_commit(&d, 1));
	CHECK(access(in_dir("ckpt/b.safetensors"), F_OK) == 0);
	CHECK(access(in_dir("ckpt/a.safetensors"), F_OK) != 0);
	CHECK(entries() == 1);
	/* abort removes the directory and its files */
	CHECK_OK(gq_atomic_mkdir(&d, in_dir("gone")));
	CHECK_OK(gq_atomic_dir_file(&d, "f", &p));
	fp = fopen(p, "w");
	fclose(fp);
	free(p);
	gq_atomic_abort(&d);
	CHECK(entries() == 1);
	CHECK(system("rm -rf /tmp/gq-test-io-*/ckpt") == 0);
}

/*
 * A child opens outputs, then gets `how` (0: exits) with it ignored from the
 * start or not; nothing may remain either way.
 */
static void child_dies(int how, int ignored)
{
	pid_t pid = fork();
	int status;

	if (pid == 0) {
		gq_atomic a, d;
		char *p;
		FILE *fp;

		/* this test itself may run with signals ignored (nohup, a background make) */
		if (how)
			signal(how, ignored ? SIG_IGN : SIG_DFL);
		gq_atomic_install_handlers();
		if (gq_atomic_open(&a, in_dir("f.out")) || gq_atomic_mkdir(&d, in_dir("d.out")) ||
		    gq_atomic_dir_file(&d, "inner", &p))
			_exit(3);
		fp = fopen(p, "w");
		fputs("data", fp);
		fclose(fp);
		fputs("data", a.fp);
		fflush(a.fp);
		if (how == 0)
			exit(1); /* what die() does */
		raise(how);
		exit(4); /* an ignored signal: the tool goes on */
	}
	waitpid(pid, &status, 0);
	if (how == 0)
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1);
	else if (ignored)
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 4);
	else
		CHECK(WIFSIGNALED(status) && WTERMSIG(status) == how);
	CHECK(entries() == 0);
}

static void test_cleanup_on_exit_and_signals(void)
{
	child_dies(0, 0);
	for (int ignored = 0; ignored < 2; ignored++) {
		child_dies(SIGTERM, ignored);
		child_dies(SIGINT, ignored);
		child_dies(SIGHUP, ignored);
	}
}

static void test_read_file_bounds(void)
{
	char *t;
	size_t n;
	FILE *fp = fopen(in_dir("r"), "w");

	fputs("0123456789", fp);
	fclose(fp);
	CHECK_ERR(gq_read_file(in_dir("r"), 9, &t, &n), GQ_ERR_FORMAT, "too large");
	CHECK_OK(gq_read_file(in_dir("r"), 10, &t, &n));
	CHECK(n == 10 && t[10] == '\0');
	free(t);
	CHECK_ERR(gq_read_file(dir, 10, &t, &n), GQ_ERR_IO, "not a regular file");
	unlink(in_dir("r"));
	CHECK(gq_safe_filename("model.safetensors") && !gq_safe_filename("a/b") &&
	      !gq_safe_filename("..") && !gq_safe_filename(""));
}

int main(void)
{
	CHECK(mkdtemp(dir) != NULL);
	RUN(test_commit_and_abort);
	RUN(test_directory_output);
	RUN(test_cleanup_on_exit_and_signals);
	RUN(test_read_file_bounds);
	rmdir(dir);
	return check_done();
}
