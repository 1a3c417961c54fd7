/*
 * replay.c - main() for the harnesses outside libFuzzer: runs each FILE
 * (or each file in a DIR) through LLVMFuzzerTestOneInput once. Built with
 * the normal compiler and flags, so make check (plain, SANITIZE=1 or under
 * valgrind) replays every crash the fuzzers ever found.
 */
#define _GNU_SOURCE
#include "fuzz.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

static int replay_file(const char *path)
{
	FILE *fp = fopen(path, "rb");
	struct stat st;
	uint8_t *buf;
	size_t len;

	if (!fp || fstat(fileno(fp), &st) != 0) {
		perror(path);
		if (fp)
			fclose(fp);
		return 1;
	}
	/* exactly len bytes on the heap, so ASan and valgrind see reads past the input */
	len = (size_t)st.st_size;
	buf = malloc(len ? len : 1);
	if (!buf || fread(buf, 1, len, fp) != len) {
		fprintf(stderr, "%s: cannot read\n", path);
		free(buf);
		fclose(fp);
		return 1;
	}
	fclose(fp);
	LLVMFuzzerTestOneInput(buf, len);
	free(buf);
	return 0;
}

int main(int argc, char **argv)
{
	int bad = 0, files = 0;

	LLVMFuzzerInitialize(&argc, &argv);
	for (int i = 1; i < argc; i++) {
		struct stat st;

		if (stat(argv[i], &st) != 0) {
			perror(argv[i]);
			return 1;
		}
		if (!S_ISDIR(st.st_mode)) {
			bad |= replay_file(argv[i]);
			files++;
			continue;
		}
		struct dirent **list;
		int n = scandir(argv[i], &list, NULL, alphasort);

		if (n < 0) {
			perror(argv[i]);
			return 1;
		}
		for (int j = 0; j < n; j++) {
			char path[4096];

			if (list[j]->d_name[0] != '.') {
				snprintf(path, sizeof path, "%s/%s", argv[i], list[j]->d_name);
				bad |= replay_file(path);
				files++;
			}
			free(list[j]);
		}
		free(list);
	}
	printf("replayed %d input%s\n", files, files == 1 ? "" : "s");
	return bad;
}
