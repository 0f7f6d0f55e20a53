/*
 * mcpctl: the client of the keeper's control socket. Its commands (status,
 * auth, connect) arrive with the keeper's control protocol; for now it
 * reports its version.
 */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
	if (argc == 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0)) {
		printf("mcpctl %s\n", MCPKEEPER_VERSION);
		return 0;
	}
	if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		printf("Usage: mcpctl --version | --help\n");
		return 0;
	}
	fprintf(stderr, "Usage: mcpctl --version | --help\n");
	return 2;
}
