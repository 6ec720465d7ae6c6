/*
 * fuzz_mount_request: mount_parse on arbitrary bytes, as they arrive in a
 * Mount call; a request that parses is answered with mount_build_response.
 */
#include "fuzz.h"
#include "fuzz_mount.h"
#include "mount.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mount_request req = { 0 };
	struct mount_who who;
	struct err err = { 0 };
	uint8_t *payload = NULL;
	size_t len = 0;
	int r;

	r = mount_parse(data, size, "dev", &req, &who, &err);
	fuzz_check_err(r, &err);
	/* A refused request's identity is whole strings, each cut on a character. */
	if (r < 0 && (strnlen(who.namespace_name, sizeof(who.namespace_name)) ==
			  sizeof(who.namespace_name) ||
		      strnlen(who.pod_name, sizeof(who.pod_name)) == sizeof(who.pod_name) ||
		      strnlen(who.service_account, sizeof(who.service_account)) ==
			  sizeof(who.service_account)))
		abort();
	if (r == 0) {
		if (mount_build_response(&req, &fuzz_mount_content, true, &payload, &len) == 0)
			free(payload);
		mount_request_free(&req);
	}
	return 0;
}
