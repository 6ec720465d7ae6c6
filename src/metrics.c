/*
 * metrics: a small fixed registry of counters and one histogram, rendered in
 * the Prometheus text format. Series are found by (name, labels) under one
 * mutex, through a hashed index (every Mount counts); the number of series
 * is bounded, so a flood of label values cannot grow memory. Labels carry
 * endpoint templates and kinds, never secrets.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "metrics.h"

#define MAX_SERIES 256
#define INDEX_SIZE 512 /* slots of the series index: a power of two above MAX_SERIES */
#define NBUCKETS   12

struct series {
	char name[64];
	char labels[192];
	double value;
};

static const double bounds[NBUCKETS] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
					 0.1,	0.25,	0.5,   1,    5,	    30 };

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct series series[MAX_SERIES];
static size_t nseries;
static unsigned long long hist_counts[NBUCKETS];
static unsigned long long hist_total;
static double hist_sum;
static unsigned short index_of[INDEX_SIZE]; /* series number + 1; 0: a free slot */

/* Finds or adds a series; call with lock held. NULL when the registry is full. */
static struct series *get(const char *name, const char *labels)
{
	size_t i = hash_str(hash_str(HASH_INIT, name), labels) & (INDEX_SIZE - 1);
	struct series *s;

	for (; index_of[i]; i = (i + 1) & (INDEX_SIZE - 1)) {
		s = &series[index_of[i] - 1];
		if (!strcmp(s->name, name) && !strcmp(s->labels, labels))
			return s;
	}
	if (nseries == MAX_SERIES)
		return NULL;
	s = &series[nseries++];
	snprintf(s->name, sizeof(s->name), "%s", name);
	snprintf(s->labels, sizeof(s->labels), "%s", labels);
	s->value = 0;
	index_of[i] = (unsigned short)nseries;
	return s;
}

static void add(const char *name, const char *labels, double v, int set)
{
	struct series *s;

	pthread_mutex_lock(&lock);
	s = get(name, labels);
	if (s)
		s->value = set ? v : s->value + v;
	pthread_mutex_unlock(&lock);
}

/* Label values are our own templates; still drop quotes and backslashes. */
static void clean(char *dst, size_t len, const char *src)
{
	size_t i = 0;

	for (; src && *src && i + 1 < len; src++)
		if (*src != '"' && *src != '\\' && *src != '\n')
			dst[i++] = *src;
	dst[i] = '\0';
}

void metrics_upstream_request(const char *service, const char *endpoint, long status)
{
	char s[32], e[96], labels[192];

	clean(s, sizeof(s), service);
	clean(e, sizeof(e), endpoint);
	snprintf(labels, sizeof(labels), "service=\"%s\",endpoint=\"%s\",status=\"%ld\"", s, e,
		 status);
	add("mpcsi_upstream_requests_total", labels, 1, 0);
}

void metrics_upstream_retry(const char *service, const char *endpoint)
{
	char s[32], e[96], labels[192];

	clean(s, sizeof(s), service);
	clean(e, sizeof(e), endpoint);
	snprintf(labels, sizeof(labels), "service=\"%s\",endpoint=\"%s\"", s, e);
	add("mpcsi_upstream_retries_total", labels, 1, 0);
}

void metrics_mount(const char *result, const char *kind, double seconds)
{
	char r[16], k[32], labels[192];

	clean(r, sizeof(r), result);
	clean(k, sizeof(k), kind);
	snprintf(labels, sizeof(labels), "result=\"%s\",kind=\"%s\"", r, k);
	add("mpcsi_mounts_total", labels, 1, 0);

	pthread_mutex_lock(&lock);
	for (int i = 0; i < NBUCKETS; i++)
		if (seconds <= bounds[i])
			hist_counts[i]++;
	hist_total++;
	hist_sum += seconds;
	pthread_mutex_unlock(&lock);
}

void metrics_cache(bool hit)
{
	add(hit ? "mpcsi_cache_hits_total" : "mpcsi_cache_misses_total", "", 1, 0);
}

void metrics_cache_size(long entries)
{
	add("mpcsi_cache_entries", "", (double)entries, 1);
}

void metrics_key_derived(void)
{
	add("mpcsi_keys_derived_total", "", 1, 0);
}

void metrics_jwks_upload(void)
{
	add("mpcsi_jwks_uploads_total", "", 1, 0);
}

void metrics_client_deactivated(const char *reason)
{
	char labels[96];

	snprintf(labels, sizeof(labels), "reason=\"%s\"", reason);
	add("mpcsi_clients_deactivated_total", labels, 1, 0);
}

void metrics_consumer_refused(void)
{
	add("mpcsi_consumer_grants_refused_total", "", 1, 0);
}

void metrics_key_propagation(double seconds)
{
	add("mpcsi_key_propagation_waits_total", "", 1, 0);
	add("mpcsi_key_propagation_seconds_total", "", seconds, 0);
}

void metrics_epoch(int64_t epoch)
{
	add("mpcsi_key_epoch", "", (double)epoch, 1);
}

static const char *help_of(const char *name)
{
	static const struct {
		const char *name, *help;
	} helps[] = {
		{ "mpcsi_upstream_requests_total", "Requests to DigDir and Maskinporten." },
		{ "mpcsi_upstream_retries_total", "Retried requests to DigDir and Maskinporten." },
		{ "mpcsi_mounts_total", "Mount calls by result and error kind." },
		{ "mpcsi_cache_hits_total", "Mounts answered from the client cache." },
		{ "mpcsi_cache_misses_total", "Mounts that needed DigDir." },
		{ "mpcsi_cache_entries", "Clients in the cache." },
		{ "mpcsi_keys_derived_total", "RSA keys derived." },
		{ "mpcsi_jwks_uploads_total", "JWKS uploads to DigDir." },
		{ "mpcsi_key_epoch", "The current key epoch." },
		{ "mpcsi_clients_deactivated_total",
		  "Clients this provider made and could not use (duplicates of a create race), "
		  "deactivated at DigDir." },
		{ "mpcsi_consumer_grants_refused_total",
		  "Consumer grants of exposed scopes that DigDir refused (skipped)." },
		{ "mpcsi_key_propagation_waits_total",
		  "Flights that waited for Maskinporten to accept a new client or key." },
		{ "mpcsi_key_propagation_seconds_total",
		  "Time flights waited for Maskinporten to accept a new client or key." },
	};

	for (size_t i = 0; i < sizeof(helps) / sizeof(helps[0]); i++)
		if (!strcmp(helps[i].name, name))
			return helps[i].help;
	return "";
}

static int is_gauge(const char *name)
{
	return !strcmp(name, "mpcsi_cache_entries") || !strcmp(name, "mpcsi_key_epoch");
}

int metrics_render(char **ret_text, size_t *ret_len)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (!f)
		return -ENOMEM;

	pthread_mutex_lock(&lock);
	for (size_t i = 0; i < nseries; i++) {
		int first = 1;

		for (size_t j = 0; j < i; j++)
			if (!strcmp(series[j].name, series[i].name))
				first = 0;
		if (first)
			fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", series[i].name,
				help_of(series[i].name), series[i].name,
				is_gauge(series[i].name) ? "gauge" : "counter");
		if (series[i].labels[0])
			fprintf(f, "%s{%s} %.17g\n", series[i].name, series[i].labels,
				series[i].value);
		else
			fprintf(f, "%s %.17g\n", series[i].name, series[i].value);
	}
	fprintf(f, "# HELP mpcsi_mount_duration_seconds Time to answer a Mount.\n"
		   "# TYPE mpcsi_mount_duration_seconds histogram\n");
	for (int i = 0; i < NBUCKETS; i++)
		fprintf(f, "mpcsi_mount_duration_seconds_bucket{le=\"%g\"} %llu\n", bounds[i],
			hist_counts[i]);
	fprintf(f,
		"mpcsi_mount_duration_seconds_bucket{le=\"+Inf\"} %llu\n"
		"mpcsi_mount_duration_seconds_sum %.6f\n"
		"mpcsi_mount_duration_seconds_count %llu\n",
		hist_total, hist_sum, hist_total);
	pthread_mutex_unlock(&lock);

	if (fclose(f) != 0) {
		free(buf);
		return -ENOMEM;
	}
	*ret_text = buf;
	*ret_len = len;
	return 0;
}

void metrics_reset(void)
{
	pthread_mutex_lock(&lock);
	nseries = 0;
	memset(index_of, 0, sizeof(index_of));
	memset(hist_counts, 0, sizeof(hist_counts));
	hist_total = 0;
	hist_sum = 0;
	pthread_mutex_unlock(&lock);
}
