/*
 * mount: reads a MountRequest exactly as the driver sends it, derives the
 * pod's identity from the kubelet's attributes only, validates the
 * SecretProviderClass parameters, and builds the MountResponse files.
 * No network, no blocking: safe on the server's completion-queue thread.
 */
#ifndef MCP_MOUNT_H
#define MCP_MOUNT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define MOUNT_MAX_SCOPES     64
#define MOUNT_MAX_SCOPE_LEN  256
#define MOUNT_MAX_ATTRIBUTES (256 * 1024)
#define MOUNT_MAX_EXPOSES    (64 * 1024)
#define MOUNT_DEFAULT_MODE   0644

/* A parsed request. Strings are owned by it; free with mount_request_free(). */
struct mount_request {
	char *namespace_name;  /* csi.storage.k8s.io/pod.namespace */
	char *service_account; /* csi.storage.k8s.io/serviceAccount.name: the app */
	char *pod_name;
	char *pod_uid;
	char *target_path;
	char *description;		/* <cluster>:<namespace>:<app> */
	char *scopes[MOUNT_MAX_SCOPES]; /* consumed scopes, deduplicated, in the order given */
	size_t nscopes;
	char *scopes_key; /* the scopes sorted and space-joined: equal sets, equal keys */
	char *exposes;	  /* raw `exposes` parameter, NULL when absent */
	unsigned mode;	  /* file mode: filePermission, else the request's permission */
};

/*
 * Who a refused request says it is for, as far as its attributes tell, for
 * the log line: the kubelet's pod.namespace, pod.name and serviceAccount.name,
 * copied as they stand (not validated: the refusal may be about them), cut
 * on a character to fit, "" when absent. Never holds the pod's tokens.
 */
struct mount_who {
	char namespace_name[64];
	char pod_name[254];
	char service_account[254];
};

/*
 * Parses and validates the packed MountRequest. Unknown parameters, malformed
 * JSON, missing pod attributes, the `default` service account and bad values
 * fail with ERR_INVALID or ERR_PERMISSION and a message naming the problem.
 * On such a failure, who (when non-NULL) gets the identity the attributes
 * carry; on success it is left alone (*ret holds the identity).
 * Never copies `secrets` or service account tokens anywhere.
 */
int mount_parse(const uint8_t *data, size_t len, const char *cluster, struct mount_request *ret,
		struct mount_who *who, struct err *err);

void mount_request_free(struct mount_request *req);

/* What the files say. All strings borrowed for the call. */
struct mount_content {
	const char *client_id;
	const char *jwk_private; /* SECRET */
	const char *kid;
	const char *well_known_url;
	const char *issuer;
	const char *jwks_uri;
	const char *token_endpoint;
	const char *exposed_scopes; /* space-separated full names, NULL: no file */
};

/* One file of the answer. */
struct mount_file {
	char name[64];
	char *contents; /* SECRET for the JWK file and the env file */
	size_t len;
};
#define MOUNT_MAX_FILES 10

/*
 * The files a pod receives (README, "What a pod gets") for the request and
 * content, into files[0..*ret_nfiles). Returns 0, or -ENOMEM. Free them with
 * mount_files_free (it wipes them).
 */
int mount_build_files(const struct mount_request *req, const struct mount_content *c,
		      struct mount_file files[MOUNT_MAX_FILES], size_t *ret_nfiles);
void mount_files_free(struct mount_file *files, size_t nfiles);

/*
 * Packs the MountResponse of files built by mount_build_files (borrowed):
 * each with the given mode, and one ObjectVersion per file (the JWK's
 * version is kid, the others a short hash of their contents). When
 * with_files is false (provider write mode) the files are left out and only
 * the versions are answered. Returns 0, -EINVAL (more than MOUNT_MAX_FILES)
 * or -ENOMEM.
 * SECRET: *ret_payload holds the private key (with_files); caller wipes and frees it.
 */
int mount_pack_response(const struct mount_file *files, size_t nfiles, unsigned mode,
			const char *kid, bool with_files, uint8_t **ret_payload, size_t *ret_len);

/*
 * mount_build_files, then mount_pack_response with req->mode and c->kid:
 * the whole answer in one call. Returns 0 or -ENOMEM.
 * SECRET: *ret_payload holds the private key (with_files); caller wipes and frees it.
 */
int mount_build_response(const struct mount_request *req, const struct mount_content *c,
			 bool with_files, uint8_t **ret_payload, size_t *ret_len);

/* Packs a VersionResponse. */
int mount_version_response(uint8_t **ret_payload, size_t *ret_len);

#endif
