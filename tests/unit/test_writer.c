/*
 * test_writer: the atomic writer's layout, swaps, no-op rewrites, path rules,
 * and that symlinks planted in or around the target never redirect a write.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "writer.h"

static char base[64];

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static int setup(void **state)
{
	snprintf(base, sizeof(base), "/tmp/mcp-writer-XXXXXX");
	assert_non_null(mkdtemp(base));
	return 0;
}

static int teardown(void **state)
{
	nftw(base, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}

/* base/name as a path, in a rotating set of static buffers. */
static const char *at(const char *name)
{
	static char bufs[8][640];
	static int i;
	char *b = bufs[i++ % 8];

	snprintf(b, 640, "%s/%s", base, name);
	return b;
}

static void make_dir(const char *name)
{
	assert_int_equal(mkdir(at(name), 0755), 0);
}

static void put(const char *name, const char *contents)
{
	int fd = open(at(name), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, contents, strlen(contents)), (ssize_t)strlen(contents));
	close(fd);
}

/* Reads base/name (following symlinks) into buf. */
static const char *get(const char *name, char *buf, size_t size)
{
	int fd = open(at(name), O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return NULL;
	n = read(fd, buf, size - 1);
	close(fd);
	assert_true(n >= 0);
	buf[n] = '\0';
	return buf;
}

static const char *link_of(const char *name, char *buf, size_t size)
{
	ssize_t n = readlink(at(name), buf, size - 1);

	if (n < 0)
		return NULL;
	buf[n] = '\0';
	return buf;
}

/* Entries in base/name, without "." and "..". */
static int count_entries(const char *name)
{
	DIR *d = opendir(at(name));
	struct dirent *e;
	int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

static mode_t mode_of(const char *name)
{
	struct stat st;

	assert_int_equal(stat(at(name), &st), 0);
	return st.st_mode & 07777;
}

#define FILE_(p, m, s)                                                                             \
	{                                                                                          \
		.path = (p), .mode = (m), .contents = (const uint8_t *)(s), .len = strlen(s)       \
	}

static void test_path_rules(void **state)
{
	static const char *const good[] = { "a", "a/b", "a..b", "a/..b", ".a", "a/.b", "x/y/z" };
	static const char *const bad[] = { "",	   "/a",   "..a", "..", ".",   "a/../b",
					   "a/..", "a//b", "./a", "a/", "a/.", "a/./b" };
	char longelem[300], longpath[4200];

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		assert_int_equal(writer_path_valid(good[i]), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(writer_path_valid(bad[i]), -EINVAL);
	assert_int_equal(writer_path_valid(NULL), -EINVAL);

	memset(longelem, 'e', 255);
	longelem[255] = '\0';
	assert_int_equal(writer_path_valid(longelem), 0);
	longelem[255] = 'e';
	longelem[256] = '\0';
	assert_int_equal(writer_path_valid(longelem), -EINVAL);

	for (size_t i = 0; i < 4096; i += 2) {
		longpath[i] = 'p';
		longpath[i + 1] = '/';
	}
	longpath[4095] = 'p';
	longpath[4096] = '\0';
	assert_int_equal(writer_path_valid(longpath), 0);
	longpath[4096] = 'p';
	longpath[4097] = '\0';
	assert_int_equal(writer_path_valid(longpath), -EINVAL);
}

static void test_layout(void **state)
{
	struct writer_file files[] = {
		FILE_("ID", 0644, "client-1"),
		FILE_("JWK", 0600, "{\"secret\":1}"),
		FILE_("sub/dir/c", 0640, "nested"),
	};
	struct err err = { 0 };
	char buf[256], data[256], path[300];

	make_dir("t");
	assert_int_equal(writer_write(NULL, at("t"), files, 3, &err), 0);

	assert_non_null(link_of("t/..data", data, sizeof(data)));
	assert_memory_equal(data, "..", 2);
	assert_null(strchr(data, '/'));
	assert_string_equal(link_of("t/ID", buf, sizeof(buf)), "..data/ID");
	assert_string_equal(link_of("t/JWK", buf, sizeof(buf)), "..data/JWK");
	assert_string_equal(link_of("t/sub", buf, sizeof(buf)), "..data/sub");
	assert_string_equal(get("t/ID", buf, sizeof(buf)), "client-1");
	assert_string_equal(get("t/JWK", buf, sizeof(buf)), "{\"secret\":1}");
	assert_string_equal(get("t/sub/dir/c", buf, sizeof(buf)), "nested");
	assert_int_equal(mode_of("t/JWK"), 0600);
	assert_int_equal(mode_of("t/sub/dir/c"), 0640);
	snprintf(path, sizeof(path), "t/%s", data);
	assert_int_equal(mode_of(path), 0755);
	/* ..data, the timestamped directory and three links: nothing else. */
	assert_int_equal(count_entries("t"), 5);
}

static void test_swap_removes_stale(void **state)
{
	struct writer_file first[] = { FILE_("a", 0644, "one"), FILE_("b", 0644, "bee") };
	struct writer_file second[] = { FILE_("a", 0644, "two"), FILE_("c", 0600, "sea") };
	struct err err = { 0 };
	char buf[300], old[256], now[256];
	struct stat st;

	make_dir("t");
	assert_int_equal(writer_write(NULL, at("t"), first, 2, &err), 0);
	assert_non_null(link_of("t/..data", old, sizeof(old)));
	assert_int_equal(writer_write(NULL, at("t"), second, 2, &err), 0);
	assert_non_null(link_of("t/..data", now, sizeof(now)));
	assert_string_not_equal(old, now);

	assert_string_equal(get("t/a", buf, sizeof(buf)), "two");
	assert_string_equal(get("t/c", buf, sizeof(buf)), "sea");
	assert_int_equal(lstat(at("t/b"), &st), -1);
	snprintf(buf, sizeof(buf), "t/%s", old);
	assert_int_equal(lstat(at(buf), &st), -1);
	assert_int_equal(count_entries("t"), 4);
}

static void test_identical_rewrite_is_noop(void **state)
{
	struct writer_file files[] = { FILE_("a", 0644, "same"), FILE_("d/b", 0600, "also") };
	struct writer_file changed[] = { FILE_("a", 0644, "same"), FILE_("d/b", 0640, "also") };
	struct err err = { 0 };
	char before[256], after[256];
	struct stat st1, st2, st3;
	struct timespec pause = { 0, 20 * 1000000L };

	make_dir("t");
	assert_int_equal(writer_write(NULL, at("t"), files, 2, &err), 0);
	assert_int_equal(stat(at("t"), &st1), 0);
	assert_non_null(link_of("t/..data", before, sizeof(before)));
	nanosleep(&pause, NULL);
	assert_int_equal(writer_write(NULL, at("t"), files, 2, &err), 0);
	assert_int_equal(stat(at("t"), &st2), 0);
	assert_non_null(link_of("t/..data", after, sizeof(after)));
	assert_string_equal(before, after);
	assert_int_equal(st1.st_mtim.tv_sec, st2.st_mtim.tv_sec);
	assert_int_equal(st1.st_mtim.tv_nsec, st2.st_mtim.tv_nsec);

	/* A mode change alone is a change: the directory is rewritten. */
	nanosleep(&pause, NULL);
	assert_int_equal(writer_write(NULL, at("t"), changed, 2, &err), 0);
	assert_int_equal(stat(at("t"), &st3), 0);
	assert_non_null(link_of("t/..data", after, sizeof(after)));
	assert_string_not_equal(before, after);
	assert_true(st3.st_mtim.tv_sec != st1.st_mtim.tv_sec ||
		    st3.st_mtim.tv_nsec != st1.st_mtim.tv_nsec);
	assert_int_equal(mode_of("t/d/b"), 0640);
}

static void test_invalid_writes_nothing(void **state)
{
	struct writer_file bad_path[] = { FILE_("ok", 0644, "x"), FILE_("../escape", 0644, "x") };
	struct writer_file reserved[] = { FILE_("..data", 0644, "x") };
	struct writer_file dup[] = { FILE_("a", 0644, "x"), FILE_("a", 0644, "y") };
	struct writer_file clash[] = { FILE_("a", 0644, "x"), FILE_("a/b", 0644, "y") };
	struct writer_file bad_mode[] = { FILE_("a", 01777, "x") };
	struct err err = { 0 };

	make_dir("t");
	assert_int_equal(writer_write(NULL, at("t"), bad_path, 2, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "../escape"));
	assert_int_equal(writer_write(NULL, at("t"), reserved, 1, &err), -EINVAL);
	assert_int_equal(writer_write(NULL, at("t"), dup, 2, &err), -EINVAL);
	assert_int_equal(writer_write(NULL, at("t"), clash, 2, &err), -EINVAL);
	assert_int_equal(writer_write(NULL, at("t"), bad_mode, 1, &err), -EINVAL);
	assert_int_equal(count_entries("t"), 0);
	assert_int_equal(count_entries(""), 1);
}

static void test_target_symlink_refused(void **state)
{
	struct writer_file files[] = { FILE_("a", 0644, "x") };
	struct err err = { 0 };

	make_dir("real");
	assert_int_equal(symlink(at("real"), at("link")), 0);
	assert_true(writer_write(NULL, at("link"), files, 1, &err) < 0);
	assert_int_equal(count_entries("real"), 0);
	/* Not a directory at all. */
	put("file", "keep");
	assert_true(writer_write(NULL, at("file"), files, 1, &err) < 0);
}

static void test_target_outside_root(void **state)
{
	struct writer_file files[] = { FILE_("a", 0644, "x") };
	struct err err = { 0 };
	char buf[64];

	make_dir("root");
	make_dir("root/pod");
	make_dir("other");
	make_dir("other/x");
	assert_int_equal(writer_write(at("root"), at("other"), files, 1, &err), -EPERM);
	/* A symlinked parent that leads out of root is caught on the opened fd. */
	assert_int_equal(symlink(at("other"), at("root/escape")), 0);
	assert_int_equal(writer_write(at("root"), at("root/escape/x"), files, 1, &err), -EPERM);
	/* root itself is not a target. */
	assert_int_equal(writer_write(at("root"), at("root"), files, 1, &err), -EPERM);
	/* "rootother" shares a prefix with "root" but is not under it. */
	make_dir("rootother");
	assert_int_equal(writer_write(at("root"), at("rootother"), files, 1, &err), -EPERM);
	assert_int_equal(count_entries("other/x"), 0);
	assert_int_equal(count_entries("rootother"), 0);

	assert_int_equal(writer_write(at("root"), at("root/pod"), files, 1, &err), 0);
	assert_string_equal(get("root/pod/a", buf, sizeof(buf)), "x");
}

static void test_planted_symlinks(void **state)
{
	struct writer_file files[] = { FILE_("a", 0644, "new"), FILE_("victim", 0600, "mine") };
	struct err err = { 0 };
	char buf[256];

	make_dir("outside");
	put("outside/a", "outside-a");
	put("outside/keep", "keep");
	put("passwd", "root:x:0:0");
	make_dir("t");
	/* ..data pointing out of the target, a name linked to a file outside. */
	assert_int_equal(symlink(at("outside"), at("t/..data")), 0);
	assert_int_equal(symlink(at("passwd"), at("t/victim")), 0);
	assert_int_equal(symlink(at("outside"), at("t/..data_tmp")), 0);
	assert_int_equal(writer_write(NULL, at("t"), files, 2, &err), 0);

	assert_string_equal(get("outside/a", buf, sizeof(buf)), "outside-a");
	assert_string_equal(get("outside/keep", buf, sizeof(buf)), "keep");
	assert_int_equal(count_entries("outside"), 2);
	assert_string_equal(get("passwd", buf, sizeof(buf)), "root:x:0:0");
	assert_int_equal(mode_of("passwd"), 0644);
	assert_string_equal(link_of("t/victim", buf, sizeof(buf)), "..data/victim");
	assert_string_equal(get("t/victim", buf, sizeof(buf)), "mine");

	/* ..data naming a sibling that is itself a link out: never followed, never emptied. */
	assert_int_equal(unlink(at("t/..data")), 0);
	assert_int_equal(symlink("..evil", at("t/..data")), 0);
	assert_int_equal(symlink(at("outside"), at("t/..evil")), 0);
	files[0].contents = (const uint8_t *)"newer";
	files[0].len = 5;
	assert_int_equal(writer_write(NULL, at("t"), files, 2, &err), 0);
	assert_int_equal(count_entries("outside"), 2);
	assert_string_equal(get("outside/keep", buf, sizeof(buf)), "keep");
	assert_string_equal(get("t/a", buf, sizeof(buf)), "newer");
}

static void test_modes_ignore_umask(void **state)
{
	struct writer_file files[] = {
		FILE_("rw", 0644, "1"),
		FILE_("x", 0755, "2"),
		FILE_("d/g", 0664, "3"),
		FILE_("none", 0, "4"),
	};
	struct err err = { 0 };
	mode_t old;
	int r;

	make_dir("t");
	old = umask(0777);
	r = writer_write(NULL, at("t"), files, 4, &err);
	umask(old);
	assert_int_equal(r, 0);
	assert_int_equal(mode_of("t/rw"), 0644);
	assert_int_equal(mode_of("t/x"), 0755);
	assert_int_equal(mode_of("t/d/g"), 0664);
	assert_int_equal(mode_of("t/d"), 0755);
	assert_int_equal(mode_of("t/none"), 0);
}

/*
 * A writer killed mid-write leaves a directory of partial files and its
 * temporary links: the next write removes them all, however fresh, since
 * writes to one target hold its lock.
 */
static void test_crash_leftovers_removed(void **state)
{
	struct writer_file files[] = { FILE_("ID", 0644, "client-1") };
	struct timespec old[2] = { { .tv_sec = 1000000000 }, { .tv_sec = 1000000000 } };
	struct err err = { 0 };

	make_dir("t");
	make_dir("t/..2020_01_01_00_00_00.000000001");
	put("t/..2020_01_01_00_00_00.000000001/JWK", "{\"d\":\"partial");
	assert_int_equal(utimensat(AT_FDCWD, at("t/..2020_01_01_00_00_00.000000001"), old, 0), 0);
	make_dir("t/..2020_01_01_00_00_01.000000002");
	assert_int_equal(symlink("..2020_01_01_00_00_01.000000002", at("t/..data_tmp")), 0);
	assert_int_equal(symlink("..data/GONE", at("t/..user_tmp")), 0);
	/* A link of a name no set has any more, from a write killed before its cleanup. */
	assert_int_equal(symlink("..data/GONE", at("t/GONE")), 0);
	/* Not ours: stays. */
	assert_int_equal(symlink("elsewhere", at("t/mine")), 0);
	assert_int_equal(writer_write(NULL, at("t"), files, 1, &err), 0);
	assert_int_equal(access(at("t/..2020_01_01_00_00_00.000000001"), F_OK), -1);
	assert_int_equal(access(at("t/..2020_01_01_00_00_01.000000002"), F_OK), -1);
	/* ..data, its directory, the link ID and the foreign link "mine". */
	assert_int_equal(count_entries("t"), 4);
}

/*
 * What a reader sees in t after a write was killed: either ..data names a
 * complete set (want, or before when before is non-NULL) with every link in
 * place, or there is no ..data and every visible name is a link of ours that
 * resolves nowhere. Returns which set ..data names: 0 none, 1 before, 2 want.
 */
static int check_killed(const struct writer_file *before, const struct writer_file *want, size_t n)
{
	char buf[300], path[300], data[256];
	int which = 0;

	if (!link_of("t/..data", data, sizeof(data))) {
		DIR *d = opendir(at("t"));
		struct dirent *e;

		assert_non_null(d);
		while ((e = readdir(d))) {
			if (e->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "t/%s", e->d_name);
			snprintf(buf, sizeof(buf), "..data/%s", e->d_name);
			assert_non_null(link_of(path, data, sizeof(data)));
			assert_string_equal(data, buf);
			assert_int_equal(access(at(path), F_OK), -1);
		}
		closedir(d);
		return 0;
	}
	for (int pass = 0; pass < 2 && !which; pass++) {
		const struct writer_file *set = pass ? want : before;
		bool all = set != NULL;

		for (size_t i = 0; all && i < n; i++) {
			snprintf(path, sizeof(path), "t/%s", set[i].path);
			all = get(path, buf, sizeof(buf)) &&
			      !strcmp(buf, (const char *)set[i].contents) &&
			      mode_of(path) == set[i].mode;
		}
		if (all)
			which = pass ? 2 : 1;
	}
	if (!which)
		fail_msg("..data -> %s holds neither set", data);
	return which;
}

/*
 * Kills the write after each of its changes in turn (the test hook the
 * binary's --test-crash-in-write uses), in a child: the invariant holds
 * after every kill, and the next write completes the volume and leaves
 * nothing behind. Once from an empty target, once over an older set.
 */
static void test_killed_at_every_step(void **state)
{
	struct writer_file v1[] = { FILE_("A", 0644, "one"), FILE_("B", 0644, "bee"),
				    FILE_("C", 0644, "sea") };
	struct writer_file v2[] = { FILE_("A", 0640, "two"), FILE_("B", 0640, "bee"),
				    FILE_("C", 0640, "see") };
	struct err err = { 0 };

	for (int over = 0; over < 2; over++) {
		int seen[3] = { 0 }, completed = 0;

		for (long n = 1; n < 200 && !completed; n++) {
			pid_t pid;
			int status;

			teardown(state);
			setup(state);
			make_dir("t");
			if (over)
				assert_int_equal(writer_write(NULL, at("t"), v1, 3, &err), 0);
			pid = fork();
			assert_true(pid >= 0);
			if (pid == 0) {
				writer_test_crash_after(n);
				_exit(writer_write(NULL, at("t"), v2, 3, &err) == 0 ? 0 : 1);
			}
			assert_int_equal(waitpid(pid, &status, 0), pid);
			if (WIFEXITED(status)) {
				assert_int_equal(WEXITSTATUS(status), 0);
				completed = 1;
			} else {
				assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
			}
			seen[check_killed(over ? v1 : NULL, v2, 3)]++;
			/* The next write completes it: the new set, nothing else. */
			assert_int_equal(writer_write(NULL, at("t"), v2, 3, &err), 0);
			assert_int_equal(check_killed(NULL, v2, 3), 2);
			assert_int_equal(count_entries("t"), 5);
		}
		assert_true(completed);
		/* Kills landed before ..data, and after it, at least. */
		assert_true(seen[over ? 1 : 0] > 0 && seen[2] > 0);
	}
}

/* Writers on threads, all at one target: each succeeds and one set remains. */
struct racer {
	const char *target;
	int result;
};

static void *race(void *arg)
{
	struct racer *r = arg;
	struct writer_file files[] = { FILE_("A", 0644, "same"), FILE_("B", 0644, "also") };
	struct err err = { 0 };

	r->result = writer_write(NULL, r->target, files, 2, &err);
	return NULL;
}

static void test_concurrent_writes(void **state)
{
	struct racer racers[16];
	pthread_t threads[16];
	char target[640];

	make_dir("t");
	snprintf(target, sizeof(target), "%s", at("t"));
	for (int i = 0; i < 16; i++) {
		racers[i] = (struct racer){ .target = target, .result = -1 };
		assert_int_equal(pthread_create(&threads[i], NULL, race, &racers[i]), 0);
	}
	for (int i = 0; i < 16; i++)
		assert_int_equal(pthread_join(threads[i], NULL), 0);
	for (int i = 0; i < 16; i++)
		assert_int_equal(racers[i].result, 0);
	/* ..data, one directory, two links. */
	assert_int_equal(count_entries("t"), 4);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_path_rules), T(test_layout),
		T(test_crash_leftovers_removed),   T(test_swap_removes_stale),
		T(test_identical_rewrite_is_noop), T(test_invalid_writes_nothing),
		T(test_target_symlink_refused),	   T(test_target_outside_root),
		T(test_planted_symlinks),	   T(test_modes_ignore_umask),
		T(test_killed_at_every_step),	   T(test_concurrent_writes),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
