/*
 * fuzz_mount_attributes: a well-formed MountRequest whose attributes string
 * (the SecretProviderClass parameters and pod attributes JSON) is the input.
 * What parses is turned into files and a packed response.
 */
#include "fuzz.h"
#include "fuzz_mount.h"
#include "mount.h"
#include "provider.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	V1alpha1__MountRequest msg = V1ALPHA1__MOUNT_REQUEST__INIT;
	struct mount_file files[MOUNT_MAX_FILES];
	struct mount_request req = { 0 };
	struct err err = { 0 };
	uint8_t *packed, *payload = NULL;
	size_t len = 0, nfiles = 0;
	int r;

	msg.attributes = fuzz_str(data, size);
	msg.secrets = (char *)"null";
	msg.permission = (char *)"420";
	msg.target_path = (char *)"/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/mp/mount";
	packed = malloc(v1alpha1__mount_request__get_packed_size(&msg) + 1);
	if (!packed)
		abort();
	len = v1alpha1__mount_request__pack(&msg, packed);
	r = mount_parse(packed, len, "dev", &req, NULL, &err);
	fuzz_check_err(r, &err);
	if (r == 0) {
		if (mount_build_files(&req, &fuzz_mount_content, files, &nfiles) == 0)
			mount_files_free(files, nfiles);
		if (mount_build_response(&req, &fuzz_mount_content, true, &payload, &len) == 0)
			free(payload);
		mount_request_free(&req);
	}
	free(packed);
	free(msg.attributes);
	return 0;
}
