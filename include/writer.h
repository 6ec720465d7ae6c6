/*
 * writer: writes a volume's files atomically in the kubelet's layout: a new
 * "..<timestamp>.<random>" directory, one "name -> ..data/name" symlink per
 * top-level file, then the "..data" symlink swapped with rename(2).
 * Readers see the old set or the new set, never a mix. Every path is opened
 * relative to a directory fd with O_NOFOLLOW; nothing escapes the target.
 */
#ifndef MCP_WRITER_H
#define MCP_WRITER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "err.h"

struct writer_file {
	const char *path; /* relative, validated with writer_path_valid() */
	mode_t mode;	  /* exact mode, not subject to umask */
	const uint8_t *contents;
	size_t len;
};

/* The driver's rules for File.path: non-empty, relative, no "..", no leading
 * "..", clean (no "//", "./", trailing "/"), at most 4096 bytes and 255 per element. */
int writer_path_valid(const char *path);

/*
 * Writes files into target_dir (which must exist and be a real directory,
 * not a symlink). When root is non-NULL, target_dir must resolve to a path
 * under root (the kubelet directory), checked on the opened fd. Skips all I/O
 * when the current ..data already holds exactly these files. Writes to one
 * target wait for each other (flock on the directory). Returns 0 or a
 * negative errno with err filled; on failure the previous contents remain.
 * A write killed at any point leaves ..data naming a complete set with all
 * its links, or no ..data and only links that resolve nowhere (first write).
 */
int writer_write(const char *root, const char *target_dir, const struct writer_file *files,
		 size_t nfiles, struct err *err);

/*
 * Tests only: after the nth change any write makes to a target, counted over
 * the life of the process (a directory, a file created, a file complete, a
 * link, a rename, a removal), the process kills itself with SIGKILL, as a
 * crash would. 0 (the default) never. serve --test-crash-in-write sets it.
 */
void writer_test_crash_after(long n);

#endif
