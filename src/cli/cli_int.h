/* cli_int.h - private to src/cli: the invocation context, the HTTP client
 * and the output helpers the command files share. */
#ifndef THZ_CLI_INT_H
#define THZ_CLI_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "registry/registry.h"

#define CLI_OK    0
#define CLI_FAIL  1 /* the operation failed; the reason was printed */
#define CLI_USAGE 2 /* bad command line; the usage was printed */

#define CLI_MAX_BODY (64u << 20) /* a response larger than this is an error */

typedef struct cli_ctx {
    char zUrl[1024];      /* base URL, no trailing slash */
    const char *zDataDir; /* --data-dir, or NULL */
    bool json;            /* --json: print the API's JSON unchanged */
    char zToken[1024];    /* bearer token ("" = none) */
    void *curl;           /* CURL *, created on first use */
    registry *reg;        /* offline mode: the opened registry, else NULL */
} cli_ctx;

/* One HTTP response. zBody is NUL-terminated and owned by the response;
 * json is its parse (NULL if the body is not JSON). cli_resp_free frees both. */
typedef struct cli_resp {
    long status;
    char *zBody;
    size_t nBody;
    cJSON *json;
} cli_resp;

/* Sends METHOD base-URL+path with body (may be NULL) as JSON and the bearer
 * token when auth. Returns CLI_OK when an HTTP response came back (any
 * status), CLI_FAIL (message printed) when the server could not be reached.
 * timeout_s bounds the whole request. */
int cli_http(cli_ctx *c, const char *zMethod, const char *zPath, const cJSON *body, bool auth,
             long timeout_s, cli_resp *r);
/* cli_http with auth, then: a 2xx is CLI_OK; anything else prints the API's
 * error message (or the status) to stderr and is CLI_FAIL. r is filled in
 * either case and must be freed. */
int cli_api(cli_ctx *c, const char *zMethod, const char *zPath, const cJSON *body, cli_resp *r);
void cli_resp_free(cli_resp *r);
/* True if a daemon answers GET /api/v1/health at the URL within 2 s. */
bool cli_daemon_up(cli_ctx *c);

/* Appends s percent-encoded to the path buffer; false when it does not fit. */
bool cli_path_append(char *zBuf, size_t nBuf, const char *s);

/* Offline mode: opens the registry of --data-dir (CLI_OK), or prints why not. */
int cli_offline_open(cli_ctx *c);
/* Prints "thinghz: <what>: <err or thz_strerror(rc)>" and returns CLI_FAIL. */
int cli_reg_fail(const char *zWhat, thz_err rc, const char *zErr);

/* ---- output ---- */

/* A table column: header and the JSON key of the row objects it shows. */
typedef struct cli_col {
    const char *zHead;
    const char *zKey;
} cli_col;
/* Prints the objects of arr as an aligned table (values: strings as they
 * are, booleans yes/no, null "-", objects k=v,k=v, arrays a,b). */
void cli_table(const cJSON *arr, const cli_col *cols, int nCol);
/* Prints "key: value" lines of an object, aligned. */
void cli_record(const cJSON *obj);
/* Formats one JSON value the way the tables do into buf. */
const char *cli_value(const cJSON *v, char *zBuf, size_t nBuf);
/* Prints a response body unchanged (adding a final newline if missing). */
void cli_print_raw(const cli_resp *r);
/* Prints a cJSON value compactly (offline --json). */
void cli_print_json(const cJSON *v);

/* Reads a secret: --flag value if given, else the environment variable
 * (zEnv may be NULL), else a prompt without echo on the terminal. NULL
 * (message printed) when none is possible. Returns a malloc'd string. */
char *cli_read_secret(const char *zGiven, const char *zEnv, const char *zPrompt);

/* Command groups; argv[0] is the group name ("device"), argc >= 1. */
int cli_cmd_login(cli_ctx *c, int argc, char **argv);
int cli_cmd_logout(cli_ctx *c, int argc, char **argv);
int cli_cmd_whoami(cli_ctx *c, int argc, char **argv);
int cli_cmd_user(cli_ctx *c, int argc, char **argv);
int cli_cmd_device(cli_ctx *c, int argc, char **argv);
int cli_cmd_token(cli_ctx *c, int argc, char **argv);
int cli_cmd_group(cli_ctx *c, int argc, char **argv);
int cli_cmd_fleet(cli_ctx *c, int argc, char **argv);
int cli_cmd_backup(cli_ctx *c, int argc, char **argv);
int cli_cmd_restore(cli_ctx *c, int argc, char **argv);

int cli_cmd_export(cli_ctx *c, int argc, char **argv);

/* ---- export.c's pure parts (unit-tested) ---- */

typedef enum cli_exp_format { CLI_EXP_CSV, CLI_EXP_LP } cli_exp_format;
/* The value columns of the narrow SQL form, in the order export selects them. */
typedef enum cli_exp_kind { CLI_EXP_FLOAT, CLI_EXP_INT, CLI_EXP_BOOL, CLI_EXP_STRING } cli_exp_kind;

/* Parses RFC 3339 ("2026-11-26T10:00:00.5Z", "+02:00" offsets, a space for
 * the T), a bare date (midnight UTC) or epoch milliseconds (digits only)
 * into nanoseconds since the epoch. False when it is none of these. */
bool cli_export_parse_time(const char *z, int64_t *ns);
/* Writes one point to f: CSV "time,device,metric,value" (RFC 4180 quoting;
 * zTime as given) or line protocol "telemetry,device=ID metric=value ns"
 * (escaped; ints with "i", strings quoted). v is the JSON value of the
 * kind's column. 0, or -1 (wrong value type or a write error). */
int cli_export_write(FILE *f, cli_exp_format fmt, const char *zTime, int64_t ns, const char *zDev,
                     const char *zMetric, cli_exp_kind kind, const cJSON *v);

/* Prints "thinghz: message" on stderr and returns CLI_USAGE. */
int cli_usage_error(const char *zFmt, ...) __attribute__((format(printf, 1, 2)));

#endif
