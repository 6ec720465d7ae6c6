/*
 * cli_mount: `mount`, the CSI driver's side of a Mount for people and tests.
 * Builds the request exactly as the Secrets Store CSI Driver v1.6 does
 * (attributes = SecretProviderClass parameters, then the volume's and the
 * kubelet's attributes; secrets "null"; permission "420"), calls the
 * provider through its socket, and writes the answer with the kubelet's
 * atomic writer. Prints file names, modes and sizes, never contents: the
 * answer holds a private key.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"
#include "config.h"
#include "driver.h"
#include "log.h"
#include "provider.pb-c.h"
#include "writer.h"
#include "wipe.h"

#define MOUNT_TIMEOUT_MS 120000 /* kubelet's NodePublishVolume budget */
#define SPC_NAME	 "maskinporten-cli"

static const char usage[] =
    "Usage: maskinporten-csi-provider mount --namespace NS --service-account SA --dir DIR\n"
    "         [--socket S] [--pod-name P] [--pod-uid U] [--scopes \"a b\"]\n"
    "         [--file-permission 0640] [--exposes JSON] [--params '{\"k\":\"v\"}']\n"
    "\n"
    "Acts as the Secrets Store CSI Driver: sends the provider on --socket the Mount a pod\n"
    "with this namespace and service account would cause, and writes the files it returns\n"
    "into DIR the way the kubelet does (..data symlink swap). Prints names, never contents.\n";

static const char *status_name(int code)
{
	static const char *const names[] = {
		"OK",
		"CANCELLED",
		"UNKNOWN",
		"INVALID_ARGUMENT",
		"DEADLINE_EXCEEDED",
		"NOT_FOUND",
		"ALREADY_EXISTS",
		"PERMISSION_DENIED",
		"RESOURCE_EXHAUSTED",
		"FAILED_PRECONDITION",
		"ABORTED",
		"OUT_OF_RANGE",
		"UNIMPLEMENTED",
		"INTERNAL",
		"UNAVAILABLE",
		"DATA_LOSS",
		"UNAUTHENTICATED",
	};

	if (code >= 0 && (size_t)code < sizeof(names) / sizeof(names[0]))
		return names[code];
	return "UNKNOWN";
}

/* The kernel's random UUID, as a pod uid looks. Writes "" when unavailable. */
static void random_uuid(char *buf, size_t size)
{
	ssize_t n = -1;
	int fd = open("/proc/sys/kernel/random/uuid", O_RDONLY | O_CLOEXEC);

	if (fd >= 0) {
		n = read(fd, buf, size - 1);
		close(fd);
	}
	if (n < 0)
		n = 0;
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
}

/* Adds key=value to obj when value is set. Returns 0 or -ENOMEM. */
static int set_str(json_t *obj, const char *key, const char *value)
{
	if (!value)
		return 0;
	return json_object_set_new(obj, key, json_string(value)) < 0 ? -ENOMEM : 0;
}

/*
 * The attributes JSON the driver sends: SecretProviderClass parameters,
 * overwritten by the volume attributes, then the kubelet's pod attributes.
 * Go's json.Marshal of a map sorts keys; so do we. Returns a malloc'd string
 * or NULL with err filled.
 */
static char *build_attributes(const struct config *cfg, const char *pod_name, const char *pod_uid,
			      struct err *err)
{
	json_t *attrs = NULL, *value;
	json_error_t jerr;
	const char *key;
	char *out = NULL;
	int r = 0;

	if (cfg->extra_params) {
		attrs = json_loads(cfg->extra_params, JSON_REJECT_DUPLICATES, &jerr);
		if (!attrs || !json_is_object(attrs)) {
			err_set(err, ERR_INVALID, EINVAL,
				"--params must be a JSON object of strings");
			goto out;
		}
		json_object_foreach(attrs, key, value)
		{
			if (!json_is_string(value)) {
				err_set(err, ERR_INVALID, EINVAL,
					"--params: value of \"%.100s\" is not a string", key);
				goto out;
			}
		}
	} else {
		attrs = json_object();
		if (!attrs)
			goto nomem;
	}
	r |= set_str(attrs, "scopes", cfg->scopes);
	r |= set_str(attrs, "exposes", cfg->exposes);
	r |= set_str(attrs, "filePermission", cfg->file_permission);
	/* Volume attributes, then the kubelet's: a pod cannot forge these. */
	r |= set_str(attrs, "secretProviderClass", SPC_NAME);
	r |= set_str(attrs, "csi.storage.k8s.io/pod.name", pod_name);
	r |= set_str(attrs, "csi.storage.k8s.io/pod.namespace", cfg->namespace_name);
	r |= set_str(attrs, "csi.storage.k8s.io/pod.uid", pod_uid);
	r |= set_str(attrs, "csi.storage.k8s.io/serviceAccount.name", cfg->service_account);
	r |= set_str(attrs, "csi.storage.k8s.io/ephemeral", "false");
	if (r)
		goto nomem;
	out = json_dumps(attrs, JSON_COMPACT | JSON_SORT_KEYS);
	if (!out)
		goto nomem;
	goto out;

nomem:
	err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
out:
	json_decref(attrs);
	return out;
}

/* Packs the MountRequest. Returns 0 with *ret (malloc'd) or -errno. */
static int pack_request(const char *attributes, const char *target, uint8_t **ret, size_t *ret_len)
{
	V1alpha1__MountRequest req = V1ALPHA1__MOUNT_REQUEST__INIT;
	uint8_t *buf;
	size_t len;

	req.attributes = (char *)attributes;
	req.secrets = (char *)"null";
	req.target_path = (char *)target;
	req.permission = (char *)"420";
	len = v1alpha1__mount_request__get_packed_size(&req);
	buf = malloc(len ? len : 1);
	if (!buf)
		return -ENOMEM;
	v1alpha1__mount_request__pack(&req, buf);
	*ret = buf;
	*ret_len = len;
	return 0;
}

/* Writes the answer's files into dir and reports them. Returns the exit status. */
static int write_files(const char *dir, const V1alpha1__MountResponse *resp)
{
	struct writer_file *files = NULL;
	struct err err = { 0 };
	int status = 1;

	files = calloc(resp->n_files ? resp->n_files : 1, sizeof(*files));
	if (!files) {
		fprintf(stderr, "mount: out of memory\n");
		return 1;
	}
	for (size_t i = 0; i < resp->n_files; i++) {
		const V1alpha1__File *f = resp->files[i];

		if (f->mode < 0 || f->mode > 0777) {
			fprintf(stderr,
				"mount: the provider returned %s with mode %d, not 0..511\n",
				f->path, f->mode);
			goto out;
		}
		files[i].path = f->path;
		files[i].mode = (mode_t)f->mode;
		files[i].contents = f->contents.data;
		files[i].len = f->contents.len;
	}
	if (writer_write(NULL, dir, files, resp->n_files, &err) < 0) {
		fprintf(stderr, "mount: writing the files into %s failed: %s\n", dir, err.msg);
		goto out;
	}
	for (size_t i = 0; i < resp->n_files; i++)
		printf("wrote %s (mode %04o, %zu bytes)\n", files[i].path, (unsigned)files[i].mode,
		       files[i].len);
	status = 0;
out:
	free(files);
	return status;
}

/* Wipes every file's contents (the private key among them) in place. */
static void wipe_response(V1alpha1__MountResponse *resp)
{
	for (size_t i = 0; i < resp->n_files; i++)
		if (resp->files[i]->contents.data)
			wipe(resp->files[i]->contents.data, resp->files[i]->contents.len);
}

int cmd_mount(int argc, char **argv)
{
	struct config cfg;
	struct err err = { 0 };
	struct driver *d = NULL;
	V1alpha1__MountResponse *resp = NULL;
	char uuid[64], pod_name[320], target[4096];
	char *attributes = NULL, *message = NULL;
	uint8_t *req = NULL, *payload = NULL;
	size_t req_len = 0, plen = 0;
	int r, status = -1, ret = 1;

	config_defaults(&cfg);
	r = config_parse(&cfg, argc, argv, usage, &err);
	if (r == 1)
		return 0;
	if (r == 0)
		r = config_require(&cfg, &err, "socket", "namespace", "service-account", "dir",
				   (const char *)NULL);
	if (r < 0) {
		fprintf(stderr, "mount: %s\n", err.msg);
		return 2;
	}
	log_init(cfg.log_level, cfg.log_format);

	if (!cfg.pod_uid) {
		random_uuid(uuid, sizeof(uuid));
		cfg.pod_uid = uuid;
	}
	if (!cfg.pod_name) {
		snprintf(pod_name, sizeof(pod_name), "%s-cli", cfg.service_account);
		cfg.pod_name = pod_name;
	}
	/* The driver makes the mount point (0750) when it is missing. */
	if (mkdir(cfg.dir, 0750) < 0 && errno != EEXIST) {
		fprintf(stderr, "mount: creating %s: %s\n", cfg.dir, strerror(errno));
		return 1;
	}
	if (!realpath(cfg.dir, target)) {
		fprintf(stderr, "mount: %s: %s\n", cfg.dir, strerror(errno));
		return 1;
	}

	attributes = build_attributes(&cfg, cfg.pod_name, cfg.pod_uid, &err);
	if (!attributes) {
		fprintf(stderr, "mount: %s\n", err.msg);
		ret = err.kind == ERR_INVALID ? 2 : 1;
		goto out;
	}
	if (pack_request(attributes, target, &req, &req_len) < 0) {
		fprintf(stderr, "mount: out of memory\n");
		goto out;
	}
	d = driver_new(cfg.socket_path);
	if (!d) {
		fprintf(stderr, "mount: cannot create a gRPC channel to %s\n", cfg.socket_path);
		goto out;
	}
	r = driver_call(d, "/v1alpha1.CSIDriverProvider/Mount", req, req_len, MOUNT_TIMEOUT_MS,
			&status, &message, &payload, &plen);
	if (r < 0) {
		fprintf(stderr, "mount: calling Mount on %s failed: %s\n", cfg.socket_path,
			strerror(-r));
		goto out;
	}
	if (status != 0) {
		fprintf(stderr, "mount: Mount failed: %s: %s\n", status_name(status),
			message ? message : "");
		goto out;
	}
	resp = v1alpha1__mount_response__unpack(NULL, plen, payload);
	if (!resp) {
		fprintf(stderr, "mount: the answer is not a MountResponse\n");
		goto out;
	}
	/* What the driver refuses, we refuse (provider_client.go: MountContent). */
	if (resp->error && resp->error->code && *resp->error->code) {
		fprintf(stderr, "mount: mount request failed with provider error code %s\n",
			resp->error->code);
		goto out;
	}
	if (resp->n_object_version == 0) {
		fprintf(stderr, "mount: missing object versions in the answer\n");
		goto out;
	}
	if (resp->n_files == 0) {
		printf("the answer has no files: the provider wrote them itself (provider write "
		       "mode)\n");
		ret = 0;
	} else {
		ret = write_files(target, resp);
	}
	for (size_t i = 0; ret == 0 && i < resp->n_object_version; i++)
		printf("object %s version %s\n", resp->object_version[i]->id,
		       resp->object_version[i]->version);

out:
	if (resp) {
		wipe_response(resp);
		v1alpha1__mount_response__free_unpacked(resp, NULL);
	}
	if (payload) {
		wipe(payload, plen);
		free(payload);
	}
	free(message);
	free(req);
	free(attributes);
	driver_free(d);
	return ret;
}
