/* SPDX-License-Identifier: MIT */
/*
 * The fuzz targets (tests/fuzz/README.md). Each fuzz-*.c defines
 * LLVMFuzzerTestOneInput (and, where it needs set-up, LLVMFuzzerInitialize);
 * the same file builds twice: with libFuzzer (-Dfuzz=enabled, clang) to
 * fuzz, and with replay.c's main() in every build, where a meson test feeds
 * it the committed corpus and crash inputs.
 *
 * A target calls fuzz_fail() when the code under test breaks an invariant
 * the input cannot excuse (a reply that is no frame, a check that accepts
 * what it must refuse): it aborts, which both drivers report as a crash.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

_Noreturn void fuzz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The daemon targets (daemon-harness.c): the input as a client's messages
 * to a daemon created for it in-process, with an SSD tier or without. */
int fuzz_daemon_init(int ssd);
int fuzz_daemon_one(const uint8_t *data, size_t size);

/*
 * fuzz-recover's input: the SSD tier's file, then chunks as above for the
 * daemon started on it (which recovers the file first). The file is
 *     u16 n, then n records: u8 flags, u16 page, u16 length, length bytes
 * (placed at page * 4 KiB of an 8 MiB image, at most 4 KiB each). Flags:
 * seal the page as an extent header, or as a slot header (its payload crc
 * over the payload_len bytes after it, then its header crc), so that inputs
 * get past the crcs to what recovery does with a header it believes.
 */
#define FUZZ_SEAL_EXTENT 0x01u
#define FUZZ_SEAL_SLOT   0x02u
int fuzz_recover_one(const uint8_t *data, size_t size);

/*
 * The daemon targets' input: a sequence of chunks, each
 *     u8 flags, u16 length (little-endian), length bytes
 * sent as one message (the bytes as they are: frame header included). The
 * last chunk may be shorter than its length says.
 */
#define FUZZ_CHUNK_MEMFD      0x01u   /* attach a memfd (SCM_RIGHTS) */
#define FUZZ_CHUNK_SIZE_SHIFT 1       /* bits 1-3: its size, fuzz_memfd_sizes[] */
#define FUZZ_CHUNK_SIZE_MASK  0x0eu
#define FUZZ_CHUNK_UNSEALED   0x10u   /* leave it without F_SEAL_SHRINK */
#define FUZZ_CHUNK_NEW_SESSION 0x20u  /* open another session first (the old ones stay) */
#define FUZZ_CHUNK_HANG_UP    0x40u   /* close the current session first, requests in flight or not */
#define FUZZ_CHUNK_NO_PUMP    0x80u   /* send the next chunk before the daemon runs */

extern const uint32_t fuzz_memfd_sizes[8];
