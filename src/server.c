/*
 * server: the provider's gRPC API on a Unix socket, on the gRPC C core. The
 * only module that touches the gRPC server API: it accepts calls, checks
 * sizes and deadlines, hands request bytes to the handlers and sends their
 * answers back. It never decodes a message and never logs a payload: Mount
 * requests carry service account tokens and Mount answers a private key.
 *
 * One thread serves the completion queue: it accepts calls and runs the fast
 * handlers inline. Calls a fast handler cannot answer go to a queue, bounded
 * in calls and in bytes, served by a pool of worker threads, so a slow cold
 * Mount never delays a warm one. A queued call holds what the fast handler
 * made of the request, never the request bytes (a Mount's `secrets` alone
 * may be a megabyte). Workers start when a queued call finds none idle, up to the
 * configured number, so a node starting many new apps at once gets a flight
 * for each of them, not a few at a time; all but one leave again after
 * worker_idle_ms without work, so a node at rest keeps one.
 * A worker answers with grpc_call_start_batch (thread-safe); the batch's
 * completion comes back on the one queue, where the call is released.
 *
 * The socket path belongs to one live provider at a time: this one takes it
 * only from nobody, and gives it back only if it still holds its own socket,
 * so during a rolling update the old instance's exit never removes the new
 * one's socket (gRPC itself unlinks its listening path on shutdown, so the
 * socket is bound under a private name and renamed into place).
 */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#include "clock.h"
#include "log.h"
#include "server.h"
#include "wipe.h"

#define METHOD_VERSION "/v1alpha1.CSIDriverProvider/Version"
#define METHOD_MOUNT   "/v1alpha1.CSIDriverProvider/Mount"

/*
 * ThreadSanitizer sees no order in gRPC's queue (Debian's gRPC is built
 * without it): a call a worker hands to grpc_call_start_batch and gets back
 * on the queue thread looks raced. These two mark that hand-off for
 * `make tsan` and are nothing otherwise.
 */
#if defined(__SANITIZE_THREAD__)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define TSAN_HANDED_TO_GRPC(tag) __tsan_release(tag)
#define TSAN_BACK_FROM_GRPC(tag) __tsan_acquire(tag)
#else
#define TSAN_HANDED_TO_GRPC(tag) ((void)(tag))
#define TSAN_BACK_FROM_GRPC(tag) ((void)(tag))
#endif

/* The queue is polled this often so that the loop notices *stop. */
#define POLL_MS 200

/* Our own refusals start as the provider's answers do. */
#define PREFIX "maskinporten: "

/*
 * gRPC's own limit on a request, above ours: up to it, an oversized request
 * reaches dispatch and is refused with our message and a log line; beyond
 * it the core refuses it alone, without either.
 */
#define CORE_RECV_FACTOR 4

/* What a queued call is counted at besides its work: ours and gRPC's call state. */
#define CALL_OVERHEAD_BYTES (sizeof(struct call) + 2048)

/* After ops->cancel, how long calls still get before they are cancelled outright. */
#define CANCEL_WAIT_MS 3000

/* Requests received since the last malloc_trim() after which a quiet moment trims. */
#define TRIM_AFTER_BYTES (4 * 1024 * 1024)

/* How often a start-up waiting for another provider's socket looks again. */
#define SOCKET_WAIT_POLL_MS 200

/* What a completion-queue tag stands for: each call has one pending at a time. */
enum tag_kind {
	TAG_NEW_VERSION, /* a requested Version call arrived */
	TAG_NEW_MOUNT,	 /* a requested Mount call arrived */
	TAG_NEW_OTHER,	 /* a call to a method we do not serve arrived */
	TAG_REPLY_DONE,	 /* our answer's batch completed: release the call */
	TAG_SHUTDOWN,	 /* grpc_server_shutdown_and_notify finished */
};

struct server;

/* One call, from the request for it to the completion of our answer. */
struct call {
	enum tag_kind kind;
	struct server *srv;
	grpc_call *call;
	gpr_timespec deadline;
	grpc_call_details details; /* unregistered calls only */
	grpc_metadata_array metadata;
	grpc_byte_buffer *payload;
	grpc_slice request;	    /* SECRET: the request bytes, wiped before release */
	void *work;		    /* what the fast handler handed to a worker (ops->work_free) */
	size_t work_bytes;	    /* its size, for the queue's byte bound */
	int64_t deadline_ms;	    /* the deadline on the clock_now_ms() clock */
	struct server_reply reply;  /* reply.payload is SECRET for Mount */
	grpc_byte_buffer *response; /* owns reply.payload once it is sent */
	grpc_slice status_details;
	int cancelled;
	struct call *next; /* link in the worker queue */
};

struct server {
	const struct server_config *config;
	const struct server_ops *ops;
	grpc_server *server;
	grpc_completion_queue *cq;
	void *method_version;
	void *method_mount;
	bool shutting_down;
	bool bound; /* socket_path holds our socket: dev and ino say which */
	dev_t sock_dev;
	ino_t sock_ino;
	char private_path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* bound here first */
	_Atomic long live_calls; /* calls accepted and not yet released */
	const atomic_int *stop;
	size_t recv_since_trim; /* request bytes since the last malloc_trim (CQ thread) */
	atomic_bool worked;	/* a worker answered a call since the last malloc_trim */

	/* The worker queue, under lock. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct call *head, *tail;
	int queued;
	size_t queued_bytes; /* work_bytes + CALL_OVERHEAD_BYTES of each queued call */
	int idle;	     /* workers waiting for a call */
	bool workers_exit;
	struct worker *workers; /* config->workers slots */
	int nthreads;		/* workers running */
};

/* A worker slot. started and done change under the server's lock. */
struct worker {
	struct server *srv;
	pthread_t thread;
	bool started; /* a thread was created here and not yet joined */
	bool done;    /* that thread has left its loop */
};

static struct call *call_new(struct server *srv, enum tag_kind kind)
{
	struct call *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->kind = kind;
	c->srv = srv;
	c->request = grpc_empty_slice();
	c->status_details = grpc_empty_slice();
	grpc_call_details_init(&c->details);
	grpc_metadata_array_init(&c->metadata);
	return c;
}

/* Wipes and releases the request bytes: they may hold service account tokens. */
static void call_drop_request(struct call *c)
{
	if (GRPC_SLICE_LENGTH(c->request) > 0)
		wipe(GRPC_SLICE_START_PTR(c->request), GRPC_SLICE_LENGTH(c->request));
	grpc_slice_unref(c->request);
	c->request = grpc_empty_slice();
}

/* Releases everything a call holds, wiping the request and the answer. */
static void call_free(struct call *c)
{
	if (!c)
		return;
	call_drop_request(c);
	if (c->work && c->srv->ops->work_free)
		c->srv->ops->work_free(c->work);
	grpc_slice_unref(c->status_details);
	if (c->reply.payload) {
		wipe(c->reply.payload, c->reply.len);
		free(c->reply.payload);
	}
	grpc_byte_buffer_destroy(c->payload);
	/* The last reference to the answer's slice wipes it (wipe_answer). */
	grpc_byte_buffer_destroy(c->response);
	grpc_call_details_destroy(&c->details);
	grpc_metadata_array_destroy(&c->metadata);
	if (c->call)
		grpc_call_unref(c->call);
	free(c);
}

/* Asks the core for the next call of one kind. Returns 0 or -errno. */
static int arm(struct server *srv, enum tag_kind kind)
{
	struct call *c = call_new(srv, kind);
	grpc_call_error e;

	if (!c)
		return -ENOMEM;
	if (kind == TAG_NEW_OTHER)
		e = grpc_server_request_call(srv->server, &c->call, &c->details, &c->metadata,
					     srv->cq, srv->cq, c);
	else
		e = grpc_server_request_registered_call(
		    srv->server, kind == TAG_NEW_VERSION ? srv->method_version : srv->method_mount,
		    &c->call, &c->deadline, &c->metadata, &c->payload, srv->cq, srv->cq, c);
	if (e != GRPC_CALL_OK) {
		log_error("gRPC: requesting a call failed (%d)", (int)e);
		call_free(c);
		return -EIO;
	}
	return 0;
}

/* Frees an answer handed to gRPC, once its last reference goes: it may hold a key. */
static void wipe_answer(void *p, size_t len)
{
	wipe(p, len);
	free(p);
}

/*
 * Sends the call's reply: SEND_INITIAL_METADATA, SEND_MESSAGE (on OK),
 * SEND_STATUS_FROM_SERVER, RECV_CLOSE_ON_SERVER. Thread-safe: workers call
 * it. The completion (TAG_REPLY_DONE) releases the call on the CQ thread.
 */
static void send_reply(struct call *c)
{
	grpc_op ops[4];
	grpc_slice body;
	grpc_call *call;
	size_t n = 0;
	grpc_call_error e;

	memset(ops, 0, sizeof(ops));
	ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
	n++;
	if (c->reply.code == SERVER_OK && c->reply.len > (size_t)c->srv->config->max_send_bytes) {
		log_error("gRPC: answer of %zu bytes is over the limit of %ld", c->reply.len,
			  c->srv->config->max_send_bytes);
		c->reply.code = SERVER_RESOURCE_EXHAUSTED;
		snprintf(c->reply.message, sizeof(c->reply.message),
			 "provider answer of %zu bytes is larger than max %ld", c->reply.len,
			 c->srv->config->max_send_bytes);
	}
	if (c->reply.code == SERVER_OK) {
		/* gRPC takes the answer as it is, no copy; wipe_answer frees it. */
		body = c->reply.payload
			   ? grpc_slice_new_with_len(c->reply.payload, c->reply.len, wipe_answer)
			   : grpc_empty_slice();
		c->reply.payload = NULL;
		c->response = grpc_raw_byte_buffer_create(&body, 1);
		grpc_slice_unref(body);
		ops[n].op = GRPC_OP_SEND_MESSAGE;
		ops[n].data.send_message.send_message = c->response;
		n++;
		c->status_details = grpc_empty_slice();
	} else {
		c->reply.message[sizeof(c->reply.message) - 1] = '\0';
		c->status_details = grpc_slice_from_copied_string(c->reply.message);
	}
	ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
	ops[n].data.send_status_from_server.status = (grpc_status_code)c->reply.code;
	ops[n].data.send_status_from_server.status_details = &c->status_details;
	n++;
	ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
	ops[n].data.recv_close_on_server.cancelled = &c->cancelled;
	n++;

	c->kind = TAG_REPLY_DONE;
	call = c->call;
	TSAN_HANDED_TO_GRPC(c);
	e = grpc_call_start_batch(call, ops, n, c, NULL);
	if (e != GRPC_CALL_OK) {
		/* Nothing will complete: cancel, and let the CQ thread release it. */
		log_error("gRPC: sending an answer failed (%d)", (int)e);
		grpc_call_cancel(call, NULL);
		c->reply.code = SERVER_INTERNAL;
		TSAN_HANDED_TO_GRPC(c);
		e = grpc_call_start_batch(call, NULL, 0, c, NULL);
		if (e != GRPC_CALL_OK)
			log_error("gRPC: call leaked after failed batch (%d)", (int)e);
	}
}

static void reply_status(struct call *c, enum server_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void reply_status(struct call *c, enum server_code code, const char *fmt, ...)
{
	va_list ap;

	c->reply.code = code;
	va_start(ap, fmt);
	vsnprintf(c->reply.message, sizeof(c->reply.message), fmt, ap);
	va_end(ap);
	send_reply(c);
}

/*
 * Converts the caller's deadline to the clock_now_ms() clock. Returns the
 * remaining milliseconds (<= 0: already passed), default_timeout_ms when
 * the call has none.
 */
static int64_t remaining_ms(const struct server *srv, gpr_timespec deadline)
{
	gpr_timespec now, left;
	int64_t ms;

	if (deadline.clock_type == GPR_TIMESPAN || deadline.tv_sec == INT64_MAX ||
	    gpr_time_cmp(deadline, gpr_inf_future(deadline.clock_type)) >= 0)
		return srv->config->default_timeout_ms;
	/* On the monotonic clock, as every deadline of ours: a set wall clock moves none. */
	deadline = gpr_convert_clock_type(deadline, GPR_CLOCK_MONOTONIC);
	now = gpr_now(GPR_CLOCK_MONOTONIC);
	left = gpr_time_sub(deadline, now);
	/* Clamp far deadlines to a day: nothing here runs that long. */
	if (left.tv_sec > 24 * 3600)
		return 24 * 3600 * 1000;
	ms = left.tv_sec * 1000 + left.tv_nsec / 1000000;
	return ms;
}

static void *worker_main(void *arg);

/*
 * Starts one more worker in a free slot, first joining workers that have
 * left (they hold no lock by then, so the join returns at once); lock held.
 * Returns 0 or -errno.
 */
static int add_worker(struct server *srv)
{
	struct worker *free_slot = NULL;
	int r;

	if (srv->nthreads >= srv->config->workers)
		return -EAGAIN;
	for (int i = 0; i < srv->config->workers; i++) {
		struct worker *w = &srv->workers[i];

		if (w->started && w->done) {
			pthread_join(w->thread, NULL);
			w->started = w->done = false;
		}
		if (!w->started && !free_slot)
			free_slot = w;
	}
	if (!free_slot)
		return -EAGAIN;
	free_slot->srv = srv;
	r = -pthread_create(&free_slot->thread, NULL, worker_main, free_slot);
	if (r == 0) {
		free_slot->started = true;
		srv->nthreads++;
	}
	return r;
}

/*
 * Waits for a queued call; lock held. False when the worker should leave
 * instead: the server stops, or it idled worker_idle_ms and is not the last.
 */
static bool wait_for_call(struct server *srv)
{
	long idle_ms = srv->config->worker_idle_ms;
	int64_t until = clock_now_ms() + (idle_ms > 0 ? idle_ms : 0);

	while (!srv->head && !srv->workers_exit) {
		if (idle_ms <= 0 || srv->nthreads <= 1)
			clock_wait_until(&srv->cond, &srv->lock, 0);
		else if (!clock_wait_until(&srv->cond, &srv->lock, until) && !srv->head &&
			 srv->nthreads > 1)
			return false;
	}
	return srv->head != NULL;
}

/*
 * Puts a call on the worker queue. Returns false when the queue is full, in
 * calls or in bytes, with what it held in *ret_queued and *ret_bytes. One
 * call is taken into an empty queue whatever its size (it is bounded by
 * max_recv_bytes), so a large request is never refused forever.
 */
static bool enqueue(struct server *srv, struct call *c, int *ret_queued, size_t *ret_bytes)
{
	const struct server_config *cfg = srv->config;
	size_t cost = c->work_bytes + CALL_OVERHEAD_BYTES;
	bool ok = false;

	pthread_mutex_lock(&srv->lock);
	*ret_queued = srv->queued;
	*ret_bytes = srv->queued_bytes;
	if (srv->queued < cfg->queue_max && (cfg->queue_max_bytes == 0 || srv->queued == 0 ||
					     srv->queued_bytes + cost <= cfg->queue_max_bytes)) {
		c->next = NULL;
		if (srv->tail)
			srv->tail->next = c;
		else
			srv->head = c;
		srv->tail = c;
		srv->queued++;
		srv->queued_bytes += cost;
		ok = true;
		log_debug("gRPC: a Mount waits for a worker (%d queued, %zu KiB)", srv->queued,
			  srv->queued_bytes / 1024);
		/* Busy workers may be waiting on a flight for hundreds of ms: add one. */
		if (srv->queued > srv->idle && add_worker(srv) == -EAGAIN && srv->idle == 0)
			log_debug("gRPC: all %d workers busy, %d Mounts queued", srv->nthreads,
				  srv->queued);
		pthread_cond_signal(&srv->cond);
	}
	pthread_mutex_unlock(&srv->lock);
	return ok;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct server *srv = w->srv;
	struct call *c;

	pthread_setname_np(pthread_self(), "mp-worker"); /* for top -H and the tests */
	for (;;) {
		pthread_mutex_lock(&srv->lock);
		srv->idle++;
		c = wait_for_call(srv) ? srv->head : NULL;
		srv->idle--;
		if (c) {
			srv->head = c->next;
			if (!srv->head)
				srv->tail = NULL;
			srv->queued--;
			srv->queued_bytes -= c->work_bytes + CALL_OVERHEAD_BYTES;
		} else {
			w->done = true;
			srv->nthreads--;
		}
		pthread_mutex_unlock(&srv->lock);
		if (!c)
			return NULL;

		/* Calls that waited past their deadline are not worth starting. */
		if (clock_now_ms() >= c->deadline_ms) {
			reply_status(c, SERVER_DEADLINE_EXCEEDED,
				     PREFIX "deadline passed while the Mount waited for a worker");
			continue;
		}
		srv->ops->mount_slow(srv->ops->ctx, c->work, c->deadline_ms, &c->reply);
		/* The work is done with: release it now, not when the answer is sent. */
		if (c->work && srv->ops->work_free)
			srv->ops->work_free(c->work);
		c->work = NULL;
		atomic_store(&srv->worked, true);
		send_reply(c);
	}
}

/* A new call arrived: check it, answer it inline or queue it for a worker. */
static void dispatch(struct server *srv, struct call *c)
{
	const struct server_config *cfg = srv->config;
	grpc_byte_buffer_reader reader;
	server_fast_fn fast;
	int64_t left;
	size_t len, queued_bytes = 0;
	int queued = 0;
	int r;

	srv->live_calls++;
	if (c->kind == TAG_NEW_OTHER) {
		char method[256];
		size_t mlen = GRPC_SLICE_LENGTH(c->details.method);

		if (mlen >= sizeof(method))
			mlen = sizeof(method) - 1;
		memcpy(method, GRPC_SLICE_START_PTR(c->details.method), mlen);
		method[mlen] = '\0';
		log_debug("gRPC: unknown method %s", method);
		reply_status(c, SERVER_UNIMPLEMENTED, PREFIX "unknown method %s", method);
		return;
	}

	left = remaining_ms(srv, c->deadline);
	if (left <= 0) {
		reply_status(c, SERVER_DEADLINE_EXCEEDED,
			     PREFIX "deadline passed before the call began");
		return;
	}
	c->deadline_ms = clock_now_ms() + left;

	/* A NULL payload is an empty message, a valid empty request. */
	if (c->payload) {
		len = grpc_byte_buffer_length(c->payload);
		srv->recv_since_trim += len;
		if (len > (size_t)cfg->max_recv_bytes) {
			log_warn("gRPC: refused a %s request of %zu bytes, over the limit of %ld "
				 "(--max-message)",
				 c->kind == TAG_NEW_VERSION ? "Version" : "Mount", len,
				 cfg->max_recv_bytes);
			reply_status(c, SERVER_RESOURCE_EXHAUSTED,
				     PREFIX "request of %zu bytes is larger than this provider's "
					    "limit of %ld bytes (--max-message): the Mount carries "
					    "too large a nodePublishSecretRef Secret or too many "
					    "attributes",
				     len, cfg->max_recv_bytes);
			return;
		}
		if (!grpc_byte_buffer_reader_init(&reader, c->payload)) {
			reply_status(c, SERVER_INTERNAL, PREFIX "cannot read the request");
			return;
		}
		c->request = grpc_byte_buffer_reader_readall(&reader);
		grpc_byte_buffer_reader_destroy(&reader);
		grpc_byte_buffer_destroy(c->payload);
		c->payload = NULL;
	}

	fast = c->kind == TAG_NEW_VERSION ? srv->ops->version : srv->ops->mount_fast;
	r = fast ? fast(srv->ops->ctx, GRPC_SLICE_START_PTR(c->request),
			GRPC_SLICE_LENGTH(c->request), c->deadline_ms, &c->reply, &c->work,
			&c->work_bytes)
		 : 1;
	/* Answered or handed over, the request bytes are needed no more. */
	call_drop_request(c);
	if (r == 0) {
		send_reply(c);
		return;
	}
	if (c->kind == TAG_NEW_VERSION || !srv->ops->mount_slow) {
		reply_status(c, SERVER_INTERNAL, PREFIX "no handler for this call");
		return;
	}
	if (!enqueue(srv, c, &queued, &queued_bytes)) {
		log_warn("gRPC: %d Mounts (%zu KiB) wait for a worker, answering "
			 "RESOURCE_EXHAUSTED",
			 queued, queued_bytes / 1024);
		reply_status(c, SERVER_RESOURCE_EXHAUSTED,
			     PREFIX "provider busy: %d Mounts (%zu KiB) wait for a worker, the "
				    "most it queues is %d Mounts or %zu KiB; the kubelet retries",
			     queued, queued_bytes / 1024, cfg->queue_max,
			     cfg->queue_max_bytes / 1024);
	}
}

/* Handles one completion. Returns true when the shutdown notification came. */
static bool handle_event(struct server *srv, grpc_event ev)
{
	struct call *c = ev.tag;

	TSAN_BACK_FROM_GRPC(c);
	if (c->kind == TAG_SHUTDOWN)
		return true;
	if (c->kind == TAG_REPLY_DONE) {
		if (!ev.success || c->cancelled)
			log_debug("gRPC: call ended without a clean close (client gone?)");
		srv->live_calls--;
		call_free(c);
		return false;
	}
	/* A request for a new call: it failed only because we are shutting down. */
	if (!ev.success) {
		call_free(c);
		return false;
	}
	if (!srv->shutting_down && arm(srv, c->kind) < 0)
		log_error("gRPC: cannot accept further %s calls",
			  c->kind == TAG_NEW_OTHER ? "unknown" : "provider");
	dispatch(srv, c);
	return false;
}

static gpr_timespec deadline_in(long ms)
{
	return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

/* Sleeps ms (a signal may end it early: the caller looks at *stop). */
static void pause_ms(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/*
 * Whether a process accepts connections on the socket at path: 1 yes, 0 no
 * (nobody listens, or the file is gone), or -errno when it cannot tell.
 */
static int socket_is_live(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, r;

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	r = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 ? 1 : -errno;
	close(fd);
	/* A full backlog (EAGAIN) still means someone listens. */
	if (r == -EAGAIN || r == -EINPROGRESS)
		return 1;
	if (r == -ECONNREFUSED || r == -ENOENT)
		return 0;
	return r;
}

/*
 * Makes room at path for our socket: nothing there, or a socket nobody
 * listens on (removed). Anything else but a socket is refused (-EEXIST). A
 * live provider is waited for until wait_until_ms, then refused (-EADDRINUSE);
 * *stop ends the wait (-ECANCELED). *waited says whether a wait was logged.
 */
static int clear_socket_path(struct server *srv, int64_t wait_until_ms, bool *waited)
{
	const char *path = srv->config->socket_path;
	struct stat st;
	int live;

	for (;;) {
		if (lstat(path, &st) < 0)
			return errno == ENOENT ? 0 : -errno;
		if (!S_ISSOCK(st.st_mode)) {
			log_error(
			    "socket path %s exists and is not a socket: refusing to remove it",
			    path);
			return -EEXIST;
		}
		live = socket_is_live(path);
		if (live < 0) {
			log_error("cannot tell whether a provider answers on %s: %s", path,
				  strerror(-live));
			return live;
		}
		if (live == 0) {
			if (unlink(path) < 0 && errno != ENOENT)
				return -errno;
			log_info("removed stale socket %s (nobody listened on it)", path);
			return 0;
		}
		if (atomic_load(srv->stop))
			return -ECANCELED;
		if (clock_now_ms() >= wait_until_ms) {
			log_error(
			    "another provider is serving on %s%s: refusing to take its socket "
			    "away (stop it first; --socket-wait says how long to wait for it)",
			    path, *waited ? " and did not stop in time" : "");
			return -EADDRINUSE;
		}
		if (!*waited)
			log_warn(
			    "another provider is serving on %s: waiting up to %ld ms for it to "
			    "stop",
			    path, srv->config->socket_wait_ms);
		*waited = true;
		pause_ms(SOCKET_WAIT_POLL_MS);
	}
}

/*
 * Moves our socket from its private name to the socket path without ever
 * replacing a live one: renameat2(RENAME_NOREPLACE) fails while the path
 * exists, and then the path is cleared (or waited for) and the move tried
 * again. Returns 0 or -errno.
 */
static int claim_socket_path(struct server *srv)
{
	const char *path = srv->config->socket_path;
	int64_t until = clock_now_ms() + srv->config->socket_wait_ms;
	bool waited = false, noreplace = true;
	struct stat st;
	int r;

	for (;;) {
		r = clear_socket_path(srv, until, &waited);
		if (r < 0)
			return r;
		if (noreplace) {
			r = renameat2(AT_FDCWD, srv->private_path, AT_FDCWD, path,
				      RENAME_NOREPLACE);
			/* A file system without RENAME_NOREPLACE: a plain rename, just checked. */
			if (r < 0 && (errno == EINVAL || errno == ENOSYS)) {
				noreplace = false;
				continue;
			}
		} else {
			r = rename(srv->private_path, path);
		}
		if (r < 0 && errno == EEXIST)
			continue; /* another one came between: look at it again */
		if (r < 0) {
			r = -errno;
			log_error("cannot move the socket to %s: %s", path, strerror(-r));
			return r;
		}
		break;
	}
	if (lstat(path, &st) < 0)
		return -errno;
	srv->sock_dev = st.st_dev;
	srv->sock_ino = st.st_ino;
	srv->bound = true;
	if (waited)
		log_info("the other provider released %s: taking it over", path);
	return 0;
}

/* Removes the socket at the path, but only when it is still the one we made. */
static void release_socket_path(struct server *srv)
{
	const char *path = srv->config->socket_path;
	struct stat st;

	if (!srv->bound)
		return;
	srv->bound = false;
	if (lstat(path, &st) < 0)
		return;
	if (!S_ISSOCK(st.st_mode) || st.st_dev != srv->sock_dev || st.st_ino != srv->sock_ino) {
		log_info("%s is another provider's socket now: left in place", path);
		return;
	}
	if (unlink(path) < 0)
		log_warn("cannot remove socket %s: %s", path, strerror(errno));
}

/* Answers every call still waiting for a worker: the server is stopping. */
static void flush_queue(struct server *srv)
{
	struct call *c, *next;

	pthread_mutex_lock(&srv->lock);
	c = srv->head;
	srv->head = srv->tail = NULL;
	srv->queued = 0;
	srv->queued_bytes = 0;
	pthread_mutex_unlock(&srv->lock);
	for (; c; c = next) {
		next = c->next;
		reply_status(c, SERVER_UNAVAILABLE,
			     PREFIX "the provider is shutting down; the kubelet retries");
	}
}

static void stop_workers(struct server *srv)
{
	int n = srv->workers ? srv->config->workers : 0;

	pthread_mutex_lock(&srv->lock);
	srv->workers_exit = true;
	pthread_cond_broadcast(&srv->cond);
	pthread_mutex_unlock(&srv->lock);
	/*
	 * No call is queued or arrives now, so no worker is being added, and
	 * only this thread (the one that added them) reads started.
	 */
	for (int i = 0; i < n; i++) {
		if (srv->workers[i].started)
			pthread_join(srv->workers[i].thread, NULL);
		srv->workers[i].started = srv->workers[i].done = false;
	}
}

/*
 * Stops accepting and answers the queued calls (they have not started: the
 * kubelet retries them). Running calls get grace_ms, then ops->cancel ends
 * their upstream requests and they get CANCEL_WAIT_MS to answer with that;
 * whatever still runs then is cancelled outright. Once no call runs, the
 * connections clients keep open are closed too instead of waited for.
 */
static void drain(struct server *srv)
{
	struct call shutdown_tag = { .kind = TAG_SHUTDOWN };
	enum { GRACE, CANCELLING, FORCED } phase = GRACE;
	gpr_timespec until = deadline_in(srv->config->grace_ms);
	bool done = false;
	grpc_event ev;

	srv->shutting_down = true;
	grpc_server_shutdown_and_notify(srv->server, srv->cq, &shutdown_tag);
	flush_queue(srv);
	/*
	 * The shutdown tag may come before our calls are released (their client
	 * went away): workers still running them get the same grace and cancel.
	 */
	while (!done || srv->live_calls > 0) {
		if (phase != FORCED && srv->live_calls == 0) {
			grpc_server_cancel_all_calls(srv->server);
			phase = FORCED;
		}
		ev = grpc_completion_queue_next(
		    srv->cq, phase == FORCED ? deadline_in(POLL_MS) : until, NULL);
		if (ev.type == GRPC_OP_COMPLETE) {
			done |= handle_event(srv, ev);
		} else if (ev.type == GRPC_QUEUE_TIMEOUT && phase == GRACE) {
			log_warn("gRPC: %ld calls still running after %ld ms, cancelling their "
				 "upstream requests",
				 srv->live_calls, srv->config->grace_ms);
			if (srv->ops->cancel)
				srv->ops->cancel(srv->ops->ctx);
			until = deadline_in(CANCEL_WAIT_MS);
			phase = CANCELLING;
		} else if (ev.type == GRPC_QUEUE_TIMEOUT && phase == CANCELLING) {
			log_warn("gRPC: %ld calls still running, cancelling them", srv->live_calls);
			grpc_server_cancel_all_calls(srv->server);
			phase = FORCED;
		} else if (ev.type == GRPC_QUEUE_SHUTDOWN) {
			break;
		}
	}
	/* The shutdown tag came once every call was released: workers are idle. */
	stop_workers(srv);
}

/* The private name the socket is bound under before it is renamed into place. */
static int private_path(struct server *srv)
{
	const char *path = srv->config->socket_path;
	uint32_t tag = 0;
	int n;

	/* Unique across pid namespaces too: the old and the new pod may both be pid 1. */
	if (getrandom(&tag, sizeof(tag), GRND_NONBLOCK) != (ssize_t)sizeof(tag))
		tag = (uint32_t)clock_now_ms() ^ (uint32_t)getpid();
	n = snprintf(srv->private_path, sizeof(srv->private_path), "%s.%08x", path, tag);
	if (n < 0 || (size_t)n >= sizeof(srv->private_path)) {
		log_error("socket path %s is too long (it is bound as %s.XXXXXXXX first, which "
			  "must fit in %zu bytes)",
			  path, path, sizeof(srv->private_path) - 1);
		return -ENAMETOOLONG;
	}
	return 0;
}

static int start(struct server *srv)
{
	const struct server_config *cfg = srv->config;
	grpc_server_credentials *creds = NULL;
	grpc_arg args[3];
	grpc_channel_args chargs = { .num_args = 2, .args = args };
	char addr[sizeof(((struct sockaddr_un *)0)->sun_path) + 8];
	long core_recv;
	mode_t old_umask;
	int port, r;

	if (!cfg->socket_path || !*cfg->socket_path ||
	    strlen(cfg->socket_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		log_error("socket path is empty or longer than a Unix socket path may be");
		return -ENAMETOOLONG;
	}
	r = private_path(srv);
	if (r < 0)
		return r;

	core_recv = cfg->max_recv_bytes > INT32_MAX / CORE_RECV_FACTOR
			? INT32_MAX
			: cfg->max_recv_bytes * CORE_RECV_FACTOR;
	args[0].type = GRPC_ARG_INTEGER;
	args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
	args[0].value.integer = (int)core_recv;
	args[1].type = GRPC_ARG_INTEGER;
	args[1].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
	args[1].value.integer =
	    cfg->max_send_bytes > INT32_MAX ? INT32_MAX : (int)cfg->max_send_bytes;
	if (cfg->idle_timeout_ms > 0) {
		/* The driver reconnects on its next call; idle clients hold nothing here. */
		args[2].type = GRPC_ARG_INTEGER;
		args[2].key = (char *)GRPC_ARG_MAX_CONNECTION_IDLE_MS;
		args[2].value.integer =
		    cfg->idle_timeout_ms > INT32_MAX ? INT32_MAX : (int)cfg->idle_timeout_ms;
		chargs.num_args = 3;
	}

	srv->cq = grpc_completion_queue_create_for_next(NULL);
	srv->server = grpc_server_create(&chargs, NULL);
	if (!srv->cq || !srv->server)
		return -ENOMEM;
	grpc_server_register_completion_queue(srv->server, srv->cq, NULL);
	srv->method_version = grpc_server_register_method(
	    srv->server, METHOD_VERSION, NULL, GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
	srv->method_mount = grpc_server_register_method(
	    srv->server, METHOD_MOUNT, NULL, GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
	if (!srv->method_version || !srv->method_mount)
		return -EIO;

	/*
	 * Bound under the private name, created 0600 by the umask and given its
	 * mode there, so it appears at the path whole, never briefly open to all.
	 */
	snprintf(addr, sizeof(addr), "unix:%s", srv->private_path);
	creds = grpc_insecure_server_credentials_create();
	old_umask = umask(077);
	port = grpc_server_add_http2_port(srv->server, addr, creds);
	umask(old_umask);
	grpc_server_credentials_release(creds);
	if (port == 0) {
		log_error("cannot listen on %s (bound as %s first)", cfg->socket_path,
			  srv->private_path);
		return -EADDRNOTAVAIL;
	}
	if (chmod(srv->private_path, cfg->socket_mode) < 0) {
		r = -errno;
		log_error("chmod %04o %s: %s", cfg->socket_mode, srv->private_path, strerror(-r));
		return r;
	}
	return claim_socket_path(srv);
}

/*
 * Gives memory back to the system after work: the heap grows with a burst
 * (a Mount's request may be a megabyte) and glibc keeps freed pages. Done
 * only at a quiet moment (no completion for POLL_MS), so never in a warm
 * Mount's way.
 */
static void trim_if_worked(struct server *srv)
{
	if (srv->recv_since_trim < TRIM_AFTER_BYTES && !atomic_load(&srv->worked))
		return;
	srv->recv_since_trim = 0;
	atomic_store(&srv->worked, false);
	malloc_trim(0);
}

/*
 * Serves completions until *stop, on the calling thread alone. A second
 * poller on the same queue made each Mount at the republish rate (one every
 * few tens of ms) bounce between the two threads, for several times the
 * context switches and CPU per Mount (the bench notes the figures). A warm
 * Mount costs the poller little (the bench's warm.provider_cpu rows), so one
 * thread keeps up; everything slower goes to the workers.
 */
static void serve_completions(struct server *srv)
{
	grpc_event ev;

	while (!atomic_load(srv->stop)) {
		ev = grpc_completion_queue_next(srv->cq, deadline_in(POLL_MS), NULL);
		if (ev.type == GRPC_OP_COMPLETE)
			handle_event(srv, ev);
		else if (ev.type == GRPC_QUEUE_TIMEOUT)
			trim_if_worked(srv);
		else if (ev.type == GRPC_QUEUE_SHUTDOWN)
			break;
	}
}

int server_run(const struct server_config *config, const struct server_ops *ops,
	       const atomic_int *stop, void (*on_ready)(void *ctx), void *ready_ctx)
{
	struct server srv = { .config = config, .ops = ops };
	bool started = false;
	grpc_event ev;
	int r = 0;

	if (config->workers < 1 || config->queue_max < 0 || !ops->version || !ops->mount_fast)
		return -EINVAL;
	srv.stop = stop;
	grpc_init();
	pthread_mutex_init(&srv.lock, NULL);
	clock_cond_init(&srv.cond); /* wait_for_call's deadline */

	r = start(&srv);
	if (r < 0)
		goto out;

	srv.workers = calloc((size_t)config->workers, sizeof(*srv.workers));
	if (!srv.workers) {
		r = -ENOMEM;
		goto out;
	}
	/* One worker from the start: a failed pthread_create later only slows. */
	pthread_mutex_lock(&srv.lock);
	r = add_worker(&srv);
	pthread_mutex_unlock(&srv.lock);
	if (r < 0)
		goto out;

	grpc_server_start(srv.server);
	started = true;
	if (arm(&srv, TAG_NEW_VERSION) < 0 || arm(&srv, TAG_NEW_MOUNT) < 0 ||
	    arm(&srv, TAG_NEW_OTHER) < 0) {
		r = -EIO;
		goto out;
	}
	log_info("serving on %s (up to %d workers, queue %d calls or %zu KiB)", config->socket_path,
		 config->workers, config->queue_max, config->queue_max_bytes / 1024);
	if (on_ready)
		on_ready(ready_ctx);

	serve_completions(&srv);
	log_info("stopping: draining calls for up to %ld ms", config->grace_ms);

out:
	if (started)
		drain(&srv);
	else if (srv.server) {
		/* Never started: shutdown still has to be notified before destroy. */
		struct call tag = { .kind = TAG_SHUTDOWN };

		grpc_server_shutdown_and_notify(srv.server, srv.cq, &tag);
		do
			ev = grpc_completion_queue_next(srv.cq, gpr_inf_future(GPR_CLOCK_REALTIME),
							NULL);
		while (ev.type == GRPC_OP_COMPLETE && ev.tag != &tag);
	}
	stop_workers(&srv);
	free(srv.workers);
	if (srv.server)
		grpc_server_destroy(srv.server);
	if (srv.cq) {
		grpc_completion_queue_shutdown(srv.cq);
		do {
			ev = grpc_completion_queue_next(srv.cq, gpr_inf_future(GPR_CLOCK_REALTIME),
							NULL);
			if (ev.type == GRPC_OP_COMPLETE && ev.tag &&
			    ((struct call *)ev.tag)->kind != TAG_SHUTDOWN)
				call_free(ev.tag);
		} while (ev.type != GRPC_QUEUE_SHUTDOWN);
		grpc_completion_queue_destroy(srv.cq);
	}
	release_socket_path(&srv);
	pthread_cond_destroy(&srv.cond);
	pthread_mutex_destroy(&srv.lock);
	grpc_shutdown();
	return r;
}
