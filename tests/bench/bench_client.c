/*
 * bench_client: drives a provider over its socket the way the Secrets Store
 * CSI Driver does, through driver_call() (the code the `mount` subcommand
 * uses), from N threads on one channel, and prints one JSON object.
 *
 *   bench_client version --socket S --threads 4 --seconds 2
 *   bench_client mount --socket S --threads 16 --requests 2000 --apps 500 --pods 4
 *   bench_client mount --socket S --threads 4 --requests 2000 --rate 16.7 ...
 *   bench_client mount --socket S --threads 600 --requests 600 --apps 600 --secrets-bytes 1048576
 *
 * --secrets-bytes N sends a `secrets` field of N bytes (a JSON object of one
 * string), as a nodePublishSecretRef Secret that large would.
 *
 * --rate R paces the calls: call i starts no earlier than i/R seconds after
 * the first, as kubelet's republishing spreads Mounts over time.
 *
 * Request i goes to app (i mod K), pod ((i div K) mod P): a first pass over
 * K x P requests touches every app before any app's second pod. Apps are
 * service accounts "<prefix>-<n>" in --namespace. Never prints or keeps a
 * Mount answer: it holds a private key, wiped as soon as it is counted.
 */
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "driver.h"
#include "provider.pb-c.h"

#define METHOD_MOUNT   "/v1alpha1.CSIDriverProvider/Mount"
#define METHOD_VERSION "/v1alpha1.CSIDriverProvider/Version"
#define MAX_THREADS    1024

static const char usage[] =
    "Usage: bench_client version|mount --socket S [--threads N] [--requests M | --seconds S]\n"
    "         [--apps K] [--pods P] [--namespace NS] [--scopes \"a b\"] [--prefix APP]\n"
    "         [--offset I] [--timeout-ms T] [--rate CALLS_PER_S] [--secrets-bytes N]\n"
    "Prints {count, errors, median_us, p99_us, throughput_per_s, ...} as JSON.\n";

struct opts {
	bool mount;
	const char *socket;
	long threads, requests, apps, pods, offset, timeout_ms, secrets_bytes;
	double seconds, rate;
	const char *namespace_name, *scopes, *prefix;
};

struct request {
	uint8_t *data;
	size_t len;
};

struct shared {
	const struct opts *o;
	struct driver *d;
	struct request *reqs; /* K x P for mount, 1 for version */
	size_t nreqs;
	atomic_long next; /* next request index */
	atomic_long errors;
	atomic_int first_status;  /* status of the first failure, -1: none */
	atomic_long statuses[17]; /* calls answered with each gRPC status */
	double deadline;	  /* seconds mode: stop issuing after this time */
	double t0;		  /* when the first call was due */
};

struct worker {
	pthread_t thread;
	struct shared *sh;
	double *lat_us; /* grows */
	size_t n, cap;
	int rc;
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_until(double t)
{
	struct timespec ts = { .tv_sec = (time_t)t,
			       .tv_nsec = (long)((t - (double)(time_t)t) * 1e9) };

	if (ts.tv_nsec > 999999999) /* rounding */
		ts.tv_nsec = 999999999;
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/* This process's user + system CPU seconds so far. */
static double cpu_s(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru) < 0)
		return 0;
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int parse_long(const char *s, long min, long *ret)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min)
		return -EINVAL;
	*ret = v;
	return 0;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
	*o = (struct opts){ .threads = 1,
			    .requests = 1000,
			    .apps = 1,
			    .pods = 1,
			    .timeout_ms = 120000,
			    .namespace_name = "bench",
			    .prefix = "app" };
	if (argc < 2)
		return -EINVAL;
	if (!strcmp(argv[1], "mount"))
		o->mount = true;
	else if (strcmp(argv[1], "version"))
		return -EINVAL;
	for (int i = 2; i < argc; i++) {
		const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		int r = 0;

		if (!v)
			return -EINVAL;
		i++;
		if (!strcmp(k, "--socket"))
			o->socket = v;
		else if (!strcmp(k, "--threads"))
			r = parse_long(v, 1, &o->threads);
		else if (!strcmp(k, "--requests"))
			r = parse_long(v, 1, &o->requests);
		else if (!strcmp(k, "--seconds")) {
			char *end;

			o->seconds = strtod(v, &end);
			if (end == v || *end || o->seconds <= 0)
				r = -EINVAL;
		} else if (!strcmp(k, "--rate")) {
			char *end;

			o->rate = strtod(v, &end);
			if (end == v || *end || o->rate <= 0)
				r = -EINVAL;
		} else if (!strcmp(k, "--apps"))
			r = parse_long(v, 1, &o->apps);
		else if (!strcmp(k, "--pods"))
			r = parse_long(v, 1, &o->pods);
		else if (!strcmp(k, "--offset"))
			r = parse_long(v, 0, &o->offset);
		else if (!strcmp(k, "--timeout-ms"))
			r = parse_long(v, 1, &o->timeout_ms);
		else if (!strcmp(k, "--namespace"))
			o->namespace_name = v;
		else if (!strcmp(k, "--scopes"))
			o->scopes = v;
		else if (!strcmp(k, "--prefix"))
			o->prefix = v;
		else if (!strcmp(k, "--secrets-bytes"))
			r = parse_long(v, 0, &o->secrets_bytes);
		else
			return -EINVAL;
		if (r < 0)
			return r;
	}
	if (!o->socket || o->threads > MAX_THREADS)
		return -EINVAL;
	return 0;
}

/* The attributes JSON as driver v1.6 builds it (Go sorts map keys). Malloc'd, or NULL. */
static char *attributes(const struct opts *o, long app, long pod)
{
	char sa[128], name[192], uid[64];
	json_t *a;
	char *out;

	snprintf(sa, sizeof(sa), "%s-%ld", o->prefix, app);
	snprintf(name, sizeof(name), "%s-%ld-pod-%ld", o->prefix, app, pod);
	snprintf(uid, sizeof(uid), "00000000-0000-4000-8000-%012ld", app * 10000 + pod);
	a = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "secretProviderClass", "bench",
		      "csi.storage.k8s.io/ephemeral", "true", "csi.storage.k8s.io/pod.name", name,
		      "csi.storage.k8s.io/pod.namespace", o->namespace_name,
		      "csi.storage.k8s.io/pod.uid", uid, "csi.storage.k8s.io/serviceAccount.name",
		      sa);
	if (!a)
		return NULL;
	if (o->scopes && json_object_set_new(a, "scopes", json_string(o->scopes)) < 0) {
		json_decref(a);
		return NULL;
	}
	out = json_dumps(a, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(a);
	return out;
}

/* {"bench":"xx...x"}, n bytes long (at least the braces and the key), or NULL. */
static char *secrets_of(long n)
{
	static const char head[] = "{\"bench\":\"", tail[] = "\"}";
	size_t min = sizeof(head) - 1 + sizeof(tail) - 1, len = (size_t)n > min ? (size_t)n : min;
	char *s = malloc(len + 1);

	if (!s)
		return NULL;
	memcpy(s, head, sizeof(head) - 1);
	memset(s + sizeof(head) - 1, 'x', len - min);
	memcpy(s + len - (sizeof(tail) - 1), tail, sizeof(tail));
	return s;
}

static int pack_mount(const char *attrs, const char *secrets, struct request *ret)
{
	V1alpha1__MountRequest req = V1ALPHA1__MOUNT_REQUEST__INIT;

	req.attributes = (char *)attrs;
	req.secrets = (char *)(secrets ? secrets : "null");
	req.target_path = (char *)"/var/lib/kubelet/pods/bench/volumes/mp";
	req.permission = (char *)"420";
	ret->len = v1alpha1__mount_request__get_packed_size(&req);
	ret->data = malloc(ret->len ? ret->len : 1);
	if (!ret->data)
		return -ENOMEM;
	v1alpha1__mount_request__pack(&req, ret->data);
	return 0;
}

static int build_requests(const struct opts *o, struct shared *sh)
{
	if (!o->mount) {
		V1alpha1__VersionRequest req = V1ALPHA1__VERSION_REQUEST__INIT;

		req.version = (char *)"v1alpha1";
		sh->nreqs = 1;
		sh->reqs = calloc(1, sizeof(*sh->reqs));
		if (!sh->reqs)
			return -ENOMEM;
		sh->reqs[0].len = v1alpha1__version_request__get_packed_size(&req);
		sh->reqs[0].data = malloc(sh->reqs[0].len + 1);
		if (!sh->reqs[0].data)
			return -ENOMEM;
		v1alpha1__version_request__pack(&req, sh->reqs[0].data);
		return 0;
	}
	sh->nreqs = (size_t)o->apps * (size_t)o->pods;
	sh->reqs = calloc(sh->nreqs, sizeof(*sh->reqs));
	if (!sh->reqs)
		return -ENOMEM;
	char *secrets = o->secrets_bytes > 0 ? secrets_of(o->secrets_bytes) : NULL;

	if (o->secrets_bytes > 0 && !secrets)
		return -ENOMEM;
	for (size_t i = 0; i < sh->nreqs; i++) {
		long app = (long)(i % (size_t)o->apps), pod = (long)(i / (size_t)o->apps);
		char *attrs = attributes(o, o->offset + app, pod);
		int r;

		if (!attrs) {
			free(secrets);
			return -ENOMEM;
		}
		r = pack_mount(attrs, secrets, &sh->reqs[i]);
		free(attrs);
		if (r < 0) {
			free(secrets);
			return r;
		}
	}
	free(secrets);
	return 0;
}

static int record(struct worker *w, double us)
{
	if (w->n == w->cap) {
		size_t cap = w->cap ? w->cap * 2 : 1024;
		double *p = realloc(w->lat_us, cap * sizeof(*p));

		if (!p)
			return -ENOMEM;
		w->lat_us = p;
		w->cap = cap;
	}
	w->lat_us[w->n++] = us;
	return 0;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct shared *sh = w->sh;
	const char *method = sh->o->mount ? METHOD_MOUNT : METHOD_VERSION;

	for (;;) {
		long i = atomic_fetch_add(&sh->next, 1);
		const struct request *rq;
		uint8_t *payload = NULL;
		char *message = NULL;
		size_t plen = 0;
		int status = -1, r;
		double t;

		if (sh->deadline > 0 ? now_s() >= sh->deadline : i >= sh->o->requests)
			break;
		if (sh->o->rate > 0)
			sleep_until(sh->t0 + (double)i / sh->o->rate);
		rq = &sh->reqs[(size_t)i % sh->nreqs];
		t = now_s();
		r = driver_call(sh->d, method, rq->data, rq->len, sh->o->timeout_ms, &status,
				&message, &payload, &plen);
		t = now_s() - t;
		if (r == 0 && status >= 0 && status < 17)
			atomic_fetch_add(&sh->statuses[status], 1);
		if (r < 0 || status != 0 || (sh->o->mount && plen == 0)) {
			int none = -1;

			atomic_fetch_add(&sh->errors, 1);
			atomic_compare_exchange_strong(&sh->first_status, &none,
						       r < 0 ? 1000 - r : status);
		} else if (record(w, t * 1e6) < 0) {
			w->rc = -ENOMEM;
		}
		if (payload) {
			OPENSSL_cleanse(payload, plen); /* a Mount answer holds a private key */
			free(payload);
		}
		free(message);
		if (w->rc < 0)
			break;
	}
	return NULL;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted v. */
static double percentile(const double *v, size_t n, int pct)
{
	size_t rank = (n * (size_t)pct + 99) / 100;

	if (!n)
		return 0;
	return v[rank ? rank - 1 : 0];
}

int main(int argc, char **argv)
{
	struct opts o;
	struct shared sh = { 0 };
	struct worker *w = NULL;
	double *all = NULL, t0, wall, cpu0;
	size_t total = 0;
	int ret = 1;

	if (parse_args(argc, argv, &o) < 0) {
		fputs(usage, stderr);
		return 2;
	}
	/*
	 * The driver is a Go program: its heap is not handed back to the kernel
	 * call by call. glibc, left to itself, trims a thread's arena whenever
	 * freed Mount answers (4.6 KB) leave its top free, and with 16 threads
	 * each trim is a TLB shootdown across the client. On a 2-core VM that
	 * cost the client about 20 us per Mount and nothing per Version, so the
	 * ratio measured the client. Keeping freed memory measures the provider.
	 */
	mallopt(M_TRIM_THRESHOLD, 64 << 20);
	sh.o = &o;
	atomic_init(&sh.next, 0);
	atomic_init(&sh.errors, 0);
	atomic_init(&sh.first_status, -1);
	if (build_requests(&o, &sh) < 0) {
		fprintf(stderr, "bench_client: out of memory\n");
		goto out;
	}
	sh.d = driver_new(o.socket);
	w = calloc((size_t)o.threads, sizeof(*w));
	if (!sh.d || !w) {
		fprintf(stderr, "bench_client: cannot set up the channel\n");
		goto out;
	}
	cpu0 = cpu_s();
	t0 = sh.t0 = now_s();
	if (o.seconds > 0)
		sh.deadline = t0 + o.seconds;
	for (long i = 0; i < o.threads; i++) {
		w[i].sh = &sh;
		if (pthread_create(&w[i].thread, NULL, worker_main, &w[i]) != 0) {
			fprintf(stderr, "bench_client: pthread_create failed\n");
			o.threads = i;
			break;
		}
	}
	for (long i = 0; i < o.threads; i++) {
		pthread_join(w[i].thread, NULL);
		total += w[i].n;
	}
	wall = now_s() - t0;
	all = malloc((total ? total : 1) * sizeof(*all));
	if (!all)
		goto out;
	total = 0;
	for (long i = 0; i < o.threads; i++) {
		if (w[i].n)
			memcpy(all + total, w[i].lat_us, w[i].n * sizeof(*all));
		total += w[i].n;
	}
	qsort(all, total, sizeof(*all), cmp_double);
	printf("{\"mode\":\"%s\",\"threads\":%ld,\"count\":%zu,\"errors\":%ld,"
	       "\"first_error_status\":%d,\"median_us\":%.1f,\"p99_us\":%.1f,"
	       "\"max_us\":%.1f,\"throughput_per_s\":%.1f,\"wall_s\":%.3f,"
	       "\"client_cpu_s\":%.3f,\"statuses\":{",
	       o.mount ? "mount" : "version", o.threads, total, atomic_load(&sh.errors),
	       atomic_load(&sh.first_status), percentile(all, total, 50),
	       percentile(all, total, 99), total ? all[total - 1] : 0.0,
	       wall > 0 ? (double)total / wall : 0.0, wall, cpu_s() - cpu0);
	for (int i = 0, n = 0; i < 17; i++)
		if (atomic_load(&sh.statuses[i]))
			printf("%s\"%d\":%ld", n++ ? "," : "", i, atomic_load(&sh.statuses[i]));
	printf("}}\n");
	ret = atomic_load(&sh.errors) ? 3 : 0;
out:
	if (w)
		for (long i = 0; i < o.threads; i++)
			free(w[i].lat_us);
	free(w);
	free(all);
	driver_free(sh.d);
	for (size_t i = 0; sh.reqs && i < sh.nreqs; i++)
		free(sh.reqs[i].data);
	free(sh.reqs);
	return ret;
}
