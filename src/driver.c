/*
 * driver: the client side of the provider protocol on the gRPC C core, the
 * way the Secrets Store CSI Driver calls a provider: a channel to
 * "unix:PATH" with :authority "localhost", insecure credentials (the socket's
 * file mode is the access control), wait-for-ready so a provider that is
 * still starting is waited for rather than failed.
 *
 * One channel is shared; every call gets its own pluck completion queue, so
 * any number of threads may call at once. Never logs a payload: Mount
 * requests and answers are secret.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "driver.h"
#include "provider.pb-c.h"
#include "wipe.h"

/* The driver's default --max-call-recv-msg-size. */
#define DRIVER_MAX_RECV (4 * 1024 * 1024)

struct driver {
	grpc_channel *channel;
};

struct driver *driver_new(const char *socket_path)
{
	grpc_channel_credentials *creds = NULL;
	struct driver *d = NULL;
	grpc_arg args[2];
	grpc_channel_args chargs = { .num_args = 2, .args = args };
	char *target = NULL;
	size_t tlen;

	if (!socket_path)
		return NULL;
	d = calloc(1, sizeof(*d));
	tlen = strlen(socket_path) + sizeof("unix:");
	target = malloc(tlen);
	if (!d || !target)
		goto fail;
	memcpy(target, "unix:", 5);
	memcpy(target + 5, socket_path, tlen - 5);

	args[0].type = GRPC_ARG_STRING;
	args[0].key = (char *)GRPC_ARG_DEFAULT_AUTHORITY;
	args[0].value.string = (char *)"localhost";
	args[1].type = GRPC_ARG_INTEGER;
	args[1].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
	args[1].value.integer = DRIVER_MAX_RECV;

	grpc_init();
	creds = grpc_insecure_credentials_create();
	d->channel = grpc_channel_create(target, creds, &chargs);
	grpc_channel_credentials_release(creds);
	free(target);
	if (!d->channel) {
		grpc_shutdown();
		free(d);
		return NULL;
	}
	return d;

fail:
	free(target);
	free(d);
	return NULL;
}

void driver_free(struct driver *d)
{
	if (!d)
		return;
	grpc_channel_destroy(d->channel);
	free(d);
	grpc_shutdown();
}

/* Copies a byte buffer into one malloc'd block (at least 1 byte allocated). */
static int buffer_copy(grpc_byte_buffer *bb, uint8_t **ret, size_t *ret_len)
{
	grpc_byte_buffer_reader reader;
	grpc_slice s;
	uint8_t *p;
	size_t len;

	if (!bb) {
		p = malloc(1);
		if (!p)
			return -ENOMEM;
		*ret = p;
		*ret_len = 0;
		return 0;
	}
	if (!grpc_byte_buffer_reader_init(&reader, bb))
		return -EIO;
	s = grpc_byte_buffer_reader_readall(&reader);
	grpc_byte_buffer_reader_destroy(&reader);
	len = GRPC_SLICE_LENGTH(s);
	p = malloc(len ? len : 1);
	if (p)
		memcpy(p, GRPC_SLICE_START_PTR(s), len);
	if (len)
		wipe(GRPC_SLICE_START_PTR(s), len);
	grpc_slice_unref(s);
	if (!p)
		return -ENOMEM;
	*ret = p;
	*ret_len = len;
	return 0;
}

int driver_call(struct driver *d, const char *method, const uint8_t *req, size_t len,
		long timeout_ms, int *ret_status, char **ret_message, uint8_t **ret_payload,
		size_t *ret_len)
{
	grpc_completion_queue *cq = NULL;
	grpc_call *call = NULL;
	grpc_byte_buffer *send = NULL, *recv = NULL;
	grpc_metadata_array initial_md, trailing_md;
	grpc_status_code status = GRPC_STATUS_UNKNOWN;
	grpc_slice details = grpc_empty_slice();
	grpc_slice body;
	gpr_timespec deadline;
	grpc_op ops[6];
	grpc_event ev;
	char *message = NULL;
	uint8_t *payload = NULL;
	size_t payload_len = 0;
	int r = 0;

	if (!d || !method || (!req && len))
		return -EINVAL;
	grpc_metadata_array_init(&initial_md);
	grpc_metadata_array_init(&trailing_md);

	cq = grpc_completion_queue_create_for_pluck(NULL);
	deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
				gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
	call =
	    grpc_channel_create_call(d->channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
				     grpc_slice_from_static_string(method), NULL, deadline, NULL);
	if (!cq || !call) {
		r = -ENOMEM;
		goto out;
	}
	body = grpc_slice_from_copied_buffer((const char *)req, len);
	send = grpc_raw_byte_buffer_create(&body, 1);
	grpc_slice_unref(body);

	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[0].flags = GRPC_INITIAL_METADATA_WAIT_FOR_READY |
		       GRPC_INITIAL_METADATA_WAIT_FOR_READY_EXPLICITLY_SET;
	ops[1].op = GRPC_OP_SEND_MESSAGE;
	ops[1].data.send_message.send_message = send;
	ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial_md;
	ops[4].op = GRPC_OP_RECV_MESSAGE;
	ops[4].data.recv_message.recv_message = &recv;
	ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[5].data.recv_status_on_client.trailing_metadata = &trailing_md;
	ops[5].data.recv_status_on_client.status = &status;
	ops[5].data.recv_status_on_client.status_details = &details;

	if (grpc_call_start_batch(call, ops, 6, ops, NULL) != GRPC_CALL_OK) {
		r = -EIO;
		goto out;
	}
	/* The call's own deadline bounds this wait. */
	ev = grpc_completion_queue_pluck(cq, ops, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
	if (ev.type != GRPC_OP_COMPLETE) {
		r = -EIO;
		goto out;
	}

	if (GRPC_SLICE_LENGTH(details) > 0) {
		message = strndup((const char *)GRPC_SLICE_START_PTR(details),
				  GRPC_SLICE_LENGTH(details));
		if (!message) {
			r = -ENOMEM;
			goto out;
		}
	}
	if (status == GRPC_STATUS_OK) {
		r = buffer_copy(recv, &payload, &payload_len);
		if (r < 0)
			goto out;
		*ret_payload = payload;
		*ret_len = payload_len;
		payload = NULL;
	}
	*ret_status = (int)status;
	*ret_message = message;
	message = NULL;

out:
	free(message);
	grpc_slice_unref(details);
	grpc_metadata_array_destroy(&initial_md);
	grpc_metadata_array_destroy(&trailing_md);
	grpc_byte_buffer_destroy(send);
	grpc_byte_buffer_destroy(recv);
	if (call)
		grpc_call_unref(call);
	if (cq) {
		grpc_completion_queue_shutdown(cq);
		grpc_completion_queue_destroy(cq);
	}
	return r;
}

int driver_version(struct driver *d, long timeout_ms, char **ret_runtime, struct err *err)
{
	V1alpha1__VersionRequest req = V1ALPHA1__VERSION_REQUEST__INIT;
	V1alpha1__VersionResponse *resp = NULL;
	uint8_t buf[64], *payload = NULL;
	char *message = NULL, *runtime = NULL;
	size_t len, plen = 0;
	int status = 0, r;

	req.version = (char *)"v1alpha1";
	len = v1alpha1__version_request__pack(&req, buf);
	r = driver_call(d, "/v1alpha1.CSIDriverProvider/Version", buf, len, timeout_ms, &status,
			&message, &payload, &plen);
	if (r < 0) {
		r = err_set(err, ERR_UNAVAILABLE, -r, "Version call could not be made");
		goto out;
	}
	if (status != 0) {
		r = err_set(err, ERR_UNAVAILABLE, EIO, "Version failed: status %d: %s", status,
			    message ? message : "");
		goto out;
	}
	resp = v1alpha1__version_response__unpack(NULL, plen, payload);
	if (!resp) {
		r = err_set(err, ERR_BAD_RESPONSE, EBADMSG,
			    "Version answer is not a VersionResponse");
		goto out;
	}
	len = strlen(resp->runtime_name) + strlen(resp->runtime_version) + 2;
	runtime = malloc(len);
	if (!runtime) {
		r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto out;
	}
	snprintf(runtime, len, "%s %s", resp->runtime_name, resp->runtime_version);
	*ret_runtime = runtime;
	r = 0;

out:
	if (resp)
		v1alpha1__version_response__free_unpacked(resp, NULL);
	free(payload);
	free(message);
	return r;
}
