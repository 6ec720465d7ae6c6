/*
 * fuzz_strings: the small parsers of untrusted strings. The first byte picks
 * one: writer_path_valid (a file name the driver would write),
 * http_parse_retry_after (a Retry-After header), digdir_parse_time (a
 * DigDir timestamp).
 */
#include "digdir.h"
#include "fuzz.h"
#include "writer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int64_t ms;
	long after;
	char *s;

	if (size < 1)
		return 0;
	s = fuzz_str(data + 1, size - 1);
	switch (data[0] % 3) {
	case 0:
		writer_path_valid(s);
		break;
	case 1:
		after = http_parse_retry_after(s, 1700000000);
		if (after < -1)
			abort();
		break;
	default:
		digdir_parse_time(s, &ms);
		break;
	}
	free(s);
	return 0;
}
