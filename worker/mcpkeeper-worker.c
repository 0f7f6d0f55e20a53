/*
 * mcpkeeper-worker: one process per upstream MCP server, started by the
 * keeper with its channel on fd 3. Proxying is not built yet; this binary
 * answers --version and --help so that packaging and the supervisor have a
 * stable name to exec.
 */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
	if (argc == 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0)) {
		printf("mcpkeeper-worker %s\n", MCPKEEPER_VERSION);
		return 0;
	}
	if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		printf("Usage: mcpkeeper-worker --version | --help\n"
		       "The keeper starts workers itself; they are not run by hand.\n");
		return 0;
	}
	fprintf(stderr, "Usage: mcpkeeper-worker --version | --help\n");
	return 2;
}
