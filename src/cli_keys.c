/*
 * cli_keys: `keys derive` prints the public JWK of (seed, client, epoch) and can
 * write the private JWK to a new 0600 file; `keys grant` prints a signed JWT
 * grant for that key, a debugging aid. Never prints the seed or a private key
 * to a terminal; the grant it prints is a short-lived credential, and says so.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "config.h"
#include "keys.h"

#define PROG "maskinporten-csi-provider keys"

static const char usage[] =
    "Usage: maskinporten-csi-provider keys derive --seed-file FILE --client-id ID\n"
    "           [--epoch N | --at TIME] [--epoch-length DURATION] [--private FILE] [--json]\n"
    "       maskinporten-csi-provider keys grant --seed-file FILE --client-id ID\n"
    "           --aud AUDIENCE --scope SCOPES [--epoch N | --at TIME] [--epoch-length DURATION]\n"
    "\n"
    "derive prints the public JWK of the key for (seed, client, epoch) as one line of\n"
    "JSON, exactly as every node derives and registers it. With --private FILE it also\n"
    "writes the private JWK to FILE, a new file of mode 0600 (an existing FILE is\n"
    "refused).\n"
    "\n"
    "grant prints a JWT grant (iss = the client id) signed with that key. It is a\n"
    "CREDENTIAL, valid for 120 seconds: a debugging aid for talking to a token\n"
    "endpoint by hand. Do not paste it into tickets or logs.\n"
    "\n"
    "TIME is Unix seconds or YYYY-MM-DDTHH:MM:SSZ; without --epoch and --at, now.\n";

/* Parses Unix seconds or YYYY-MM-DDTHH:MM:SSZ (UTC). */
static int parse_time(const char *s, int64_t *ret)
{
	struct tm tm = { 0 }, back;
	char *end = NULL;
	long long v;
	time_t t;
	int n = 0;

	if ((*s >= '0' && *s <= '9') || *s == '-') {
		errno = 0;
		v = strtoll(s, &end, 10);
		if (!errno && end != s && !*end) {
			*ret = v;
			return 0;
		}
	}
	if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2dZ%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
		   &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6 ||
	    n != 20 || s[n] != '\0')
		return -EINVAL;
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	back = tm;
	t = timegm(&tm);
	/* timegm normalises 02-30 into March: a changed field means a bad date. */
	if (tm.tm_year != back.tm_year || tm.tm_mon != back.tm_mon || tm.tm_mday != back.tm_mday ||
	    tm.tm_hour != back.tm_hour || tm.tm_min != back.tm_min || tm.tm_sec != back.tm_sec)
		return -EINVAL;
	*ret = (int64_t)t;
	return 0;
}

/*
 * Takes "--NAME VALUE" and "--NAME=VALUE" out of argv (in place) into *ret.
 * Only `keys grant` has --aud and --scope, so they stay out of the shared
 * flag table. Returns 0, or -EINVAL when the value is missing.
 */
static int take_flag(int *argc, char **argv, const char *name, const char **ret)
{
	size_t len = strlen(name);

	for (int i = 1; i < *argc; i++) {
		const char *a = argv[i];
		int drop;

		if (!strcmp(a, "--"))
			break;
		if (strncmp(a, "--", 2) != 0 || strncmp(a + 2, name, len) != 0)
			continue;
		if (a[2 + len] == '=') {
			*ret = a + 3 + len;
			drop = 1;
		} else if (a[2 + len] == '\0') {
			if (i + 1 >= *argc)
				return -EINVAL;
			*ret = argv[i + 1];
			drop = 2;
		} else {
			continue;
		}
		memmove(&argv[i], &argv[i + drop], (size_t)(*argc - i - drop + 1) * sizeof(*argv));
		*argc -= drop;
		i--;
	}
	return 0;
}

/* Writes data to a new file of mode 0600; refuses existing files and symlinks. */
static int write_private(const char *path, const char *data, struct err *err)
{
	size_t len = strlen(data), off = 0;
	int fd, r = 0, e;

	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		e = errno;
		if (e == EEXIST)
			return err_set(err, ERR_INVALID, e,
				       "refusing to write the private JWK to %s: it already exists",
				       path);
		return err_set(err, ERR_INVALID, e, "cannot create %s: %s", path, strerror(e));
	}
	/* The umask may only have narrowed 0600; make it exact. */
	if (fchmod(fd, 0600) < 0)
		goto fail;
	while (off < len) {
		ssize_t n = write(fd, data + off, len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			goto fail;
		off += (size_t)n;
	}
	if (write(fd, "\n", 1) != 1 || fsync(fd) < 0)
		goto fail;
	if (close(fd) < 0) {
		fd = -1;
		goto fail;
	}
	return 0;
fail:
	e = errno ? errno : EIO;
	r = err_set(err, ERR_INTERNAL, e, "writing %s failed: %s", path, strerror(e));
	if (fd >= 0)
		close(fd);
	unlink(path);
	return r;
}

/*
 * --json: wraps the public JWK in what an operator wants to know about it:
 * {"kid","epoch","handed_out_from","handed_out_until","exp","thumbprint","jwk"}.
 */
static int describe(json_t **jwk, const struct keys_key *key, int64_t epoch, int64_t len)
{
	char tp[KEYS_THUMBPRINT_LEN + 1];
	json_t *o;

	if (keys_thumbprint(key, tp) < 0)
		return -EIO;
	o = json_pack("{s:O, s:I, s:I, s:I, s:I, s:s, s:O}", "kid", json_object_get(*jwk, "kid"),
		      "epoch", (json_int_t)epoch, "handed_out_from",
		      (json_int_t)keys_epoch_start(epoch, len), "handed_out_until",
		      (json_int_t)keys_epoch_end(epoch, len), "exp",
		      (json_int_t)keys_epoch_end(epoch + 1, len), "thumbprint", tp, "jwk", *jwk);
	if (!o)
		return -ENOMEM;
	json_decref(*jwk);
	*jwk = o;
	return 0;
}

static int fail(const struct err *err)
{
	fprintf(stderr, PROG ": %s\n", err->msg);
	return 1;
}

static int usage_error(const char *msg)
{
	fprintf(stderr, PROG ": %s (see '" PROG " --help')\n", msg);
	return 2;
}

int cmd_keys(int argc, char **argv)
{
	const char *aud = NULL, *scope = NULL;
	char kid[KEYS_KID_MAX], *secret = NULL, *pub = NULL;
	struct keys_seed seed = { 0 };
	struct err err = { 0 };
	struct config cfg;
	struct keys_key *key = NULL;
	json_t *jwk = NULL;
	bool grant;
	int64_t epoch, now = (int64_t)time(NULL);
	int r, sub_argc, status = 1;
	char **sub_argv = argv + 1;

	if (argc < 2) {
		fputs(usage, stderr);
		return 2;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		fputs(usage, stdout);
		return 0;
	}
	if (strcmp(argv[1], "derive") != 0 && strcmp(argv[1], "grant") != 0)
		return usage_error("unknown keys command (derive or grant)");
	grant = !strcmp(argv[1], "grant");
	sub_argc = argc - 1;
	if (grant && (take_flag(&sub_argc, sub_argv, "aud", &aud) < 0 ||
		      take_flag(&sub_argc, sub_argv, "scope", &scope) < 0))
		return usage_error("--aud and --scope need a value");

	config_defaults(&cfg);
	r = config_parse(&cfg, sub_argc, sub_argv, usage, &err);
	if (r == 1)
		return 0;
	if (r < 0)
		return usage_error(err.msg);
	if (cfg.argc > 0)
		return usage_error("unexpected argument");
	if (config_require(&cfg, &err, "seed-file", "client-id", (const char *)NULL) < 0)
		return usage_error(err.msg);
	if (grant && (!aud || !*aud || !scope || !*scope))
		return usage_error("grant needs --aud and --scope");
	if (grant && cfg.output)
		return usage_error("--private is for derive");
	if (cfg.epoch >= 0 && cfg.at)
		return usage_error("give --epoch or --at, not both");
	if (cfg.at && parse_time(cfg.at, &now) < 0)
		return usage_error("--at: expected Unix seconds or YYYY-MM-DDTHH:MM:SSZ");
	epoch = cfg.epoch >= 0 ? cfg.epoch : keys_epoch_at(now, cfg.epoch_length);

	if (keys_seed_load(cfg.seed_file, &seed, &err) < 0)
		return fail(&err);
	if (keys_kid(&seed, cfg.client_id, epoch, kid) < 0) {
		err_set(&err, ERR_INVALID, ENAMETOOLONG, "client id %s is too long for a kid",
			cfg.client_id);
		goto out;
	}
	key = keys_derive(&seed, cfg.client_id, epoch);
	if (!key) {
		err_set(&err, ERR_INTERNAL, EIO,
			"deriving the key of client %s, epoch %" PRId64 " failed", cfg.client_id,
			epoch);
		goto out;
	}

	if (grant) {
		/* Sign for real time even with --at: the grant must be fresh. */
		secret = keys_grant(key, kid, NULL, cfg.client_id, aud, scope, (int64_t)time(NULL),
				    KEYS_GRANT_LIFETIME);
		if (!secret) {
			err_set(&err, ERR_INTERNAL, EIO, "signing the grant failed");
			goto out;
		}
		printf("%s\n", secret);
		status = 0;
		goto out;
	}

	jwk = keys_jwk_public(key, kid);
	if (jwk && cfg.json && describe(&jwk, key, epoch, cfg.epoch_length) < 0) {
		json_decref(jwk);
		jwk = NULL;
	}
	pub = jwk ? json_dumps(jwk, JSON_COMPACT) : NULL;
	if (!pub) {
		err_set(&err, ERR_INTERNAL, ENOMEM, "serialising the public JWK failed");
		goto out;
	}
	if (cfg.output) {
		secret = keys_jwk_private(key, kid);
		if (!secret) {
			err_set(&err, ERR_INTERNAL, ENOMEM, "serialising the private JWK failed");
			goto out;
		}
		if (write_private(cfg.output, secret, &err) < 0)
			goto out;
	}
	printf("%s\n", pub);
	status = 0;
out:
	if (status != 0)
		fail(&err);
	if (fflush(stdout) != 0 && status == 0) {
		fprintf(stderr, PROG ": writing to stdout failed\n");
		status = 1;
	}
	secret_free(secret);
	free(pub);
	json_decref(jwk);
	keys_key_free(key);
	keys_seed_wipe(&seed);
	return status;
}
