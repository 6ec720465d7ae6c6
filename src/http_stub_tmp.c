/* Temporary: replaced by http.c. */
#include "http.h"
int http_global_init(void)
{
	return 0;
}
void http_global_cleanup(void)
{
}
