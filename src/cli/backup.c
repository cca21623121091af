/* backup.c - `thinghz backup DIR` and `thinghz restore DIR --data-dir D`:
 * the registry (DIR/registry.db) and the time-series engine (DIR/tsdb/).
 *
 * Backup prefers the daemon: if the one at --url publishes
 * POST /api/v1/admin/backup in its OpenAPI document, the daemon copies both
 * itself while it serves (reg_backup, tsdb_backup). Otherwise, with
 * --data-dir: when no daemon holds the data dir, the CLI opens the registry
 * (taking its lock, so no daemon can start meanwhile) and the engine itself
 * and runs the same backups; when a daemon without the route holds it, only
 * the registry can be copied beside it (reg_backup_offline; SQLite's WAL
 * mode gives a consistent snapshot) and the CLI says so (docs/CLI.md). */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli_int.h"
#include "core/log.h"
#include "tsdb/tsdb.h"

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

/* The engine of a stopped daemon's data dir: opened, backed up, closed. */
static int offline_tsdb_backup(cli_ctx *c, const char *zDir, uint64_t *nSeries)
{
    char zTsdb[PATH_MAX + 8], zOut[PATH_MAX + 8], err[TSDB_ERR_LEN] = "";
    snprintf(zTsdb, sizeof zTsdb, "%s/tsdb", c->zDataDir);
    snprintf(zOut, sizeof zOut, "%s/tsdb", zDir);
    struct stat st;
    if (stat(zTsdb, &st) != 0) return CLI_OK; /* no telemetry yet: nothing to copy */
    tsdb_options o = {.dir = zTsdb, .fsync = TSDB_FSYNC_ALWAYS};
    tsdb *db = NULL;
    thz_err e = tsdb_open(&o, &db, err);
    if (e == THZ_OK) {
        e = tsdb_backup(db, zOut, err);
        tsdb_stats s;
        tsdb_get_stats(db, &s);
        *nSeries = s.series;
        tsdb_close(db);
    }
    if (e != THZ_OK) {
        fprintf(stderr, "thinghz: backup: time-series engine: %s\n",
                err[0] ? err : thz_strerror(e));
        return CLI_FAIL;
    }
    return CLI_OK;
}

static int offline_backup(cli_ctx *c, const char *zDir, bool live)
{
    char err[REG_ERR_LEN] = "";
    char zDb[PATH_MAX + 16];
    snprintf(zDb, sizeof zDb, "%s/registry.db", c->zDataDir);
    struct stat st;
    if (stat(zDb, &st) != 0) {
        fprintf(stderr, "thinghz: backup: %s: %s\n", zDb, strerror(errno));
        return CLI_FAIL;
    }
    if (live) {
        /* A daemon without the backup route: the registry only. */
        thz_err e = reg_backup_offline(c->zDataDir, zDir, err);
        if (e != THZ_OK) return cli_reg_fail("backup", e, err);
        fprintf(stderr,
                "thinghz: the daemon at %s has no backup route: the time-series data "
                "was not copied (stop the daemon, or upgrade it)\n",
                c->zUrl);
        if (c->json)
            printf("{\"dir\":\"%s\",\"method\":\"sqlite-live\",\"tsdb\":false}\n", zDir);
        else
            printf("registry of %s backed up to %s/registry.db (SQLite backup API beside the "
                   "running daemon)\n",
                   c->zDataDir, zDir);
        return CLI_OK;
    }
    /* Holding the registry (and its lock on the data dir) keeps a daemon
     * from starting on it while the engine is open here. */
    if (cli_offline_open(c) != CLI_OK) return CLI_FAIL;
    thz_err e = reg_backup(c->reg, zDir, err);
    if (e != THZ_OK) return cli_reg_fail("backup", e, err);
    uint64_t nSeries = 0;
    if (offline_tsdb_backup(c, zDir, &nSeries) != CLI_OK) return CLI_FAIL;
    if (c->json)
        printf("{\"dir\":\"%s\",\"method\":\"offline\",\"tsdb\":{\"series\":%llu}}\n", zDir,
               (unsigned long long)nSeries);
    else
        printf("%s backed up to %s (registry.db and tsdb/, %llu series; daemon not running)\n",
               c->zDataDir, zDir, (unsigned long long)nSeries);
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
                printf("the daemon at %s backed up its registry and time-series data to %s\n",
                       c->zUrl, zDir);
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

/* rm -rf of a directory this command made (bounded depth: the engine's
 * layout is two levels). */
static void remove_tree(const char *zPath, int depth)
{
    DIR *d = depth < 4 ? opendir(zPath) : NULL;
    struct dirent *e;
    char z[PATH_MAX + 300];
    while (d && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(z, sizeof z, "%s/%s", zPath, e->d_name);
        struct stat st;
        if (lstat(z, &st) == 0 && S_ISDIR(st.st_mode))
            remove_tree(z, depth + 1);
        else
            unlink(z);
    }
    if (d) closedir(d);
    rmdir(zPath);
}

/* cp -r of the engine's backup (regular files, two levels). */
static int copy_tree(const char *zFrom, const char *zTo, int depth)
{
    if (depth > 3 || mkdir(zTo, 0755) != 0) return -1;
    DIR *d = opendir(zFrom);
    if (!d) return -1;
    struct dirent *e;
    int rc = 0;
    char zA[PATH_MAX + 300], zB[PATH_MAX + 300], buf[65536];
    while (rc == 0 && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(zA, sizeof zA, "%s/%s", zFrom, e->d_name);
        snprintf(zB, sizeof zB, "%s/%s", zTo, e->d_name);
        struct stat st;
        if (lstat(zA, &st) != 0) {
            rc = -1;
        } else if (S_ISDIR(st.st_mode)) {
            rc = copy_tree(zA, zB, depth + 1);
        } else if (S_ISREG(st.st_mode)) {
            FILE *in = fopen(zA, "rb"), *out = in ? fopen(zB, "wb") : NULL;
            size_t n;
            while (out && (n = fread(buf, 1, sizeof buf, in)) > 0)
                if (fwrite(buf, 1, n, out) != n) rc = -1;
            if (!out || ferror(in) || fflush(out) != 0 || fsync(fileno(out)) != 0) rc = -1;
            if (out && fclose(out) != 0) rc = -1;
            if (in) fclose(in);
        }
    }
    closedir(d);
    return rc;
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
    /* The engine's copy is staged beside the live one first, so a failed
     * copy leaves the data dir as it was; the registry restore then checks
     * that no daemon holds the data dir, and the swap is two renames. */
    char zSrc[PATH_MAX + 8], zLive[PATH_MAX + 8], zStage[PATH_MAX + 16], zOld[PATH_MAX + 16];
    snprintf(zSrc, sizeof zSrc, "%s/tsdb", argv[1]);
    snprintf(zLive, sizeof zLive, "%s/tsdb", c->zDataDir);
    snprintf(zStage, sizeof zStage, "%s/tsdb.restore", c->zDataDir);
    snprintf(zOld, sizeof zOld, "%s/tsdb.old", c->zDataDir);
    bool hasTsdb = stat(zSrc, &st) == 0 && S_ISDIR(st.st_mode);
    remove_tree(zStage, 0);
    if (hasTsdb && copy_tree(zSrc, zStage, 0) != 0) {
        fprintf(stderr, "thinghz: restore: cannot copy %s to %s: %s\n", zSrc, zStage,
                strerror(errno));
        remove_tree(zStage, 0);
        return CLI_FAIL;
    }
    char err[REG_ERR_LEN] = "";
    thz_err e = reg_restore_offline(c->zDataDir, argv[1], err);
    if (e != THZ_OK) {
        remove_tree(zStage, 0);
        return cli_reg_fail("restore", e, err);
    }
    if (hasTsdb) {
        remove_tree(zOld, 0);
        if ((stat(zLive, &st) == 0 && rename(zLive, zOld) != 0) || rename(zStage, zLive) != 0) {
            fprintf(stderr,
                    "thinghz: restore: the registry was restored but %s could not be "
                    "replaced by %s: %s\n",
                    zLive, zStage, strerror(errno));
            return CLI_FAIL;
        }
        remove_tree(zOld, 0);
    }
    if (c->json)
        printf("{\"dir\":\"%s\",\"data_dir\":\"%s\",\"tsdb\":%s}\n", argv[1], c->zDataDir,
               hasTsdb ? "true" : "false");
    else
        printf("registry%s restored from %s into %s\n", hasTsdb ? " and time-series data" : "",
               argv[1], c->zDataDir);
    return CLI_OK;
}
