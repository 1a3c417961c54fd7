/*
 * fuzzutil.c - the temporary directory the path-based harnesses write into.
 * One per process (libFuzzer's -jobs/-fork workers each get their own); the
 * files written are remembered so that exit removes exactly them.
 */
#define _GNU_SOURCE
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_NAMES 16

static char dir[4096];
static char *names[MAX_NAMES];
static int n_names;

static void remove_dir(void)
{
	for (int i = 0; i < n_names; i++) {
		fuzz_unlink(names[i]);
		free(names[i]);
	}
	rmdir(dir);
}

const char *fuzz_tmpdir(void)
{
	if (!dir[0]) {
		const char *t = getenv("TMPDIR");

		snprintf(dir, sizeof dir, "%s/gq-fuzz.XXXXXX", t && *t ? t : "/tmp");
		if (!mkdtemp(dir)) {
			perror("fuzz: mkdtemp");
			abort();
		}
		atexit(remove_dir);
	}
	return dir;
}

const char *fuzz_write(const char *name, const void *data, size_t size)
{
	static char path[4352];
	FILE *fp;
	int known = 0;

	for (int i = 0; i < n_names; i++)
		known |= strcmp(names[i], name) == 0;
	if (!known) {
		if (n_names == MAX_NAMES)
			abort(); /* a harness bug: it uses a fixed handful of names */
		names[n_names++] = strdup(name);
	}
	snprintf(path, sizeof path, "%s/%s", fuzz_tmpdir(), name);
	fp = fopen(path, "wb");
	if (!fp)
		return NULL;
	if (size && fwrite(data, 1, size, fp) != size) {
		fclose(fp);
		return NULL;
	}
	return fclose(fp) == 0 ? path : NULL;
}

void fuzz_unlink(const char *name)
{
	char path[4352];

	snprintf(path, sizeof path, "%s/%s", fuzz_tmpdir(), name);
	unlink(path);
}
