/*
 * writer: writes a volume's files atomically in the kubelet's layout: a new
 * "..<timestamp>.<random>" directory, then the "..data" symlink swapped with
 * rename(2), then one "name -> ..data/name" symlink per top-level file.
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
 * when the current ..data already holds exactly these files. Returns 0 or a
 * negative errno with err filled; on failure the previous contents remain.
 */
int writer_write(const char *root, const char *target_dir, const struct writer_file *files,
		 size_t nfiles, struct err *err);

#endif
