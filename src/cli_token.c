/*
 * cli_token: `token --dir DIR [--json]` reads a mounted directory (the files
 * a pod gets), signs a JWT grant with its JWK and prints the access token
 * Maskinporten answers, or the whole answer with --json. What an app does,
 * for a person checking that a mount works.
 *
 * Must never print or log the JWK or the grant; the access token goes to
 * stdout only, because asking for it is the point of the command.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"
#include "app.h"
#include "cli.h"
#include "config.h"
#include "http.h"
#include "keys.h"
#include "maskinporten.h"

#define FILE_MAX (64 * 1024)

static const char usage[] =
    "Usage: maskinporten-csi-provider token --dir DIR [--json] [--scopes \"a b\"] "
    "[--ca-file FILE]\n"
    "\n"
    "Reads MASKINPORTEN_CLIENT_ID, MASKINPORTEN_CLIENT_JWK, MASKINPORTEN_SCOPES,\n"
    "MASKINPORTEN_ISSUER and MASKINPORTEN_TOKEN_ENDPOINT from DIR, gets an access\n"
    "token from Maskinporten and prints it (--json: the whole answer).\n";

/*
 * Reads one file of the directory, at most FILE_MAX bytes, trailing white
 * space removed. Mounted files may be kubelet's ..data symlinks, so links are
 * followed, but only regular files are read. *ret is malloc'd (the JWK is a
 * SECRET: the caller frees it with secret_free).
 */
static int read_file(int dfd, const char *dir, const char *name, char **ret, struct err *err)
{
	struct stat st;
	char *buf = NULL;
	ssize_t n;
	size_t len = 0;
	int fd = -1, r;

	fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		r = err_set(err, ERR_INVALID, errno, "cannot open %s/%s: %s", dir, name,
			    strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > FILE_MAX) {
		r = err_set(err, ERR_INVALID, EFBIG,
			    "%s/%s is not a regular file of at most %d bytes", dir, name, FILE_MAX);
		goto out;
	}
	buf = malloc(FILE_MAX + 1);
	if (!buf) {
		r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto out;
	}
	/* The size may change under us: the limit holds whatever fstat said. */
	while (len < FILE_MAX && (n = read(fd, buf + len, FILE_MAX - len)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			r = err_set(err, ERR_INVALID, errno, "cannot read %s/%s: %s", dir, name,
				    strerror(errno));
			goto out;
		}
		len += (size_t)n;
	}
	while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == ' ' || buf[len - 1] == '\r' ||
			   buf[len - 1] == '\t'))
		len--;
	buf[len] = '\0';
	*ret = buf;
	buf = NULL;
	r = 0;
out:
	secret_free(buf);
	if (fd >= 0)
		close(fd);
	return r;
}

static int run(const struct config *cfg, struct err *err)
{
	static const char *const names[] = { "MASKINPORTEN_CLIENT_ID", "MASKINPORTEN_CLIENT_JWK",
					     "MASKINPORTEN_SCOPES", "MASKINPORTEN_ISSUER",
					     "MASKINPORTEN_TOKEN_ENDPOINT" };
	enum { ID, JWK, SCOPES, ISSUER, ENDPOINT, NFILES };
	char *val[NFILES] = { NULL };
	struct http *http = NULL;
	json_t *jwk = NULL, *answer = NULL;
	struct keys_key *key = NULL;
	json_error_t jerr;
	const char *kid = NULL, *scope, *token;
	int dfd = -1, r;

	dfd = open(cfg->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		r = err_set(err, ERR_INVALID, errno, "cannot open directory %s: %s", cfg->dir,
			    strerror(errno));
		goto out;
	}
	for (int i = 0; i < NFILES; i++) {
		r = read_file(dfd, cfg->dir, names[i], &val[i], err);
		if (r < 0)
			goto out;
	}
	scope = cfg->scopes && *cfg->scopes ? cfg->scopes : val[SCOPES];
	if (!*scope || !*val[ID] || !*val[ISSUER] || !*val[ENDPOINT]) {
		r = err_set(err, ERR_INVALID, EINVAL,
			    "%s: MASKINPORTEN_CLIENT_ID, _SCOPES, _ISSUER and _TOKEN_ENDPOINT must "
			    "not be empty",
			    cfg->dir);
		goto out;
	}
	/* The JWK's own kid names the registered key to Maskinporten. */
	jwk = json_loads(val[JWK], JSON_REJECT_DUPLICATES, &jerr);
	if (!jwk || json_unpack_ex(jwk, &jerr, 0, "{s:s}", "kid", &kid) < 0) {
		r = err_set(err, ERR_INVALID, EINVAL,
			    "%s/MASKINPORTEN_CLIENT_JWK is not a JWK with a kid", cfg->dir);
		goto out;
	}
	key = keys_key_from_jwk(jwk, err);
	if (!key) {
		err_prefix(err, "%s/MASKINPORTEN_CLIENT_JWK: ", cfg->dir);
		r = -EINVAL;
		goto out;
	}

	http = app_http_new(cfg, err);
	if (!http) {
		r = -EINVAL;
		goto out;
	}
	r = mp_token_request(http, val[ENDPOINT], val[ISSUER], key, kid, val[ID], scope,
			     clock_now_ms() + cfg->mount_timeout_ms, &answer, err);
	if (r < 0)
		goto out;
	if (cfg->json) {
		json_dumpf(answer, stdout, JSON_INDENT(2));
		putchar('\n');
	} else {
		json_unpack(answer, "{s:s}", "access_token", &token);
		printf("%s\n", token);
	}
	r = fflush(stdout) == 0 ? 0 : err_set(err, ERR_INTERNAL, EIO, "cannot write the token");
out:
	json_decref(answer);
	http_free(http);
	keys_key_free(key);
	json_decref(jwk);
	for (int i = 0; i < NFILES; i++)
		secret_free(val[i]);
	if (dfd >= 0)
		close(dfd);
	return r;
}

int cmd_token(int argc, char **argv)
{
	struct err err = { 0 };
	struct config cfg;
	int r;

	config_defaults(&cfg);
	r = config_parse(&cfg, argc, argv, usage, &err);
	if (r == 1)
		return 0;
	if (r == 0 && cfg.argc > 0)
		r = err_set(&err, ERR_INVALID, EINVAL, "unexpected argument '%s'", cfg.argv[0]);
	if (r == 0)
		r = config_require(&cfg, &err, "dir", (char *)NULL);
	if (r < 0) {
		fprintf(stderr, "maskinporten-csi-provider token: %s\n", err.msg);
		return 2;
	}
	r = run(&cfg, &err);
	if (r < 0) {
		fprintf(stderr, "maskinporten-csi-provider token: %s\n", err.msg);
		return 1;
	}
	return 0;
}
