/*
 * writer: the kubelet's atomic writer, as the Secrets Store CSI Driver uses
 * it to publish a volume's files. A new "..YYYY_MM_DD_HH_MM_SS.<random>"
 * directory gets the files; the "..data" symlink is swapped to it with one
 * rename(2); each top-level name is a symlink "name -> ..data/name". Readers
 * see the old set or the new set, never a mix.
 *
 * What holds at every instant, even when the process is killed (the order
 * below keeps it; tests/integration/test_crash.py kills at every step):
 * - "..data", when present, names a complete directory of the files, each
 *   with its exact mode, and every top-level name of it has its link. So the
 *   links of a set go in before "..data" points at it: on a first write
 *   they dangle until "..data" appears, and reading one fails with ENOENT
 *   as if it were not there. (The kubelet's own writer links after the swap
 *   and so can show "..data" with some links missing.)
 * - Whatever a killed write left ("..<timestamp>" directories "..data" does
 *   not name, "..data_tmp", "..user_tmp", links of names the set no longer
 *   has) is removed by the next write to the target.
 * Writes to one target are serialised with flock(2) on its directory, across
 * threads and processes, so temporary names are never shared and a write
 * never removes another's directory in the making.
 *
 * Every path is opened relative to the target's directory fd with
 * O_NOFOLLOW, so a symlink planted inside the target never makes us write
 * or delete outside it. Never logs or reports file contents: they are
 * secret (the private JWK).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "utf8.h"
#include "writer.h"

#define DATA_LINK     "..data"
#define DATA_TMP_LINK "..data_tmp"
#define USER_TMP_LINK "..user_tmp"
#define MAX_FILES     256
#define MAX_PATH      4096
#define MAX_ELEMENT   255
#define MAX_DEPTH     64 /* of directories we remove */

/* A path for a message: "%.*s" with CUT(path), at most 300 bytes, never half a character. */
#define CUT(s) (int)utf8_fit((s), 300), (s)

/* Tests only: the change after which the process kills itself (0: never), and the count. */
static long crash_after;
static atomic_long changes;

void writer_test_crash_after(long n)
{
	crash_after = n;
}

/* Called after each change to a target: a directory, file, link, rename or removal. */
static void changed(void)
{
	if (crash_after > 0 && atomic_fetch_add(&changes, 1) + 1 == crash_after)
		raise(SIGKILL);
}

int writer_path_valid(const char *path)
{
	const char *start, *p;
	size_t n;

	if (!path || !*path || path[0] == '/' || strnlen(path, MAX_PATH + 1) > MAX_PATH)
		return -EINVAL;
	/* Names starting with ".." are the writer's own (..data, ..<timestamp>). */
	if (path[0] == '.' && path[1] == '.')
		return -EINVAL;
	for (start = p = path;; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		n = (size_t)(p - start);
		/* Empty: "a//b" or a trailing "/"; "." and "..": not clean. */
		if (n == 0 || n > MAX_ELEMENT || (n == 1 && start[0] == '.') ||
		    (n == 2 && start[0] == '.' && start[1] == '.'))
			return -EINVAL;
		if (*p == '\0')
			return 0;
		start = p + 1;
	}
}

/* Length of the first element of a valid path. */
static size_t top_len(const char *path)
{
	return strcspn(path, "/");
}

/* Whether name is the first element of one of files. */
static bool is_top_name(const struct writer_file *files, size_t nfiles, const char *name)
{
	size_t len = strlen(name);

	for (size_t i = 0; i < nfiles; i++)
		if (top_len(files[i].path) == len && !memcmp(files[i].path, name, len))
			return true;
	return false;
}

/* Paths valid, modes in range, no duplicates, no file that is also a directory. */
static int check_files(const struct writer_file *files, size_t nfiles, struct err *err)
{
	if (nfiles > MAX_FILES)
		return err_set(err, ERR_INVALID, EINVAL, "%zu files, more than %d", nfiles,
			       MAX_FILES);
	for (size_t i = 0; i < nfiles; i++) {
		if (writer_path_valid(files[i].path) < 0)
			return err_set(err, ERR_INVALID, EINVAL, "invalid file path \"%.*s\"",
				       CUT(files[i].path ? files[i].path : "(null)"));
		if (files[i].mode > 0777)
			return err_set(err, ERR_INVALID, EINVAL, "file %.*s: mode %o out of range",
				       CUT(files[i].path), (unsigned)files[i].mode);
		if (!files[i].contents && files[i].len)
			return err_set(err, ERR_INVALID, EINVAL, "file %.*s: no contents",
				       CUT(files[i].path));
	}
	for (size_t i = 0; i < nfiles; i++) {
		size_t li = strlen(files[i].path);

		for (size_t j = 0; j < nfiles; j++) {
			if (i == j)
				continue;
			if (!strcmp(files[i].path, files[j].path) ||
			    (!strncmp(files[i].path, files[j].path, li) &&
			     files[j].path[li] == '/'))
				return err_set(err, ERR_INVALID, EINVAL,
					       "file path \"%.*s\" given twice or used as a "
					       "directory",
					       CUT(files[i].path));
		}
	}
	return 0;
}

/* Opens the target directory, refusing a symlink and, with root, anything outside root. */
static int open_target(const char *root, const char *target_dir, struct err *err)
{
	char proc[64], where[PATH_MAX + 1];
	char *rootreal = NULL;
	size_t rlen;
	ssize_t n;
	int fd, r;

	/* The driver sends absolute paths; a relative one would mean our own cwd. */
	if (root && target_dir[0] != '/')
		return err_set(err, ERR_INVALID, EINVAL, "target %.*s is not an absolute path",
			       CUT(target_dir));
	fd = open(target_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		if (r == -ELOOP || r == -ENOTDIR)
			return err_set(err, ERR_INVALID, -r,
				       "target %.*s is a symlink or not a directory",
				       CUT(target_dir));
		return err_set(err, ERR_INVALID, -r, "opening target %.*s: %s", CUT(target_dir),
			       strerror(-r));
	}
	if (!root)
		return fd;

	/* Where the opened fd really is, after every symlink on the way. */
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	n = readlink(proc, where, sizeof(where) - 1);
	rootreal = realpath(root, NULL);
	if (n < 0 || !rootreal) {
		r = err_set(err, ERR_INTERNAL, errno ? errno : EIO,
			    "resolving target %.*s or root %.*s", CUT(target_dir), CUT(root));
		goto fail;
	}
	where[n] = '\0';
	rlen = strlen(rootreal);
	if (rlen == 1)
		rlen = 0; /* root "/" */
	if (strncmp(where, rootreal, rlen) != 0 || where[rlen] != '/' || where[rlen + 1] == '\0') {
		r = err_set(err, ERR_PERMISSION, EPERM, "target %.*s is not under %.*s",
			    CUT(target_dir), CUT(root));
		goto fail;
	}
	free(rootreal);
	return fd;

fail:
	free(rootreal);
	close(fd);
	return r;
}

/*
 * Reads "..data" into buf when it names a sibling directory of ours (one
 * element starting with ".."). Returns false when there is none, or it is
 * something we did not make (such as a link to an absolute path).
 */
static bool read_data_link(int dfd, char *buf, size_t size)
{
	ssize_t n = readlinkat(dfd, DATA_LINK, buf, size - 1);

	if (n <= 2)
		return false;
	buf[n] = '\0';
	return buf[0] == '.' && buf[1] == '.' && !strchr(buf, '/') && strcmp(buf, DATA_LINK) &&
	       strcmp(buf, DATA_TMP_LINK) && strcmp(buf, USER_TMP_LINK);
}

/*
 * Walks to the directory that holds path's last element, from base, never
 * following a symlink; with create, makes missing directories 0755.
 * Returns a new directory fd (caller closes) with *ret_leaf pointing into
 * path, or -errno.
 */
static int open_parent(int base, const char *path, bool create, const char **ret_leaf)
{
	char elem[MAX_ELEMENT + 1];
	const char *p = path, *slash;
	int cur, next;

	cur = openat(base, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cur < 0)
		return -errno;
	while ((slash = strchr(p, '/'))) {
		memcpy(elem, p, (size_t)(slash - p));
		elem[slash - p] = '\0';
		if (create) {
			if (mkdirat(cur, elem, 0755) == 0)
				changed();
			else if (errno != EEXIST)
				goto fail;
		}
		next = openat(cur, elem, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (next < 0)
			goto fail;
		close(cur);
		cur = next;
		if (create && fchmod(cur, 0755) < 0)
			goto fail;
		p = slash + 1;
	}
	*ret_leaf = p;
	return cur;

fail:
	next = -errno;
	close(cur);
	return next;
}

/* Whether the file at path under base has exactly these bytes and mode. */
static bool same_file(int base, const struct writer_file *f)
{
	uint8_t buf[65536];
	const char *leaf;
	struct stat st;
	size_t off = 0;
	bool same = false;
	ssize_t n;
	int dir, fd = -1;

	dir = open_parent(base, f->path, false, &leaf);
	if (dir < 0)
		return false;
	fd = openat(dir, leaf, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	close(dir);
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    (st.st_mode & 07777) != f->mode || (size_t)st.st_size != f->len)
		goto out;
	while (off < f->len) {
		n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0 || (size_t)n > f->len - off || memcmp(buf, f->contents + off, (size_t)n))
			goto out;
		off += (size_t)n;
	}
	same = true;
out:
	if (fd >= 0)
		close(fd);
	return same;
}

/* Counts the non-directories under dirfd; -1 on error or when too deep. */
static long count_files(int dirfd, int depth)
{
	struct dirent *e;
	long count = 0, sub;
	DIR *dir;
	int fd;

	if (depth > MAX_DEPTH)
		return -1;
	fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || !(dir = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	while (count >= 0 && (e = readdir(dir))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (e->d_type == DT_UNKNOWN) {
			struct stat st;

			if (fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
				count = -1;
				break;
			}
			e->d_type = S_ISDIR(st.st_mode) ? DT_DIR : DT_REG;
		}
		if (e->d_type == DT_DIR) {
			int sfd =
			    openat(fd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

			sub = sfd < 0 ? -1 : count_files(sfd, depth + 1);
			if (sfd >= 0)
				close(sfd);
			count = sub < 0 ? -1 : count + sub;
		} else {
			count++;
		}
	}
	closedir(dir);
	return count;
}

/* Whether "name -> ..data/name" is in place. */
static bool user_link_ok(int dfd, const char *name, size_t len)
{
	char want[MAX_ELEMENT + 16], have[MAX_ELEMENT + 16], elem[MAX_ELEMENT + 1];
	ssize_t n;

	memcpy(elem, name, len);
	elem[len] = '\0';
	snprintf(want, sizeof(want), DATA_LINK "/%s", elem);
	n = readlinkat(dfd, elem, have, sizeof(have) - 1);
	if (n < 0)
		return false;
	have[n] = '\0';
	return !strcmp(want, have);
}

/* Whether the current ..data holds exactly files, and every user link is in place. */
static bool unchanged(int dfd, const char *old, const struct writer_file *files, size_t nfiles)
{
	bool same = false;
	int odfd;

	odfd = openat(dfd, old, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (odfd < 0)
		return false;
	if (count_files(odfd, 0) != (long)nfiles)
		goto out;
	for (size_t i = 0; i < nfiles; i++)
		if (!same_file(odfd, &files[i]) ||
		    !user_link_ok(dfd, files[i].path, top_len(files[i].path)))
			goto out;
	same = true;
out:
	close(odfd);
	return same;
}

/* Removes name under dirfd, recursively, never following a symlink. */
static int remove_tree(int dirfd, const char *name, int depth)
{
	struct dirent *e;
	struct stat st;
	DIR *dir;
	int fd, r = 0;

	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISDIR(st.st_mode)) {
		if (unlinkat(dirfd, name, 0) < 0)
			return errno != ENOENT ? -errno : 0;
		changed();
		return 0;
	}
	if (depth > MAX_DEPTH)
		return -ELOOP;
	fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	dir = fdopendir(fd);
	if (!dir) {
		r = -errno;
		close(fd);
		return r;
	}
	while (r == 0 && (e = readdir(dir))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		r = remove_tree(fd, e->d_name, depth + 1);
	}
	closedir(dir);
	if (r == 0 && unlinkat(dirfd, name, AT_REMOVEDIR) < 0)
		r = -errno;
	if (r == 0)
		changed();
	return r;
}

/*
 * Removes what a killed write left: "..<timestamp>" directories that ..data
 * does not name (partial files the pod can see) and the temporary links.
 * The caller holds the target's lock, so none of them is another write's
 * in the making.
 */
static void remove_leftovers(int dfd, const char *keep)
{
	struct dirent *e;
	struct stat st;
	DIR *dir;
	int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		return;
	dir = fdopendir(fd);
	if (!dir) {
		close(fd);
		return;
	}
	while ((e = readdir(dir))) {
		const char *n = e->d_name;

		if (!strcmp(n, DATA_TMP_LINK) || !strcmp(n, USER_TMP_LINK)) {
			if (fstatat(dfd, n, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode) &&
			    unlinkat(dfd, n, 0) == 0)
				changed();
			continue;
		}
		/* Ours are "..YYYY_MM_DD_HH_MM_SS.<random>": ".." and a digit. */
		if (n[0] != '.' || n[1] != '.' || n[2] < '0' || n[2] > '9')
			continue;
		if (keep && !strcmp(n, keep))
			continue;
		if (fstatat(dfd, n, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode))
			continue;
		remove_tree(dfd, n, 0);
	}
	closedir(dir);
}

/* Creates the new "..<timestamp>.<random>" directory, mode 0755 whatever the umask. */
static int make_data_dir(int dfd, char *name, size_t size, int *ret_fd)
{
	struct tm tm;
	time_t now = time(NULL);
	uint32_t rnd;
	int fd;

	gmtime_r(&now, &tm);
	for (int attempt = 0; attempt < 16; attempt++) {
		size_t n = strftime(name, size, "..%Y_%m_%d_%H_%M_%S.", &tm);

		if (n == 0 || getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd))
			return -EIO;
		snprintf(name + n, size - n, "%09u", (unsigned)(rnd % 1000000000u));
		if (mkdirat(dfd, name, 0700) < 0) {
			if (errno == EEXIST)
				continue;
			return -errno;
		}
		changed();
		fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		if (fchmod(fd, 0755) < 0) {
			int r = -errno;

			close(fd);
			return r;
		}
		*ret_fd = fd;
		return 0;
	}
	return -EEXIST;
}

/* Writes one file under the new directory: O_EXCL, all bytes, exact mode, fsync. */
static int write_file(int ndfd, const struct writer_file *f)
{
	const char *leaf;
	size_t off = 0;
	ssize_t n;
	int dir, fd = -1, r = 0;

	dir = open_parent(ndfd, f->path, true, &leaf);
	if (dir < 0)
		return dir;
	fd = openat(dir, leaf, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		r = -errno;
		goto out;
	}
	changed();
	while (off < f->len) {
		n = write(fd, f->contents + off, f->len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			r = n < 0 ? -errno : -EIO;
			goto out;
		}
		off += (size_t)n;
	}
	if (fchmod(fd, f->mode) < 0 || fsync(fd) < 0 || fsync(dir) < 0)
		r = -errno;
	else
		changed();
out:
	if (fd >= 0)
		close(fd);
	close(dir);
	return r;
}

/* Points link at target by a temporary symlink renamed over it. */
static int swap_link(int dfd, const char *tmp, const char *target, const char *link)
{
	struct stat st;
	int r;

	if (unlinkat(dfd, tmp, 0) == 0)
		changed();
	else if (errno != ENOENT)
		return -errno;
	if (symlinkat(target, dfd, tmp) < 0)
		return -errno;
	changed();
	/* rename(2) replaces a file or symlink, not a directory: clear one first. */
	if (fstatat(dfd, link, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) {
		r = remove_tree(dfd, link, 0);
		if (r < 0)
			goto fail;
	}
	if (renameat(dfd, tmp, dfd, link) < 0) {
		r = -errno;
		goto fail;
	}
	changed();
	return 0;
fail:
	unlinkat(dfd, tmp, 0);
	return r;
}

/*
 * Removes the links of names the set no longer has: symlinks "name ->
 * ..data/name", exactly as we make them, whatever set they belonged to (a
 * killed write may have left one). Anything else is not ours to delete.
 */
static void remove_stale_links(int dfd, const struct writer_file *files, size_t nfiles)
{
	struct dirent *e;
	DIR *dir;
	int fd;

	fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return;
	dir = fdopendir(fd);
	if (!dir) {
		close(fd);
		return;
	}
	while ((e = readdir(dir))) {
		size_t len = strlen(e->d_name);

		if (e->d_name[0] == '.' || len > MAX_ELEMENT ||
		    is_top_name(files, nfiles, e->d_name))
			continue; /* ".", "..", our own "..data" links, and the set's names */
		if (user_link_ok(dfd, e->d_name, len) && unlinkat(dfd, e->d_name, 0) == 0)
			changed();
	}
	closedir(dir);
}

/* Puts "name -> ..data/name" in place for each top-level name of files. */
static int link_names(int dfd, const char *target_dir, const struct writer_file *files,
		      size_t nfiles, struct err *err)
{
	char elem[MAX_ELEMENT + 1], link[MAX_ELEMENT + 16];
	int r;

	for (size_t i = 0; i < nfiles; i++) {
		size_t len = top_len(files[i].path);

		if (user_link_ok(dfd, files[i].path, len))
			continue;
		memcpy(elem, files[i].path, len);
		elem[len] = '\0';
		snprintf(link, sizeof(link), DATA_LINK "/%s", elem);
		r = swap_link(dfd, USER_TMP_LINK, link, elem);
		if (r < 0)
			return err_set(err, ERR_INTERNAL, -r, "linking %s in %.*s: %s", elem,
				       CUT(target_dir), strerror(-r));
	}
	return 0;
}

int writer_write(const char *root, const char *target_dir, const struct writer_file *files,
		 size_t nfiles, struct err *err)
{
	char old[NAME_MAX + 1], new[NAME_MAX + 1] = "";
	bool have_old, created = false;
	int dfd = -1, ndfd = -1, r;

	if (!target_dir || (!files && nfiles))
		return err_set(err, ERR_INVALID, EINVAL, "no target directory or files");
	r = check_files(files, nfiles, err);
	if (r < 0)
		return r;
	dfd = open_target(root, target_dir, err);
	if (dfd < 0)
		return dfd;
	/* One write at a time per target: concurrent Mounts of one pod queue here. */
	while ((r = flock(dfd, LOCK_EX)) < 0 && errno == EINTR)
		;
	if (r < 0) {
		r = err_set(err, ERR_INTERNAL, errno, "locking %.*s: %s", CUT(target_dir),
			    strerror(errno));
		goto out;
	}

	have_old = read_data_link(dfd, old, sizeof(old));
	remove_leftovers(dfd, have_old ? old : NULL);
	if (have_old && unchanged(dfd, old, files, nfiles)) {
		r = 0;
		goto out;
	}

	r = make_data_dir(dfd, new, sizeof(new), &ndfd);
	if (r < 0) {
		err_set(err, ERR_INTERNAL, -r, "creating a data directory in %.*s: %s",
			CUT(target_dir), strerror(-r));
		goto out;
	}
	created = true;
	for (size_t i = 0; i < nfiles; i++) {
		r = write_file(ndfd, &files[i]);
		if (r < 0) {
			err_set(err, ERR_INTERNAL, -r, "writing %.*s in %.*s: %s",
				CUT(files[i].path), CUT(target_dir), strerror(-r));
			goto out;
		}
	}
	if (fsync(ndfd) < 0) {
		r = err_set(err, ERR_INTERNAL, errno, "fsync of the data directory: %s",
			    strerror(errno));
		goto out;
	}

	/*
	 * Links before the switch: a new name's link dangles until ..data names
	 * a set that has it, so ..data never appears without all of its links.
	 */
	r = link_names(dfd, target_dir, files, nfiles, err);
	if (r < 0)
		goto out;

	/* The switch: from here on readers see the new set. */
	r = swap_link(dfd, DATA_TMP_LINK, new, DATA_LINK);
	if (r < 0) {
		err_set(err, ERR_INTERNAL, -r, "swapping %s in %.*s: %s", DATA_LINK,
			CUT(target_dir), strerror(-r));
		goto out;
	}
	created = false;

	remove_stale_links(dfd, files, nfiles);
	if (have_old && strcmp(old, new) != 0) {
		r = remove_tree(dfd, old, 0);
		if (r < 0) {
			/* The new set is published; a leftover directory is only untidy. */
			err_set(err, ERR_INTERNAL, -r, "removing the old data directory: %s",
				strerror(-r));
			goto out;
		}
	}
	if (fsync(dfd) < 0) {
		r = err_set(err, ERR_INTERNAL, errno, "fsync of %.*s: %s", CUT(target_dir),
			    strerror(errno));
		goto out;
	}
	r = 0;

out:
	if (ndfd >= 0)
		close(ndfd);
	if (created)
		remove_tree(dfd, new, 0);
	/* Closing the last fd of the open file description releases the lock. */
	close(dfd);
	return r;
}
