/*
 * fuzz.h - helpers shared by the libFuzzer harnesses (tests/fuzz/fuzz_*.c).
 *
 * Each harness defines LLVMFuzzerTestOneInput (and may define
 * LLVMFuzzerInitialize). The same sources link either against libFuzzer
 * (make fuzz, clang) or against replay.c, which feeds files through them in
 * the normal build so that make check replays every committed regression.
 * A harness must never exit, leak or print: lib/ reports by status codes.
 */
#ifndef GQ_FUZZ_H
#define GQ_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A private directory for files the library only reads by path (made once, removed at exit). */
const char *fuzz_tmpdir(void);
/* Writes data to fuzz_tmpdir()/name, replacing it; returns the path (static) or NULL. */
const char *fuzz_write(const char *name, const void *data, size_t size);
/* Removes fuzz_tmpdir()/name if present. */
void fuzz_unlink(const char *name);

#endif
