/*
 * test_health: starts the real server on an ephemeral loopback port with fake
 * checks and talks HTTP/1.1 to it over a plain socket, so the status line,
 * headers and body are exactly what a kubelet probe or Prometheus would see.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>

#include "health.h"
#include "log.h"
#include "metrics.h"

struct fake {
	int live_rc;
	int ready_rc;
	const char *reason;
	int calls;
};

static int fake_live(void *ctx, char *msg, size_t len)
{
	struct fake *f = ctx;

	f->calls++;
	if (f->live_rc)
		snprintf(msg, len, "%s", f->reason);
	return f->live_rc;
}

static int fake_ready(void *ctx, char *msg, size_t len)
{
	struct fake *f = ctx;

	f->calls++;
	if (f->ready_rc)
		snprintf(msg, len, "%s", f->reason);
	return f->ready_rc;
}

/* One response: status code, headers and body as received. */
struct resp {
	int status;
	char head[2048];
	char body[16384];
	size_t body_len;
};

/* Sends a raw request to 127.0.0.1:port and reads until the server closes. */
static void http(int port, const char *request, struct resp *ret)
{
	struct sockaddr_in sa = { 0 };
	struct timeval tv = { .tv_sec = 5 };
	static char buf[20000];
	size_t got = 0;
	ssize_t n;
	char *sep;
	int fd;

	memset(ret, 0, sizeof(*ret));
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(write(fd, request, strlen(request)), (ssize_t)strlen(request));
	while (got < sizeof(buf) - 1 && (n = read(fd, buf + got, sizeof(buf) - 1 - got)) > 0)
		got += (size_t)n;
	close(fd);
	buf[got] = '\0';

	assert_int_equal(sscanf(buf, "HTTP/1.1 %d ", &ret->status), 1);
	sep = strstr(buf, "\r\n\r\n");
	assert_non_null(sep);
	assert_true((size_t)(sep - buf) < sizeof(ret->head));
	memcpy(ret->head, buf, (size_t)(sep - buf));
	ret->body_len = got - (size_t)(sep + 4 - buf);
	assert_true(ret->body_len < sizeof(ret->body));
	memcpy(ret->body, sep + 4, ret->body_len);
}

static void get(int port, const char *path, struct resp *ret)
{
	char req[256];

	snprintf(req, sizeof(req),
		 "GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", path);
	http(port, req, ret);
}

static struct health *start(struct fake *f)
{
	struct health_ops ops = { .live = fake_live, .ready = fake_ready, .ctx = f };
	struct err e = { 0 };
	struct health *h = health_start("127.0.0.1:0", &ops, &e);

	if (!h)
		fail_msg("health_start: %s", e.msg);
	assert_true(health_port(h) > 0);
	return h;
}

static void test_healthy(void **state)
{
	struct fake f = { 0 };
	struct health *h = start(&f);
	struct resp r;

	get(health_port(h), "/healthz", &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "ok\n");
	get(health_port(h), "/readyz", &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "ok\n");
	/* Query strings do not change the route. */
	get(health_port(h), "/readyz?verbose=1", &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(f.calls, 3);
	health_stop(h);
}

static void test_unhealthy_gives_reason(void **state)
{
	struct fake f = { .live_rc = -1, .reason = "Version on the socket timed out" };
	struct health *h = start(&f);
	struct resp r;

	get(health_port(h), "/healthz", &r);
	assert_int_equal(r.status, 503);
	assert_string_equal(r.body, "Version on the socket timed out\n");
	/* Liveness failing says nothing about readiness: they are separate. */
	get(health_port(h), "/readyz", &r);
	assert_int_equal(r.status, 200);

	f.live_rc = 0;
	f.ready_rc = 1;
	f.reason = "metadata not fetched yet:\nretrying";
	get(health_port(h), "/readyz", &r);
	assert_int_equal(r.status, 503);
	/* One line, whatever the callback wrote. */
	assert_string_equal(r.body, "metadata not fetched yet: retrying\n");
	get(health_port(h), "/healthz", &r);
	assert_int_equal(r.status, 200);
	health_stop(h);
}

static void test_empty_reason(void **state)
{
	struct fake f = { .ready_rc = 1, .reason = "" };
	struct health *h = start(&f);
	struct resp r;

	get(health_port(h), "/readyz", &r);
	assert_int_equal(r.status, 503);
	assert_string_equal(r.body, "not ready\n");
	health_stop(h);
}

static void test_null_checks_pass(void **state)
{
	struct err e = { 0 };
	struct health *h = health_start("127.0.0.1:0", NULL, &e);
	struct resp r;

	assert_non_null(h);
	get(health_port(h), "/healthz", &r);
	assert_int_equal(r.status, 200);
	get(health_port(h), "/readyz", &r);
	assert_int_equal(r.status, 200);
	health_stop(h);
}

static void test_not_found_and_method(void **state)
{
	struct fake f = { 0 };
	struct health *h = start(&f);
	struct resp r;

	get(health_port(h), "/", &r);
	assert_int_equal(r.status, 404);
	get(health_port(h), "/healthz/", &r);
	assert_int_equal(r.status, 404);
	get(health_port(h), "/metricsx", &r);
	assert_int_equal(r.status, 404);

	http(health_port(h),
	     "POST /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
	     "Content-Length: 2\r\n\r\nhi",
	     &r);
	assert_int_equal(r.status, 405);
	assert_non_null(strstr(r.head, "\r\nAllow: GET, HEAD"));
	http(health_port(h), "DELETE /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
	     &r);
	assert_int_equal(r.status, 405);
	/* A refused method never reaches the checks. */
	assert_int_equal(f.calls, 0);

	http(health_port(h), "HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(r.body_len, 0);
	health_stop(h);
}

static void test_metrics(void **state)
{
	struct fake f = { .live_rc = 1, .ready_rc = 1, .reason = "down" };
	struct health *h = start(&f);
	struct resp r;

	metrics_reset();
	metrics_mount("ok", "none", 0.002);
	metrics_cache(true);
	get(health_port(h), "/metrics", &r);
	assert_int_equal(r.status, 200);
	assert_non_null(strstr(r.head, "Content-Type: text/plain; version=0.0.4"));
	assert_non_null(strstr(r.body, "mpcsi_mounts_total{result=\"ok\",kind=\"none\"} 1\n"));
	assert_non_null(strstr(r.body, "mpcsi_cache_hits_total 1\n"));
	assert_non_null(strstr(r.body, "mpcsi_mount_duration_seconds_count 1\n"));
	/* Metrics are served even when the checks fail, and do not run them. */
	assert_int_equal(f.calls, 0);
	health_stop(h);
	metrics_reset();
}

static void test_bad_addresses(void **state)
{
	static const char *bad[] = { "",
				     "8095",
				     "127.0.0.1",
				     "127.0.0.1:",
				     "127.0.0.1:80x",
				     "::1:8095",
				     "[::1]8095",
				     "127.0.0.1:1234567",
				     "no-such-host.invalid:8095" };
	struct err e;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&e, 0, sizeof(e));
		if (health_start(bad[i], NULL, &e))
			fail_msg("'%s' was accepted", bad[i]);
		assert_int_equal(e.kind, ERR_INVALID);
		assert_true(e.msg[0] != '\0');
	}
	assert_null(health_start(NULL, NULL, NULL));
}

static void test_port_in_use(void **state)
{
	struct health *a = start(&(struct fake){ 0 });
	struct health *b;
	char addr[64];
	struct err e = { 0 };

	snprintf(addr, sizeof(addr), "127.0.0.1:%d", health_port(a));
	b = health_start(addr, NULL, &e);
	assert_null(b);
	assert_non_null(strstr(e.msg, addr));
	health_stop(a);
	health_stop(NULL);
	assert_int_equal(health_port(NULL), -1);
}

static void test_ipv6_loopback(void **state)
{
	struct err e = { 0 };
	struct health *h = health_start("[::1]:0", NULL, &e);

	/* Hosts without IPv6 cannot bind ::1; that is their answer, not ours. */
	if (!h)
		skip();
	assert_true(health_port(h) > 0);
	health_stop(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_healthy),
		cmocka_unit_test(test_unhealthy_gives_reason),
		cmocka_unit_test(test_empty_reason),
		cmocka_unit_test(test_null_checks_pass),
		cmocka_unit_test(test_not_found_and_method),
		cmocka_unit_test(test_metrics),
		cmocka_unit_test(test_bad_addresses),
		cmocka_unit_test(test_port_in_use),
		cmocka_unit_test(test_ipv6_loopback),
	};

	log_init(LOG_LEVEL_ERROR, LOG_FORMAT_TEXT);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
