/*
 * test_server: the gRPC server on a temporary socket with fake handlers,
 * called through the driver-side client, as the CSI driver would call it.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "driver.h"
#include "log.h"
#include "provider.pb-c.h"
#include "server.h"

#define M_VERSION "/v1alpha1.CSIDriverProvider/Version"
#define M_MOUNT	  "/v1alpha1.CSIDriverProvider/Mount"
#define SLOW_MS	  300
#define BIG_LEN	  (256 * 1024)

static atomic_int slow_started;
static atomic_int slow_finished;
static atomic_int slow_running, slow_peak; /* slow handlers running at once, and the most */
static _Atomic int64_t seen_deadline_ms;

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void echo(const uint8_t *req, size_t len, struct server_reply *ret)
{
	ret->code = SERVER_OK;
	ret->payload = malloc(len ? len : 1);
	assert_non_null(ret->payload);
	if (len)
		memcpy(ret->payload, req, len);
	ret->len = len;
}

static int fake_version(void *ctx, const uint8_t *req, size_t len, int64_t deadline_ms,
			struct server_reply *ret, void **ret_work, size_t *ret_work_bytes)
{
	V1alpha1__VersionResponse resp = V1ALPHA1__VERSION_RESPONSE__INIT;

	resp.version = (char *)"v1alpha1";
	resp.runtime_name = (char *)"fake";
	resp.runtime_version = (char *)"1.2.3";
	ret->len = v1alpha1__version_response__get_packed_size(&resp);
	ret->payload = malloc(ret->len);
	assert_non_null(ret->payload);
	v1alpha1__version_response__pack(&resp, ret->payload);
	ret->code = SERVER_OK;
	return 0;
}

/* What the fake hands to a worker: a copy of the request (the server drops the bytes). */
struct fake_work {
	size_t len;
	uint8_t data[];
};

static int fake_mount_fast(void *ctx, const uint8_t *req, size_t len, int64_t deadline_ms,
			   struct server_reply *ret, void **ret_work, size_t *ret_work_bytes)
{
	struct fake_work *w;

	seen_deadline_ms = deadline_ms;
	if (len > 0 && req[0] == 'F') {
		echo(req, len, ret);
		return 0;
	}
	if (len > 0 && req[0] == 'B') {
		/* A large answer, like a Mount's: must arrive intact, not wiped early. */
		ret->len = BIG_LEN;
		ret->payload = malloc(BIG_LEN);
		assert_non_null(ret->payload);
		for (size_t i = 0; i < BIG_LEN; i++)
			ret->payload[i] = (uint8_t)('a' + i % 26);
		ret->code = SERVER_OK;
		return 0;
	}
	if (len > 0 && req[0] == 'E') {
		ret->code = SERVER_INVALID_ARGUMENT;
		snprintf(ret->message, sizeof(ret->message), "bad request for pod %s", "ns/p");
		return 0;
	}
	w = malloc(sizeof(*w) + len);
	assert_non_null(w);
	w->len = len;
	if (len)
		memcpy(w->data, req, len);
	*ret_work = w;
	*ret_work_bytes = sizeof(*w) + len;
	return 1;
}

static void fake_mount_slow(void *ctx, void *work, int64_t deadline_ms, struct server_reply *ret)
{
	struct timespec ts = { 0, SLOW_MS * 1000000L };
	struct fake_work *w = work;

	int running = atomic_fetch_add(&slow_running, 1) + 1;
	int peak = atomic_load(&slow_peak);

	while (running > peak && !atomic_compare_exchange_weak(&slow_peak, &peak, running))
		;
	atomic_fetch_add(&slow_started, 1);
	nanosleep(&ts, NULL);
	echo(w->data, w->len, ret);
	atomic_fetch_sub(&slow_running, 1);
	atomic_fetch_add(&slow_finished, 1);
}

static const struct server_ops ops = {
	.version = fake_version,
	.mount_fast = fake_mount_fast,
	.mount_slow = fake_mount_slow,
	.work_free = free,
};

/* A server running in a thread, on a socket in a fresh temporary directory. */
struct fixture {
	char dir[64];
	char path[96];
	struct server_config cfg;
	atomic_int stop;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int ready;
	int result;
	struct driver *driver;
};

static void on_ready(void *arg)
{
	struct fixture *f = arg;

	pthread_mutex_lock(&f->lock);
	f->ready = 1;
	pthread_cond_broadcast(&f->cond);
	pthread_mutex_unlock(&f->lock);
}

static void *server_thread(void *arg)
{
	struct fixture *f = arg;

	f->result = server_run(&f->cfg, &ops, &f->stop, on_ready, f);
	pthread_mutex_lock(&f->lock);
	f->ready = -1;
	pthread_cond_broadcast(&f->cond);
	pthread_mutex_unlock(&f->lock);
	return NULL;
}

static void fixture_init(struct fixture *f)
{
	memset(f, 0, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "/tmp/mcp-server-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/provider.sock", f->dir);
	f->cfg = (struct server_config){
		.socket_path = f->path,
		.socket_mode = 0600,
		.max_recv_bytes = 4096,
		.max_send_bytes = 4 * 1024 * 1024,
		.workers = 4,
		.queue_max = 16,
		.default_timeout_ms = 5000,
		.grace_ms = 2000,
	};
	pthread_mutex_init(&f->lock, NULL);
	pthread_cond_init(&f->cond, NULL);
	atomic_store(&slow_started, 0);
	atomic_store(&slow_finished, 0);
	atomic_store(&slow_running, 0);
	atomic_store(&slow_peak, 0);
}

static void fixture_start(struct fixture *f)
{
	int ready;

	assert_int_equal(pthread_create(&f->thread, NULL, server_thread, f), 0);
	pthread_mutex_lock(&f->lock);
	while (f->ready == 0)
		pthread_cond_wait(&f->cond, &f->lock);
	/* Read under the lock: the server thread writes -1 when it stops. */
	ready = f->ready;
	pthread_mutex_unlock(&f->lock);
	assert_int_equal(ready, 1);
	f->driver = driver_new(f->path);
	assert_non_null(f->driver);
}

/* Stops the server; returns server_run's result. */
static int fixture_stop(struct fixture *f)
{
	driver_free(f->driver);
	f->driver = NULL;
	atomic_store(&f->stop, 1);
	pthread_join(f->thread, NULL);
	return f->result;
}

static void fixture_cleanup(struct fixture *f)
{
	unlink(f->path);
	rmdir(f->dir);
	pthread_cond_destroy(&f->cond);
	pthread_mutex_destroy(&f->lock);
}

/* One call; returns the status, copies the answer into out (when given). */
static int call(struct driver *d, const char *method, const char *req, size_t len, long timeout,
		char *out, size_t outlen, char *msg, size_t msglen)
{
	uint8_t *payload = NULL;
	char *message = NULL;
	size_t plen = 0;
	int status = -1;

	assert_int_equal(driver_call(d, method, (const uint8_t *)req, len, timeout, &status,
				     &message, &payload, &plen),
			 0);
	if (status == 0) {
		assert_non_null(payload);
		if (out) {
			assert_true(plen < outlen);
			memcpy(out, payload, plen);
			out[plen] = '\0';
		}
	}
	if (msg)
		snprintf(msg, msglen, "%s", message ? message : "");
	free(payload);
	free(message);
	return status;
}

static void test_version_and_mounts(void **state)
{
	struct fixture f;
	char out[256], msg[256];
	char *runtime = NULL, *message = NULL;
	struct err err = { 0 };
	uint8_t *payload = NULL;
	size_t plen = 0;
	int status = -1;

	fixture_init(&f);
	fixture_start(&f);

	assert_int_equal(driver_version(f.driver, 5000, &runtime, &err), 0);
	assert_string_equal(runtime, "fake 1.2.3");
	free(runtime);

	assert_int_equal(call(f.driver, M_MOUNT, "Fast", 4, 5000, out, sizeof(out), NULL, 0), 0);
	assert_string_equal(out, "Fast");
	assert_int_equal(call(f.driver, M_MOUNT, "slow", 4, 5000, out, sizeof(out), NULL, 0), 0);
	assert_string_equal(out, "slow");
	assert_int_equal(atomic_load(&slow_finished), 1);

	/* A handler's error reaches the caller with its message. */
	assert_int_equal(call(f.driver, M_MOUNT, "E", 1, 5000, NULL, 0, msg, sizeof(msg)),
			 SERVER_INVALID_ARGUMENT);
	assert_string_equal(msg, "bad request for pod ns/p");

	assert_int_equal(driver_call(f.driver, M_MOUNT, (const uint8_t *)"B", 1, 5000, &status,
				     &message, &payload, &plen),
			 0);
	assert_int_equal(status, 0);
	assert_int_equal(plen, BIG_LEN);
	for (size_t i = 0; i < BIG_LEN; i++)
		assert_int_equal(payload[i], 'a' + i % 26);
	free(payload);
	free(message);

	/* An empty message is a valid (empty) request: it reaches the slow path. */
	assert_int_equal(call(f.driver, M_MOUNT, "", 0, 5000, out, sizeof(out), NULL, 0), 0);
	assert_string_equal(out, "");

	assert_int_equal(fixture_stop(&f), 0);
	fixture_cleanup(&f);
}

struct slow_arg {
	struct driver *driver;
	int status;
	char msg[256];
	atomic_int *fast_done;
	int fast_done_when_finished;
};

static void *slow_caller(void *arg)
{
	struct slow_arg *a = arg;
	char out[16];

	a->status =
	    call(a->driver, M_MOUNT, "slow", 4, 10000, out, sizeof(out), a->msg, sizeof(a->msg));
	a->fast_done_when_finished = atomic_load(a->fast_done);
	return NULL;
}

static void test_fast_not_behind_slow(void **state)
{
	struct fixture f;
	struct slow_arg args[4];
	pthread_t threads[4];
	atomic_int fast_done = 0;
	char out[16];
	int finished_before_fast;

	fixture_init(&f);
	fixture_start(&f);
	for (int i = 0; i < 4; i++) {
		args[i] = (struct slow_arg){ .driver = f.driver, .fast_done = &fast_done };
		assert_int_equal(pthread_create(&threads[i], NULL, slow_caller, &args[i]), 0);
	}
	/* Wait until all four slow handlers run, then a fast call must still pass them. */
	while (atomic_load(&slow_started) < 4)
		usleep(1000);
	assert_int_equal(call(f.driver, M_MOUNT, "F", 1, 5000, out, sizeof(out), NULL, 0), 0);
	finished_before_fast = atomic_load(&slow_finished);
	atomic_store(&fast_done, 1);
	for (int i = 0; i < 4; i++) {
		pthread_join(threads[i], NULL);
		assert_int_equal(args[i].status, 0);
		assert_int_equal(args[i].fast_done_when_finished, 1);
	}
	assert_int_equal(finished_before_fast, 0);
	assert_int_equal(fixture_stop(&f), 0);
	fixture_cleanup(&f);
}

/* Workers start as calls queue up, never more than configured; all calls are answered. */
static void test_workers_on_demand_up_to_max(void **state)
{
	struct fixture f;
	struct slow_arg args[6];
	pthread_t threads[6];
	atomic_int dummy = 0;

	fixture_init(&f);
	f.cfg.workers = 3;
	fixture_start(&f);
	for (int i = 0; i < 6; i++) {
		args[i] = (struct slow_arg){ .driver = f.driver, .fast_done = &dummy };
		assert_int_equal(pthread_create(&threads[i], NULL, slow_caller, &args[i]), 0);
	}
	for (int i = 0; i < 6; i++) {
		pthread_join(threads[i], NULL);
		assert_int_equal(args[i].status, 0);
	}
	/* One worker at start; three ran at once, in two rounds of SLOW_MS. */
	assert_int_equal(atomic_load(&slow_peak), 3);
	assert_int_equal(atomic_load(&slow_finished), 6);
	assert_int_equal(fixture_stop(&f), 0);
	fixture_cleanup(&f);
}

static void test_queue_full(void **state)
{
	struct fixture f;
	struct slow_arg args[4];
	pthread_t threads[4];
	atomic_int dummy = 0;
	int busy = 0, ok = 0;

	fixture_init(&f);
	f.cfg.workers = 1;
	f.cfg.queue_max = 1;
	fixture_start(&f);
	for (int i = 0; i < 4; i++) {
		args[i] = (struct slow_arg){ .driver = f.driver, .fast_done = &dummy };
		assert_int_equal(pthread_create(&threads[i], NULL, slow_caller, &args[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(threads[i], NULL);
		if (args[i].status == SERVER_RESOURCE_EXHAUSTED) {
			assert_non_null(strstr(args[i].msg, "provider busy: 1 Mounts"));
			busy++;
		}
		ok += args[i].status == 0;
	}
	/* At most one runs and one waits: the others are told to retry. */
	assert_true(busy >= 2);
	assert_true(ok >= 1);
	assert_int_equal(busy + ok, 4);
	assert_int_equal(fixture_stop(&f), 0);
	fixture_cleanup(&f);
}

static void test_oversize_and_unknown(void **state)
{
	struct fixture f;
	char msg[256];
	char *big = calloc(1, 8192);

	assert_non_null(big);
	memset(big, 'F', 8192);
	fixture_init(&f);
	fixture_start(&f);
	assert_int_equal(call(f.driver, M_MOUNT, big, 8192, 5000, NULL, 0, msg, sizeof(msg)),
			 SERVER_RESOURCE_EXHAUSTED);
	assert_int_equal(call(f.driver, "/v1alpha1.CSIDriverProvider/Unmount", "x", 1, 5000, NULL,
			      0, msg, sizeof(msg)),
			 SERVER_UNIMPLEMENTED);
	assert_non_null(strstr(msg, "Unmount"));
	/* Still serving after both. */
	assert_int_equal(call(f.driver, M_MOUNT, "F", 1, 5000, NULL, 0, NULL, 0), 0);
	assert_int_equal(fixture_stop(&f), 0);
	fixture_cleanup(&f);
	free(big);
}

static void test_deadline_passed_to_handler(void **state)
{
	struct fixture f;
	int64_t before, after;

	fixture_init(&f);
	fixture_start(&f);
	before = mono_ms();
	assert_int_equal(call(f.driver, M_MOUNT, "F", 1, 3000, NULL, 0, NULL, 0), 0);
	after = mono_ms();
	assert_true(seen_deadline_ms > after);
	/* grpc-timeout travels rounded up to a coarse unit: allow that much. */
	assert_true(seen_deadline_ms <= before + 3000 + 100);
	assert_int_equal(fixture_stop(&f), 0);
	fixture_cleanup(&f);
}

static void test_socket_mode_and_removal(void **state)
{
	struct fixture f;
	struct stat st;

	fixture_init(&f);
	f.cfg.socket_mode = 0600;
	fixture_start(&f);
	assert_int_equal(lstat(f.path, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0600);
	assert_int_equal(fixture_stop(&f), 0);
	assert_int_equal(lstat(f.path, &st), -1);
	assert_int_equal(errno, ENOENT);
	fixture_cleanup(&f);
}

static void test_stale_socket_replaced(void **state)
{
	struct fixture f;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	fixture_init(&f);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", f.path);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd); /* A socket file nobody listens on: what a crashed provider leaves. */
	fixture_start(&f);
	assert_int_equal(call(f.driver, M_MOUNT, "F", 1, 5000, NULL, 0, NULL, 0), 0);
	assert_int_equal(fixture_stop(&f), 0);
	fixture_cleanup(&f);
}

static void test_regular_file_refused(void **state)
{
	struct fixture f;
	atomic_int stop = 0;
	struct stat st;
	int fd;

	fixture_init(&f);
	fd = open(f.path, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "keep", 4), 4);
	close(fd);
	assert_int_equal(server_run(&f.cfg, &ops, &stop, NULL, NULL), -EEXIST);
	assert_int_equal(stat(f.path, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(st.st_size, 4);

	/* A directory is refused too. */
	unlink(f.path);
	assert_int_equal(mkdir(f.path, 0700), 0);
	assert_int_equal(server_run(&f.cfg, &ops, &stop, NULL, NULL), -EEXIST);
	assert_int_equal(rmdir(f.path), 0);

	/* A directory that does not exist: the listener fails, nothing hangs or leaks. */
	snprintf(f.path, sizeof(f.path), "%s/missing/provider.sock", f.dir);
	assert_true(server_run(&f.cfg, &ops, &stop, NULL, NULL) < 0);
	fixture_cleanup(&f);
}

/* A listening socket at path, as another live provider has. Returns its fd. */
static int listen_at(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(fd, 4), 0);
	return fd;
}

/* A live provider's socket is never taken: refused at once with no wait, untouched. */
static void test_live_socket_refused(void **state)
{
	struct fixture f;
	atomic_int stop = 0;
	struct stat before, after;
	int fd;

	fixture_init(&f);
	fd = listen_at(f.path);
	assert_int_equal(lstat(f.path, &before), 0);
	f.cfg.socket_wait_ms = 0;
	assert_int_equal(server_run(&f.cfg, &ops, &stop, NULL, NULL), -EADDRINUSE);
	assert_int_equal(lstat(f.path, &after), 0);
	assert_true(before.st_dev == after.st_dev && before.st_ino == after.st_ino);
	close(fd);
	fixture_cleanup(&f);
}

static void *close_later(void *arg)
{
	struct timespec ts = { 0, 300 * 1000000L };

	nanosleep(&ts, NULL);
	close(*(int *)arg);
	return NULL;
}

/* Waiting for a live provider: once it stops listening, its socket is taken over. */
static void test_live_socket_waited_for(void **state)
{
	struct fixture f;
	pthread_t t;
	int fd;

	fixture_init(&f);
	fd = listen_at(f.path);
	f.cfg.socket_wait_ms = 30000;
	assert_int_equal(pthread_create(&t, NULL, close_later, &fd), 0);
	fixture_start(&f);
	pthread_join(t, NULL);
	assert_int_equal(call(f.driver, M_MOUNT, "F", 1, 5000, NULL, 0, NULL, 0), 0);
	assert_int_equal(fixture_stop(&f), 0);
	fixture_cleanup(&f);
}

/* Stopping while a slow call runs: the call still gets its answer. */
static void test_stop_drains(void **state)
{
	struct fixture f;
	struct slow_arg arg;
	atomic_int dummy = 0;
	pthread_t t;
	struct stat st;

	fixture_init(&f);
	fixture_start(&f);
	arg = (struct slow_arg){ .driver = f.driver, .fast_done = &dummy, .status = -1 };
	assert_int_equal(pthread_create(&t, NULL, slow_caller, &arg), 0);
	while (atomic_load(&slow_started) < 1)
		usleep(1000);
	atomic_store(&f.stop, 1);
	pthread_join(t, NULL);
	assert_int_equal(arg.status, 0);
	assert_int_equal(fixture_stop(&f), 0);
	assert_int_equal(lstat(f.path, &st), -1);
	fixture_cleanup(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_version_and_mounts),
		cmocka_unit_test(test_fast_not_behind_slow),
		cmocka_unit_test(test_workers_on_demand_up_to_max),
		cmocka_unit_test(test_queue_full),
		cmocka_unit_test(test_oversize_and_unknown),
		cmocka_unit_test(test_deadline_passed_to_handler),
		cmocka_unit_test(test_socket_mode_and_removal),
		cmocka_unit_test(test_stale_socket_replaced),
		cmocka_unit_test(test_regular_file_refused),
		cmocka_unit_test(test_stop_drains),
		cmocka_unit_test(test_live_socket_refused),
		cmocka_unit_test(test_live_socket_waited_for),
	};

	log_init(LOG_LEVEL_ERROR, LOG_FORMAT_TEXT);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
