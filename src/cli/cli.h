/* cli.h - the administration commands of the thinghz binary (login, user,
 * device, token, group, fleet, backup, restore, export): a client of the REST API
 * over libcurl, with an offline mode that works on a stopped daemon's
 * registry database through registry.h. docs/CLI.md is the manual. */
#ifndef THZ_CLI_H
#define THZ_CLI_H

#include <stdbool.h>
#include <stdio.h>

/* True if name ("device", "login", ...) is one of the commands cli_main runs. */
bool cli_handles(const char *name);

/* Runs `thinghz CMD ...` (argv[1] is the command). Returns the process exit
 * status: 0 success, 1 the operation failed (the API's message was printed),
 * 2 a usage error. Reads THINGHZ_URL, THINGHZ_TOKEN, THINGHZ_PASSWORD and
 * HOME; may write ~/.config/thinghz/token. */
int cli_main(int argc, char **argv);

/* Writes the usage lines of the commands (for the binary's --help). */
void cli_usage(FILE *out);

#endif
