/*
 * health: /healthz, /readyz and /metrics over plain HTTP with libmicrohttpd.
 * This is the only file that touches libmicrohttpd.
 *
 * A listener that serves the probes runs one thread per connection: a
 * liveness check waits on the gRPC socket for up to seconds and must hold up
 * nothing else. A listener for /metrics alone answers from one polling
 * thread (rendering is quick), so idle connections cost it no threads. Every
 * connection is closed after HEALTH_CONN_TIMEOUT seconds without activity,
 * so nobody holds one for long. Requests carry no input we read beyond the
 * method and the path, and the answers are our own short texts: never a
 * secret, never a request echo.
 */
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "health.h"
#include "log.h"
#include "metrics.h"

/*
 * Probes and a scraper or two need a handful; the limits bound our threads
 * (probes) and memory (HEALTH_CONN_MEMORY each). A client address may hold
 * a share of a metrics listener only, so one tenant cannot fill it; the
 * kubelet's probes come from the node's address, which a host-network pod
 * shares, so the probe listener has no per-address limit.
 */
#define HEALTH_PROBE_CONNECTIONS   32
#define HEALTH_METRICS_CONNECTIONS 128
#define HEALTH_PER_IP_CONNECTIONS  16
/* Seconds an idle or slow client may hold a connection. */
#define HEALTH_CONN_TIMEOUT 10
/* Request headers and the like; our requests are tiny. */
#define HEALTH_CONN_MEMORY (32 * 1024)

#define CONTENT_TEXT	"text/plain; charset=utf-8"
#define CONTENT_METRICS "text/plain; version=0.0.4; charset=utf-8"

struct health {
	struct MHD_Daemon *daemon;
	struct health_ops ops;
	int port;
};

/* libmicrohttpd's own complaints go to our log, as one line each. */
__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char line[256];
	size_t n;

	vsnprintf(line, sizeof(line), fmt, ap);
	n = strlen(line);
	while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		line[--n] = '\0';
	log_warn("health server: %s", line);
}

/* Queues a response whose body is copied from text (len bytes). */
static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *type,
			     const char *text, size_t len)
{
	struct MHD_Response *resp = NULL;
	enum MHD_Result r = MHD_NO;

	resp = MHD_create_response_from_buffer(len, (void *)text, MHD_RESPMEM_MUST_COPY);
	if (!resp)
		return MHD_NO;
	if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type) != MHD_YES ||
	    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store") != MHD_YES)
		goto out;
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED &&
	    MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD") != MHD_YES)
		goto out;
	r = MHD_queue_response(conn, status, resp);
out:
	MHD_destroy_response(resp);
	return r;
}

/* Runs one check; a NULL check passes. The reason always ends in a newline. */
static enum MHD_Result check(struct MHD_Connection *conn, int (*fn)(void *, char *, size_t),
			     void *ctx, const char *what)
{
	char msg[512] = "";
	size_t n;

	if (!fn || fn(ctx, msg, sizeof(msg) - 1) == 0)
		return reply(conn, MHD_HTTP_OK, CONTENT_TEXT, "ok\n", 3);

	/* The callback promised a NUL; do not trust it with our buffer's end. */
	msg[sizeof(msg) - 1] = '\0';
	for (n = 0; msg[n]; n++)
		if ((unsigned char)msg[n] < 0x20)
			msg[n] = ' ';
	if (n == 0)
		n = (size_t)snprintf(msg, sizeof(msg) - 1, "not %s", what);
	msg[n++] = '\n';
	log_debug("health: /%sz failing: %.*s", what, (int)(n - 1), msg);
	return reply(conn, MHD_HTTP_SERVICE_UNAVAILABLE, CONTENT_TEXT, msg, n);
}

static enum MHD_Result serve_metrics(struct MHD_Connection *conn)
{
	struct MHD_Response *resp = NULL;
	enum MHD_Result r = MHD_NO;
	char *text = NULL;
	size_t len = 0;

	if (metrics_render(&text, &len) < 0)
		return reply(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, CONTENT_TEXT,
			     "metrics unavailable\n", 20);
	/* The response owns text from here, and frees it with free(). */
	resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(text);
		return MHD_NO;
	}
	if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, CONTENT_METRICS) == MHD_YES)
		r = MHD_queue_response(conn, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return r;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
			      const char *method, const char *version, const char *upload_data,
			      size_t *upload_data_size, void **con_cls)
{
	struct health *h = cls;
	static const char not_found[] = "not found: try /healthz, /readyz or /metrics\n";
	static const char not_found_probes[] = "not found: try /healthz or /readyz\n";
	static const char not_found_metrics[] = "not found: try /metrics\n";
	static const char not_allowed[] = "method not allowed: use GET or HEAD\n";

	/* A body is never wanted: answer at once and let libmicrohttpd drop it. */
	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, CONTENT_TEXT, not_allowed,
			     sizeof(not_allowed) - 1);
	if ((h->ops.paths & HEALTH_PROBES) && !strcmp(url, "/healthz"))
		return check(conn, h->ops.live, h->ops.ctx, "live");
	if ((h->ops.paths & HEALTH_PROBES) && !strcmp(url, "/readyz"))
		return check(conn, h->ops.ready, h->ops.ctx, "ready");
	if ((h->ops.paths & HEALTH_METRICS) && !strcmp(url, "/metrics"))
		return serve_metrics(conn);
	if (!(h->ops.paths & HEALTH_METRICS))
		return reply(conn, MHD_HTTP_NOT_FOUND, CONTENT_TEXT, not_found_probes,
			     sizeof(not_found_probes) - 1);
	if (!(h->ops.paths & HEALTH_PROBES))
		return reply(conn, MHD_HTTP_NOT_FOUND, CONTENT_TEXT, not_found_metrics,
			     sizeof(not_found_metrics) - 1);
	return reply(conn, MHD_HTTP_NOT_FOUND, CONTENT_TEXT, not_found, sizeof(not_found) - 1);
}

/*
 * Splits "host:port", "[v6]:port" or ":port" and resolves it to one socket
 * address. Returns 0 and a list in ret_ai (caller frees with freeaddrinfo),
 * or -EINVAL with err naming the problem.
 */
static int resolve(const char *addr, struct addrinfo **ret_ai, struct err *err)
{
	struct addrinfo hints = { 0 };
	struct addrinfo *ai = NULL;
	char host[256];
	const char *colon, *hstart, *hend, *port;
	size_t hlen;
	int r;

	if (!addr || !*addr)
		return err_set(err, ERR_INVALID, EINVAL, "metrics address is empty");
	if (addr[0] == '[') {
		hstart = addr + 1;
		hend = strchr(hstart, ']');
		if (!hend || hend[1] != ':')
			goto bad;
		colon = hend + 1;
	} else {
		hstart = addr;
		colon = strrchr(addr, ':');
		if (!colon || memchr(addr, ':', (size_t)(colon - addr)))
			goto bad;
		hend = colon;
	}
	port = colon + 1;
	hlen = (size_t)(hend - hstart);
	if (!*port || strspn(port, "0123456789") != strlen(port) || strlen(port) > 5 ||
	    hlen >= sizeof(host))
		goto bad;
	memcpy(host, hstart, hlen);
	host[hlen] = '\0';

	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	/* ":port" means every IPv4 address, as "0.0.0.0:port" does. */
	hints.ai_family = hlen == 0 ? AF_INET : AF_UNSPEC;
	r = getaddrinfo(hlen == 0 ? NULL : host, port, &hints, &ai);
	if (r != 0)
		return err_set(err, ERR_INVALID, EINVAL, "metrics address %s: %s", addr,
			       gai_strerror(r));
	*ret_ai = ai;
	return 0;
bad:
	return err_set(err, ERR_INVALID, EINVAL,
		       "metrics address '%s' is not host:port, [ipv6]:port or :port", addr);
}

struct health *health_start(const char *addr, const struct health_ops *ops, struct err *err)
{
	struct addrinfo *ai = NULL;
	struct health *h = NULL;
	const union MHD_DaemonInfo *info;
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
	unsigned limit, per_ip;

	if (resolve(addr, &ai, err) < 0)
		goto fail;
	h = calloc(1, sizeof(*h));
	if (!h) {
		err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto fail;
	}
	if (ops)
		h->ops = *ops;
	if (!h->ops.paths)
		h->ops.paths = HEALTH_PROBES | HEALTH_METRICS;
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	if (h->ops.paths & HEALTH_PROBES) {
		flags |= MHD_USE_THREAD_PER_CONNECTION;
		limit = HEALTH_PROBE_CONNECTIONS;
		/* Alone, the probes come from the node; beside /metrics, anyone's share is bounded.
		 */
		per_ip = (h->ops.paths & HEALTH_METRICS) ? HEALTH_PER_IP_CONNECTIONS : 0;
	} else {
		flags |= MHD_USE_AUTO;
		limit = HEALTH_METRICS_CONNECTIONS;
		per_ip = HEALTH_PER_IP_CONNECTIONS;
	}

	/*
	 * The logger comes first, or libmicrohttpd complains through its own
	 * logger about the order. The port argument is ignored when
	 * MHD_OPTION_SOCK_ADDR is given.
	 */
	h->daemon = MHD_start_daemon(
	    flags, 0, NULL, NULL, handle, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
	    MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT, limit,
	    MHD_OPTION_PER_IP_CONNECTION_LIMIT, per_ip, MHD_OPTION_CONNECTION_TIMEOUT,
	    (unsigned)HEALTH_CONN_TIMEOUT, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
	    (size_t)HEALTH_CONN_MEMORY, MHD_OPTION_END);
	if (!h->daemon) {
		err_set(err, ERR_INTERNAL, EADDRNOTAVAIL,
			"cannot listen on %s (in use, or not an address of this host)", addr);
		goto fail;
	}
	info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
	if (!info || info->port == 0) {
		err_set(err, ERR_INTERNAL, EIO, "metrics server on %s has no port", addr);
		goto fail;
	}
	h->port = info->port;
	freeaddrinfo(ai);
	return h;
fail:
	if (ai)
		freeaddrinfo(ai);
	health_stop(h);
	return NULL;
}

int health_port(const struct health *h)
{
	return h ? h->port : -1;
}

void health_stop(struct health *h)
{
	if (!h)
		return;
	if (h->daemon)
		MHD_stop_daemon(h->daemon);
	free(h);
}
