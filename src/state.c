/*
 * state: the node's non-secret memory of its apps, one JSON file written
 * whole (temporary file, fsync, rename, fsync of the directory), so that a
 * reader or a crash sees the old file or the new one, never a mix.
 *
 *	{"version": 1, "cluster": "dev",
 *	 "apps": {"dev:ns:app": {"client_id": "...", "scopes": "a:b c:d",
 *	                         "pending": false, "refused": [...], "updated": 1764120000}}}
 *
 * Must never hold key material, and never trust what it reads: each entry is
 * checked for shape and bounds on load, and anything else is dropped.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "state.h"

#define MAX_ID	    128
#define MAX_SCOPES  8192
#define MAX_DESC    512
#define MAX_REFUSED 256

struct state {
	pthread_mutex_t lock;
	char *path; /* NULL: memory only */
	char *cluster;
	json_t *apps; /* description -> entry */
};

static bool id_ok(const char *s)
{
	size_t n = strlen(s);

	if (!n || n > MAX_ID)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '-' || *s == '_' || *s == '.'))
			return false;
	return true;
}

/* A checked copy of one entry as read from the file, or NULL when it is not one. */
static json_t *checked_entry(const char *description, const json_t *v)
{
	const char *id = NULL, *scopes = NULL;
	json_t *refused = NULL, *out, *r;
	int pending = 0;
	json_int_t updated = 0;
	size_t i;

	if (strlen(description) > MAX_DESC || !strchr(description, ':') ||
	    json_unpack((json_t *)v, "{s?s, s?s, s?b, s?o, s?I}", "client_id", &id, "scopes",
			&scopes, "pending", &pending, "refused", &refused, "updated", &updated) < 0)
		return NULL;
	if ((id && !id_ok(id)) || (scopes && strlen(scopes) > MAX_SCOPES) ||
	    (refused && (!json_is_array(refused) || json_array_size(refused) > MAX_REFUSED)))
		return NULL;
	json_array_foreach(refused, i, r)
	{
		const char *scope, *orgno, *reason;

		if (json_unpack(r, "{s:s, s:s, s:s}", "scope", &scope, "orgno", &orgno, "reason",
				&reason) < 0)
			return NULL;
	}
	out = json_pack("{s:b, s:I}", "pending", pending, "updated", updated);
	if (out && id)
		json_object_set_new(out, "client_id", json_string(id));
	if (out && scopes)
		json_object_set_new(out, "scopes", json_string(scopes));
	if (out && json_array_size(refused))
		json_object_set_new(out, "refused", json_deep_copy(refused));
	return out;
}

/* Reads the file into st->apps; an unusable file leaves it empty, saying why. */
static void load(struct state *st)
{
	const char *key, *cluster = NULL;
	json_t *doc = NULL, *apps = NULL, *v, *e;
	json_error_t jerr;
	json_int_t version = 0;
	struct stat sb;
	size_t bad = 0;
	int fd;

	fd = open(st->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		if (errno != ENOENT)
			log_warn("state file %s: cannot open it (%s): starting with no memory of "
				 "clients",
				 st->path, strerror(errno));
		return;
	}
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode) || sb.st_size > STATE_MAX_BYTES) {
		log_warn("state file %s: not a regular file of at most %d bytes: ignored", st->path,
			 STATE_MAX_BYTES);
		goto out;
	}
	doc = json_loadfd(fd, JSON_REJECT_DUPLICATES, &jerr);
	if (!doc ||
	    json_unpack(doc, "{s:I, s?s, s:o}", "version", &version, "cluster", &cluster, "apps",
			&apps) < 0 ||
	    !json_is_object(apps)) {
		log_warn("state file %s: corrupt (%s): ignored, it is written anew", st->path,
			 doc ? "not a state document" : jerr.text);
		goto out;
	}
	if (version != STATE_VERSION) {
		log_warn("state file %s: written by another version (format %lld, this one reads "
			 "%d): ignored, it is written anew",
			 st->path, (long long)version, STATE_VERSION);
		goto out;
	}
	if (!cluster || strcmp(cluster, st->cluster) != 0) {
		log_warn("state file %s: written for cluster \"%.100s\", not \"%s\": ignored",
			 st->path, cluster ? cluster : "", st->cluster);
		goto out;
	}
	json_object_foreach(apps, key, v)
	{
		if (json_object_size(st->apps) >= STATE_MAX_APPS || !(e = checked_entry(key, v))) {
			bad++;
			continue;
		}
		json_object_set_new(st->apps, key, e);
	}
	if (bad)
		log_warn("state file %s: %zu entries ignored (malformed or over %d)", st->path, bad,
			 STATE_MAX_APPS);
	log_info("state file %s: remembers %zu app(s); each client is checked at DigDir before "
		 "use",
		 st->path, json_object_size(st->apps));
out:
	json_decref(doc);
	close(fd);
}

char *state_default_path(const char *socket_path)
{
	char *copy = strdup(socket_path ? socket_path : ""), *out = NULL;

	if (copy && asprintf(&out, "%s/maskinporten.state", dirname(copy)) < 0)
		out = NULL;
	free(copy);
	return out;
}

struct state *state_open(const char *path, const char *cluster)
{
	struct state *st = calloc(1, sizeof(*st));

	if (!st)
		return NULL;
	st->apps = json_object();
	st->cluster = strdup(cluster ? cluster : "");
	if (!st->apps || !st->cluster || (path && *path && !(st->path = strdup(path)))) {
		state_close(st);
		return NULL;
	}
	pthread_mutex_init(&st->lock, NULL);
	if (st->path)
		load(st);
	return st;
}

void state_close(struct state *st)
{
	if (!st)
		return;
	json_decref(st->apps);
	free(st->cluster);
	free(st->path);
	pthread_mutex_destroy(&st->lock);
	free(st);
}

/* Writes the whole file anew (lock held). Best effort: a failure is logged, memory stays. */
static int save(struct state *st)
{
	json_t *doc = NULL;
	char *text = NULL, *tmp = NULL, *dir = NULL;
	int fd = -1, dfd = -1, r = 0;
	size_t len, off = 0;

	if (!st->path)
		return 0;
	doc = json_pack("{s:i, s:s, s:O}", "version", STATE_VERSION, "cluster", st->cluster, "apps",
			st->apps);
	text = doc ? json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
	if (!text || asprintf(&tmp, "%s.tmp.%ld", st->path, (long)getpid()) < 0) {
		tmp = NULL;
		r = -ENOMEM;
		goto out;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0640);
	if (fd < 0) {
		r = -errno;
		goto out;
	}
	for (len = strlen(text); off < len;) {
		ssize_t n = write(fd, text + off, len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			r = n < 0 ? -errno : -EIO;
			goto out;
		}
		off += (size_t)n;
	}
	if (fsync(fd) < 0 || close(fd) < 0) {
		fd = -1;
		r = -errno;
		goto out;
	}
	fd = -1;
	if (rename(tmp, st->path) < 0) {
		r = -errno;
		goto out;
	}
	/* The rename itself is durable once the directory is. */
	dir = strdup(st->path);
	if (dir && (dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0)
		fsync(dfd);
out:
	if (r < 0) {
		log_warn("state file %s: writing it failed (%s); the provider goes on without it",
			 st->path, strerror(-r));
		if (tmp)
			unlink(tmp);
	}
	if (fd >= 0)
		close(fd);
	if (dfd >= 0)
		close(dfd);
	free(dir);
	free(tmp);
	free(text);
	json_decref(doc);
	return r;
}

/* The app's entry (lock held), made when missing; the least recently updated goes when full. */
static json_t *entry(struct state *st, const char *description)
{
	json_t *e = json_object_get(st->apps, description), *v;
	const char *key, *oldest = NULL;
	json_int_t when = INT64_MAX;

	if (e)
		return e;
	if (json_object_size(st->apps) >= STATE_MAX_APPS) {
		json_object_foreach(st->apps, key, v)
		{
			json_int_t u = json_integer_value(json_object_get(v, "updated"));

			if (u < when) {
				when = u;
				oldest = key;
			}
		}
		if (oldest)
			json_object_del(st->apps, oldest);
	}
	e = json_object();
	if (e && json_object_set_new(st->apps, description, e) < 0)
		return NULL;
	return e;
}

/* Sets the fields of the app's entry and writes the file when anything changed. */
static int update(struct state *st, const char *description, json_t *fields)
{
	json_t *e, *before;
	int r = 0;

	if (!st || !st->path || !fields) {
		json_decref(fields);
		return st && st->path && !fields ? -ENOMEM : 0;
	}
	pthread_mutex_lock(&st->lock);
	e = entry(st, description);
	before = e ? json_deep_copy(e) : NULL;
	if (!e || json_object_update(e, fields) < 0) {
		r = -ENOMEM;
	} else {
		json_object_del(before, "updated");
		json_object_del(e, "updated");
		if (!json_equal(before, e)) {
			json_object_set_new(e, "updated", json_integer((json_int_t)time(NULL)));
			r = save(st);
		} else {
			json_object_set_new(e, "updated", json_integer((json_int_t)time(NULL)));
		}
	}
	pthread_mutex_unlock(&st->lock);
	json_decref(before);
	json_decref(fields);
	return r;
}

int state_get(struct state *st, const char *description, char **ret_client_id, char **ret_written,
	      bool *ret_pending)
{
	const char *id, *scopes;
	json_t *e;
	int r = -ENOENT;

	if (!st)
		return r;
	pthread_mutex_lock(&st->lock);
	e = json_object_get(st->apps, description);
	if (e) {
		id = json_string_value(json_object_get(e, "client_id"));
		scopes = json_string_value(json_object_get(e, "scopes"));
		*ret_client_id = id ? strdup(id) : NULL;
		*ret_written = scopes ? strdup(scopes) : NULL;
		if (ret_pending)
			*ret_pending = json_is_true(json_object_get(e, "pending"));
		r = 0;
		if ((id && !*ret_client_id) || (scopes && !*ret_written)) {
			free(*ret_client_id);
			free(*ret_written);
			r = -ENOMEM;
		}
	}
	pthread_mutex_unlock(&st->lock);
	return r;
}

int state_pending(struct state *st, const char *description)
{
	return update(st, description, json_pack("{s:b}", "pending", 1));
}

int state_settled(struct state *st, const char *description, const char *client_id,
		  const char *written)
{
	json_t *f = json_pack("{s:b}", "pending", 0);

	if (f && client_id)
		json_object_set_new(f, "client_id", json_string(client_id));
	if (f && written)
		json_object_set_new(f, "scopes", json_string(written));
	return update(st, description, f);
}

int state_refused(struct state *st, const char *description, const json_t *refused)
{
	json_t *f = refused ? json_pack("{s:O}", "refused", refused)
			    : json_pack("{s:o}", "refused", json_array());

	return update(st, description, f);
}

json_t *state_get_refused(struct state *st, const char *description)
{
	json_t *r = NULL;

	if (!st)
		return NULL;
	pthread_mutex_lock(&st->lock);
	r = json_object_get(json_object_get(st->apps, description), "refused");
	r = json_array_size(r) ? json_deep_copy(r) : NULL;
	pthread_mutex_unlock(&st->lock);
	return r;
}

json_t *state_pending_apps(struct state *st)
{
	json_t *out = json_array(), *v;
	const char *key;

	if (!st || !out)
		return out;
	pthread_mutex_lock(&st->lock);
	json_object_foreach(st->apps, key, v)
	{
		if (json_is_true(json_object_get(v, "pending")))
			json_array_append_new(out, json_string(key));
	}
	pthread_mutex_unlock(&st->lock);
	return out;
}
