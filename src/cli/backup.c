/* backup.c - `thinghz backup DIR` and `thinghz restore DIR --data-dir D`.
 *
 * Backup prefers the daemon: if the one at --url publishes
 * POST /api/v1/admin/backup in its OpenAPI document, the daemon copies its
 * own database (reg_backup). Otherwise the CLI copies DATA_DIR/registry.db
 * itself with reg_backup_offline, i.e. SQLite's backup API, whether or not
 * a daemon has the database open: in WAL mode a reader in another process
 * sees one consistent snapshot and never blocks the writer (docs/CLI.md). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli_int.h"

#define BACKUP_ROUTE "/api/v1/admin/backup"

/* True if the daemon's OpenAPI document lists the backup route. */
static bool daemon_has_backup(cli_ctx *c)
{
    cli_resp r;
    if (cli_http(c, "GET", "/api/v1/openapi.json", NULL, false, 10, &r) != CLI_OK) return false;
    const cJSON *paths = cJSON_GetObjectItemCaseSensitive(r.json, "paths");
    bool has = r.status == 200 && (cJSON_GetObjectItemCaseSensitive(paths, BACKUP_ROUTE) ||
                                   cJSON_GetObjectItemCaseSensitive(paths, "/admin/backup"));
    cli_resp_free(&r);
    return has;
}

static int offline_backup(cli_ctx *c, const char *zDir, bool live)
{
    char err[REG_ERR_LEN] = "";
    thz_err e = reg_backup_offline(c->zDataDir, zDir, err);
    if (e != THZ_OK) return cli_reg_fail("backup", e, err);
    if (c->json)
        printf("{\"dir\":\"%s\",\"method\":\"%s\"}\n", zDir, live ? "sqlite-live" : "offline");
    else
        printf("registry of %s backed up to %s/registry.db (%s)\n", c->zDataDir, zDir,
               live ? "SQLite backup API beside the running daemon" : "daemon not running");
    return CLI_OK;
}

int cli_cmd_backup(cli_ctx *c, int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-')
        return cli_usage_error("usage: thinghz backup DIR [--data-dir D] [--url URL]");
    if (mkdir(argv[1], 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "thinghz: %s: %s\n", argv[1], strerror(errno));
        return CLI_FAIL;
    }
    /* The daemon runs elsewhere (another cwd): give it an absolute path. */
    char zDir[PATH_MAX];
    if (!realpath(argv[1], zDir)) {
        fprintf(stderr, "thinghz: %s: %s\n", argv[1], strerror(errno));
        return CLI_FAIL;
    }
    bool up = cli_daemon_up(c);
    if (up && daemon_has_backup(c)) {
        cJSON *body = cJSON_CreateObject();
        cJSON_AddStringToObject(body, "dir", zDir);
        cli_resp r;
        int rc = cli_api(c, "POST", BACKUP_ROUTE, body, &r);
        cJSON_Delete(body);
        if (rc == CLI_OK) {
            if (c->json)
                cli_print_raw(&r);
            else
                printf("the daemon at %s backed up its registry to %s/registry.db\n", c->zUrl,
                       zDir);
        }
        cli_resp_free(&r);
        return rc;
    }
    if (!c->zDataDir)
        return cli_usage_error(up ? "backup: the daemon at %s has no backup route; give "
                                    "--data-dir (its data dir) to copy the database directly"
                                  : "backup: no daemon answers at %s; give --data-dir",
                               c->zUrl);
    return offline_backup(c, zDir, up);
}

int cli_cmd_restore(cli_ctx *c, int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-' || !c->zDataDir)
        return cli_usage_error("usage: thinghz restore DIR --data-dir D (with the daemon "
                               "stopped)");
    struct stat st;
    if (stat(c->zDataDir, &st) != 0 && mkdir(c->zDataDir, 0755) != 0) {
        fprintf(stderr, "thinghz: %s: %s\n", c->zDataDir, strerror(errno));
        return CLI_FAIL;
    }
    char err[REG_ERR_LEN] = "";
    thz_err e = reg_restore_offline(c->zDataDir, argv[1], err);
    if (e != THZ_OK) return cli_reg_fail("restore", e, err);
    if (c->json)
        printf("{\"dir\":\"%s\",\"data_dir\":\"%s\"}\n", argv[1], c->zDataDir);
    else
        printf("registry restored from %s/registry.db into %s\n", argv[1], c->zDataDir);
    return CLI_OK;
}
