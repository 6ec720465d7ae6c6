/*
 * server: the gRPC server on a Unix socket, on the gRPC C core. The only
 * module that touches the gRPC server API. It knows the method names and
 * moves bytes; the handlers (provider, through mount) decode and answer them.
 *
 * Threads: one completion-queue thread accepts calls and runs the fast
 * handlers (which must not block), a pool of workers runs the slow ones, so a
 * slow cold Mount never delays a warm one.
 */
#ifndef MCP_SERVER_H
#define MCP_SERVER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* gRPC status codes we answer with (values of grpc_status_code). */
enum server_code {
	SERVER_OK = 0,
	SERVER_CANCELLED = 1,
	SERVER_UNKNOWN = 2,
	SERVER_INVALID_ARGUMENT = 3,
	SERVER_DEADLINE_EXCEEDED = 4,
	SERVER_NOT_FOUND = 5,
	SERVER_ALREADY_EXISTS = 6,
	SERVER_PERMISSION_DENIED = 7,
	SERVER_RESOURCE_EXHAUSTED = 8,
	SERVER_FAILED_PRECONDITION = 9,
	SERVER_ABORTED = 10,
	SERVER_UNIMPLEMENTED = 12,
	SERVER_INTERNAL = 13,
	SERVER_UNAVAILABLE = 14,
	SERVER_UNAUTHENTICATED = 16,
};

/*
 * A handler's answer. On SERVER_OK, payload is the packed response message
 * (malloc'd; the server wipes and frees it: it may hold key material). On
 * any other code, message is the status details sent to the caller.
 */
struct server_reply {
	enum server_code code;
	char message[1024];
	uint8_t *payload;
	size_t len;
};

/*
 * Handlers get the request bytes (borrowed for the call) and the caller's
 * deadline on the clock_now_ms() clock. A fast handler returns 0 when it
 * answered, or 1 to hand the call to a worker. Handing over, it may leave in
 * *ret_work what it made of the request (owned by the server from then on,
 * released with server_ops.work_free) and its size in *ret_work_bytes: the
 * request bytes themselves are wiped and released before the call waits, so
 * a queued call holds only what the worker needs. The slow handler gets that
 * work (NULL when the fast handler left none).
 */
typedef int (*server_fast_fn)(void *ctx, const uint8_t *req, size_t len, int64_t deadline_ms,
			      struct server_reply *ret, void **ret_work, size_t *ret_work_bytes);
typedef void (*server_slow_fn)(void *ctx, void *work, int64_t deadline_ms,
			       struct server_reply *ret);

struct server_ops {
	server_fast_fn version; /* /v1alpha1.CSIDriverProvider/Version: fast only */
	server_fast_fn mount_fast;
	server_slow_fn mount_slow; /* /v1alpha1.CSIDriverProvider/Mount */
	void (*work_free)(void *work);
	/*
	 * Optional: called once on stop, when in-flight calls have had
	 * grace_ms; it must make the slow handlers return soon (cancel their
	 * upstream requests). May be NULL.
	 */
	void (*cancel)(void *ctx);
	void *ctx;
};

struct server_config {
	const char *socket_path;
	unsigned socket_mode;	 /* chmod of the socket after bind, e.g. 0600 */
	long socket_wait_ms;	 /* a live provider on socket_path: wait this long for it to go */
	long max_recv_bytes;	 /* largest request accepted; larger ones are refused, logged */
	long max_send_bytes;	 /* largest response (the driver's default limit is 4 MiB) */
	int workers;		 /* most threads for slow handlers, started as needed */
	long worker_idle_ms;	 /* a worker beyond the first leaves after this idle; 0: never */
	int queue_max;		 /* calls waiting for a worker before RESOURCE_EXHAUSTED */
	size_t queue_max_bytes;	 /* bytes of work waiting for a worker, the same; 0: no bound */
	long default_timeout_ms; /* deadline of calls that carry none */
	long grace_ms;		 /* on stop: time in-flight calls get before ops->cancel */
	long idle_timeout_ms;	 /* a connection without calls for this long is closed; 0: never */
};

/*
 * Takes the socket path, binds, serves until *stop becomes non-zero (an
 * atomic, not a volatile sig_atomic_t: a signal handler on any thread, or
 * another thread, sets it while this one reads it), then
 * drains: no new calls, queued calls are told to retry, running calls get
 * grace_ms, then ops->cancel, then the rest are cancelled. on_ready (may be
 * NULL) runs once the socket accepts calls.
 *
 * The socket path is taken only from nobody: a socket no process listens on
 * is removed, anything else but a socket is refused (-EEXIST), and while a
 * live provider answers there, this one waits up to socket_wait_ms for it to
 * go, then refuses (-EADDRINUSE). The new socket appears at the path at once
 * (bound under a private name, then renamed into place), and on exit it is
 * removed only if the path still holds that very socket (device and inode),
 * so an instance that exits never takes a newer one's socket away.
 *
 * Returns 0; -ECANCELED when *stop came before it served; or a negative
 * errno when it could not start.
 */
int server_run(const struct server_config *config, const struct server_ops *ops,
	       const atomic_int *stop, void (*on_ready)(void *ctx), void *ready_ctx);

#endif
