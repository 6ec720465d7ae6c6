/* cli_mount: placeholder until its module lands; says so and fails. */
#include <stdio.h>

#include "cli.h"

int cmd_mount(int argc, char **argv)
{
	fprintf(stderr, "maskinporten-csi-provider mount: not implemented yet\n");
	return 2;
}
