/*
 * cli_prepare: `prepare`, the DaemonSet's init container, run as root with
 * only CAP_CHOWN before the provider starts as an unprivileged user. It does
 * the two things that need root, so the image needs no shell:
 *
 *   - gives the provider's group write access to the driver's shared provider
 *     directory (chgrp, then g+rwx; the owner and the other bits stay), so the
 *     provider can create and replace its socket there;
 *   - copies the credentials out of the root-owned Secret volume into a
 *     directory of the pod's own, owned by the provider's user, mode 0400.
 *
 * Every input is checked before anything changes: bad input changes nothing.
 * Each copy is a new file renamed over the old one, so a reader never sees a
 * half-written credential. Must never print or log a credential's content.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "err.h"
#include "wipe.h"

#define PROG	     "maskinporten-csi-provider prepare"
#define FILES_MAX    16
#define FILE_MAX     (64 * 1024)
#define NAME_MAX_LEN 128
#define TMP_PREFIX   ".prepare."
#define ID_MAX	     2147483647L

static const char usage[] =
    "Usage: maskinporten-csi-provider prepare --user UID:GID [--socket-dir DIR]\n"
    "           [--copy-from DIR --copy-to DIR (--file NAME | --optional-file NAME)...]\n"
    "\n"
    "The DaemonSet's init container: the steps that need root before `serve` runs as\n"
    "UID:GID (numbers, not 0). Needs only CAP_CHOWN (and CAP_FOWNER when DIR is\n"
    "not root's).\n"
    "\n"
    "--socket-dir DIR   give group GID write access to DIR, the driver's provider\n"
    "                   directory (chgrp GID, chmod g+rwx; owner and other bits stay)\n"
    "--copy-from DIR    a Secret volume: copy its files named by --file and\n"
    "--copy-to DIR      --optional-file into DIR, owned by UID:GID, mode 0400\n"
    "--file NAME        a file that must be in --copy-from\n"
    "--optional-file NAME  copied when present; when absent, removed from --copy-to\n"
    "\n"
    "Every input is checked before anything is changed; running it again gives the\n"
    "same result.\n";

/* One credential file: SECRET content while held, wiped by free_files(). */
struct file {
	const char *name;
	bool optional;
	bool present;
	unsigned char *data;
	size_t len;
};

struct prepare {
	long uid, gid;
	const char *socket_dir;
	const char *from, *to;
	struct file files[FILES_MAX];
	int nfiles;
};

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints a usage error and returns the usage exit status, 2. */
static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs(PROG ": ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs(" (see '" PROG " --help')\n", stderr);
	return 2;
}

/* A positive decimal id up to 2^31-1, not 0. */
static int parse_id(const char *s, size_t len, long *ret)
{
	long v = 0;

	if (len == 0 || len > 10)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		v = v * 10 + (s[i] - '0');
	}
	if (v < 1 || v > ID_MAX)
		return -EINVAL;
	*ret = v;
	return 0;
}

/* "UID:GID", both numeric and not root. */
static int parse_user(const char *s, long *ret_uid, long *ret_gid)
{
	const char *colon = strchr(s, ':');
	long uid, gid;

	if (!colon || parse_id(s, (size_t)(colon - s), &uid) < 0 ||
	    parse_id(colon + 1, strlen(colon + 1), &gid) < 0)
		return -EINVAL;
	*ret_uid = uid;
	*ret_gid = gid;
	return 0;
}

/*
 * A file name as a Secret key may spell it, and nothing that could leave the
 * directory or hide in it: [A-Za-z0-9_.-], not starting with a dot.
 */
static bool name_ok(const char *name)
{
	size_t len = strlen(name);

	if (len == 0 || len > NAME_MAX_LEN || name[0] == '.')
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = name[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '.' || c == '-'))
			return false;
	}
	return true;
}

static int add_file(struct prepare *p, const char *name, bool optional)
{
	if (!name_ok(name))
		return usage_error("bad file name '%s': use letters, digits, '_', '.' and '-', "
				   "not starting with '.'",
				   name);
	if (p->nfiles == FILES_MAX)
		return usage_error("more than %d files", FILES_MAX);
	for (int i = 0; i < p->nfiles; i++)
		if (!strcmp(p->files[i].name, name))
			return usage_error("file '%s' named twice", name);
	p->files[p->nfiles++] = (struct file){ .name = name, .optional = optional };
	return 0;
}

/* Fills p from argv. Returns 0, 1 after --help, or 2 on a usage error (printed). */
static int parse_args(struct prepare *p, int argc, char **argv)
{
	enum { O_USER = 1, O_SOCKET_DIR, O_FROM, O_TO, O_FILE, O_OPTIONAL };
	static const struct option longopts[] = {
		{ "user", required_argument, NULL, O_USER },
		{ "socket-dir", required_argument, NULL, O_SOCKET_DIR },
		{ "copy-from", required_argument, NULL, O_FROM },
		{ "copy-to", required_argument, NULL, O_TO },
		{ "file", required_argument, NULL, O_FILE },
		{ "optional-file", required_argument, NULL, O_OPTIONAL },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *user = NULL;
	int c, r;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			fputs(usage, stdout);
			return 1;
		case O_USER:
			user = optarg;
			break;
		case O_SOCKET_DIR:
			p->socket_dir = optarg;
			break;
		case O_FROM:
			p->from = optarg;
			break;
		case O_TO:
			p->to = optarg;
			break;
		case O_FILE:
		case O_OPTIONAL:
			r = add_file(p, optarg, c == O_OPTIONAL);
			if (r)
				return r;
			break;
		default:
			return usage_error("unknown flag or missing value: %s",
					   optind > 1 && optind - 1 < argc ? argv[optind - 1]
									   : "?");
		}
	}
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	if (!user)
		return usage_error("missing --user UID:GID");
	if (parse_user(user, &p->uid, &p->gid) < 0)
		return usage_error("--user '%s': want UID:GID, two numbers from 1 to 2147483647",
				   user);
	if (!p->from != !p->to)
		return usage_error("--copy-from and --copy-to go together");
	if (p->from && p->nfiles == 0)
		return usage_error("--copy-from without --file or --optional-file");
	if (!p->from && p->nfiles > 0)
		return usage_error("--file and --optional-file need --copy-from and --copy-to");
	if (!p->socket_dir && !p->from)
		return usage_error("nothing to do: give --socket-dir, --copy-from or both");
	return 0;
}

/* A directory, opened without following a symlink in its last component. */
static int open_dir(const char *path, const char *what, int *ret_fd, struct err *err)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	struct stat st;

	if (fd < 0) {
		int e = errno;

		if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode))
			return err_set(err, ERR_INVALID, e, "%s %s: a symlink, refused", what,
				       path);
		return err_set(err, ERR_INVALID, e, "%s %s: %s", what, path, strerror(e));
	}
	*ret_fd = fd;
	return 0;
}

/*
 * Reads one credential into f. A Secret volume's files are symlinks into its
 * ..data directory, so the last link is followed, but only a regular,
 * non-empty file of at most FILE_MAX bytes is taken. A missing optional file
 * is noted, not an error.
 */
static int read_file(int dfd, const char *dir, struct file *f, struct err *err)
{
	unsigned char *buf = NULL;
	struct stat st;
	size_t len = 0;
	ssize_t n;
	int fd = -1, r;

	fd = openat(dfd, f->name, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0 && errno == ENOENT && f->optional) {
		f->present = false;
		return 0;
	}
	if (fd < 0) {
		r = err_set(err, ERR_INVALID, errno, "%s/%s: %s", dir, f->name, strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		r = err_set(err, ERR_INVALID, EINVAL, "%s/%s is not a regular file", dir, f->name);
		goto out;
	}
	if (st.st_size == 0 || st.st_size > FILE_MAX) {
		r = err_set(err, ERR_INVALID, EFBIG, "%s/%s is %s (a credential is 1 to %d bytes)",
			    dir, f->name, st.st_size == 0 ? "empty" : "too large", FILE_MAX);
		goto out;
	}
	buf = malloc(FILE_MAX + 1);
	if (!buf) {
		r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto out;
	}
	/* The limit holds whatever fstat said, should the file grow under us. */
	while (len <= FILE_MAX && (n = read(fd, buf + len, FILE_MAX + 1 - len)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = err_set(err, ERR_INVALID, errno, "cannot read %s/%s: %s", dir, f->name,
				    strerror(errno));
			goto out;
		}
		len += (size_t)n;
	}
	if (len == 0 || len > FILE_MAX) {
		r = err_set(err, ERR_INVALID, EFBIG, "%s/%s changed while read", dir, f->name);
		goto out;
	}
	f->present = true;
	f->data = buf;
	f->len = len;
	buf = NULL;
	r = 0;
out:
	if (buf) {
		wipe(buf, FILE_MAX + 1);
		free(buf);
	}
	if (fd >= 0)
		close(fd);
	return r;
}

/* What a copy would replace must be a file (or a symlink, replaced as a name). */
static int check_target(const struct prepare *p, int dfd, const struct file *f, struct err *err)
{
	struct stat st;

	if (fstatat(dfd, f->name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		if (errno == ENOENT)
			return 0;
		return err_set(err, ERR_INVALID, errno, "%s/%s: %s", p->to, f->name,
			       strerror(errno));
	}
	if (S_ISDIR(st.st_mode))
		return err_set(err, ERR_INVALID, EISDIR, "%s/%s is a directory, not a file", p->to,
			       f->name);
	return 0;
}

static void free_files(struct prepare *p)
{
	for (int i = 0; i < p->nfiles; i++) {
		if (p->files[i].data) {
			wipe(p->files[i].data, p->files[i].len);
			free(p->files[i].data);
			p->files[i].data = NULL;
		}
	}
}

/* chgrp GID, then g+rwx, keeping every other bit (owner, others, setgid, sticky). */
static int prepare_socket_dir(const struct prepare *p, int fd, struct err *err)
{
	struct stat st;
	mode_t mode;

	if (fstat(fd, &st) < 0)
		return err_set(err, ERR_INTERNAL, errno, "%s: %s", p->socket_dir, strerror(errno));
	if (fchown(fd, (uid_t)-1, (gid_t)p->gid) < 0)
		return err_set(err, ERR_PERMISSION, errno, "chgrp %ld %s: %s (needs CAP_CHOWN)",
			       p->gid, p->socket_dir, strerror(errno));
	mode = (st.st_mode & 07777) | S_IRWXG;
	if (fchmod(fd, mode) < 0)
		return err_set(err, ERR_PERMISSION, errno,
			       "chmod g+rwx %s: %s (needs CAP_FOWNER when it is not root's)",
			       p->socket_dir, strerror(errno));
	printf("prepare: %s: group %ld, mode %04o\n", p->socket_dir, p->gid, (unsigned)mode);
	return 0;
}

static int write_all(int fd, const unsigned char *data, size_t len)
{
	size_t off = 0;

	while (off < len) {
		ssize_t n = write(fd, data + off, len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		off += (size_t)n;
	}
	return 0;
}

/*
 * Publishes one file in the destination: a new temporary file, written,
 * mode 0400, owned by UID:GID, synced, then renamed over NAME. Mode first:
 * once the file is someone else's, changing it would need CAP_FOWNER, which
 * the init container does not have.
 */
static int copy_file(const struct prepare *p, int dfd, const struct file *f, struct err *err)
{
	char tmp[sizeof(TMP_PREFIX) + NAME_MAX_LEN];
	int fd = -1, r;

	snprintf(tmp, sizeof(tmp), TMP_PREFIX "%s", f->name);
	/* Left behind by a run that died: ours to remove. */
	if (unlinkat(dfd, tmp, 0) < 0 && errno != ENOENT) {
		r = err_set(err, ERR_INTERNAL, errno, "cannot remove %s/%s: %s", p->to, tmp,
			    strerror(errno));
		goto out;
	}
	fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0400);
	if (fd < 0) {
		r = err_set(err, ERR_INTERNAL, errno, "cannot create %s/%s: %s", p->to, tmp,
			    strerror(errno));
		goto out;
	}
	r = write_all(fd, f->data, f->len);
	if (r == 0 && fchmod(fd, 0400) < 0)
		r = -errno;
	if (r == 0 && fchown(fd, (uid_t)p->uid, (gid_t)p->gid) < 0)
		r = -errno;
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	if (r < 0) {
		r = err_set(err, ERR_INTERNAL, -r, "writing %s/%s failed: %s", p->to, f->name,
			    strerror(-r));
		goto out;
	}
	if (renameat(dfd, tmp, dfd, f->name) < 0) {
		r = err_set(err, ERR_INTERNAL, errno, "cannot replace %s/%s: %s", p->to, f->name,
			    strerror(errno));
		goto out;
	}
	printf("prepare: %s/%s: copied from %s, owner %ld:%ld, mode 0400\n", p->to, f->name,
	       p->from, p->uid, p->gid);
	r = 0;
out:
	if (fd >= 0) {
		close(fd);
		if (r < 0)
			unlinkat(dfd, tmp, 0);
	}
	return r;
}

/* An optional file that the Secret no longer has must not outlive it here. */
static int remove_file(const struct prepare *p, int dfd, const struct file *f, struct err *err)
{
	if (unlinkat(dfd, f->name, 0) < 0) {
		if (errno == ENOENT)
			return 0;
		return err_set(err, ERR_INTERNAL, errno, "cannot remove %s/%s: %s", p->to, f->name,
			       strerror(errno));
	}
	printf("prepare: %s/%s: removed, %s has no %s\n", p->to, f->name, p->from, f->name);
	return 0;
}

static int run(struct prepare *p, struct err *err)
{
	int sfd = -1, from_fd = -1, to_fd = -1, r;

	/* Check everything first: bad input must change nothing. */
	if (p->socket_dir) {
		r = open_dir(p->socket_dir, "--socket-dir", &sfd, err);
		if (r < 0)
			goto out;
	}
	if (p->from) {
		r = open_dir(p->from, "--copy-from", &from_fd, err);
		if (r < 0)
			goto out;
		r = open_dir(p->to, "--copy-to", &to_fd, err);
		if (r < 0)
			goto out;
		for (int i = 0; i < p->nfiles; i++) {
			r = read_file(from_fd, p->from, &p->files[i], err);
			if (r == 0)
				r = check_target(p, to_fd, &p->files[i], err);
			if (r < 0)
				goto out;
		}
	}

	if (sfd >= 0) {
		r = prepare_socket_dir(p, sfd, err);
		if (r < 0)
			goto out;
	}
	for (int i = 0; i < p->nfiles; i++) {
		const struct file *f = &p->files[i];

		r = f->present ? copy_file(p, to_fd, f, err) : remove_file(p, to_fd, f, err);
		if (r < 0)
			goto out;
	}
	if (to_fd >= 0 && fsync(to_fd) < 0) {
		r = err_set(err, ERR_INTERNAL, errno, "%s: %s", p->to, strerror(errno));
		goto out;
	}
	r = 0;
out:
	if (sfd >= 0)
		close(sfd);
	if (from_fd >= 0)
		close(from_fd);
	if (to_fd >= 0)
		close(to_fd);
	return r;
}

int cmd_prepare(int argc, char **argv)
{
	struct prepare p = { 0 };
	struct err err = { 0 };
	int r;

	r = parse_args(&p, argc, argv);
	if (r == 1)
		return 0;
	if (r)
		return r;
	r = run(&p, &err);
	free_files(&p);
	if (fflush(stdout) != 0 && r == 0)
		r = err_set(&err, ERR_INTERNAL, EIO, "cannot write to stdout");
	if (r < 0) {
		fprintf(stderr, PROG ": %s\n", err.msg);
		return 1;
	}
	return 0;
}
