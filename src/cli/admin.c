/* admin.c - `thinghz user ...`, `token ...`, `group ...` and `fleet`: one
 * API request each (user rm/set-role by email first look the id up), and
 * user add/list offline on --data-dir when no daemon answers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_int.h"

/* Prints the response of a successful request: raw JSON, or the table of
 * its "items", or the object as a record, or zDone. */
static int finish(cli_ctx *c, int rc, cli_resp *r, const cli_col *cols, int nCol, const char *zDone)
{
    if (rc == CLI_OK) {
        if (c->json)
            cli_print_raw(r);
        else if (cols)
            cli_table(cJSON_GetObjectItemCaseSensitive(r->json, "items"), cols, nCol);
        else if (zDone)
            printf("%s\n", zDone);
        else
            cli_record(r->json);
    }
    cli_resp_free(r);
    return rc;
}

static bool offline(cli_ctx *c)
{
    return c->zDataDir && !cli_daemon_up(c);
}

/* ---- users ---- */

static const cli_col user_cols[] = {
    {"ID", "id"},
    {"EMAIL", "email"},
    {"ROLE", "role"},
    {"DISABLED", "disabled"},
    {"CREATED", "created_at"},
};
#define N_USER_COLS ((int)(sizeof user_cols / sizeof user_cols[0]))

/* The numeric id of ID-or-EMAIL in zOut (looked up in the user list). */
static int user_id(cli_ctx *c, const char *zWho, char *zOut, size_t nOut)
{
    if (zWho[0] && strspn(zWho, "0123456789") == strlen(zWho)) {
        snprintf(zOut, nOut, "%s", zWho);
        return CLI_OK;
    }
    cli_resp r;
    int rc = cli_api(c, "GET", "/api/v1/users", NULL, &r);
    if (rc != CLI_OK) {
        cli_resp_free(&r);
        return rc;
    }
    rc = CLI_FAIL;
    const cJSON *u;
    cJSON_ArrayForEach(u, cJSON_GetObjectItemCaseSensitive(r.json, "items"))
    {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(u, "email");
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(u, "id");
        if (cJSON_IsString(e) && strcmp(e->valuestring, zWho) == 0 && cJSON_IsNumber(id)) {
            snprintf(zOut, nOut, "%lld", (long long)id->valuedouble);
            rc = CLI_OK;
        }
    }
    if (rc != CLI_OK) fprintf(stderr, "thinghz: no user %s\n", zWho);
    cli_resp_free(&r);
    return rc;
}

static int user_add(cli_ctx *c, int argc, char **argv)
{
    if (argc < 3 || argv[2][0] == '-')
        return cli_usage_error("usage: thinghz user add EMAIL [--role admin|operator|viewer] "
                               "[--password P]");
    const char *zRole = "viewer", *zPass = NULL;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--role") == 0 && i + 1 < argc)
            zRole = argv[++i];
        else if (strcmp(argv[i], "--password") == 0 && i + 1 < argc)
            zPass = argv[++i];
        else
            return cli_usage_error("user add: bad argument '%s'", argv[i]);
    }
    char *zPw = cli_read_secret(zPass, "THINGHZ_NEW_PASSWORD", "new user's password");
    if (!zPw) return CLI_USAGE;
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "email", argv[2]);
    cJSON_AddStringToObject(body, "password", zPw);
    cJSON_AddStringToObject(body, "role", zRole);
    memset(zPw, 0, strlen(zPw));
    free(zPw);
    int rc;
    if (offline(c)) {
        cJSON *out = NULL;
        char err[REG_ERR_LEN] = "";
        if ((rc = cli_offline_open(c)) == CLI_OK) {
            thz_err e = reg_user_create(c->reg, REG_DEFAULT_TENANT, body, &out, err);
            if (e != THZ_OK)
                rc = cli_reg_fail("user add", e, err);
            else if (c->json)
                cli_print_json(out);
            else
                printf("user %s created (offline, in %s)\n", argv[2], c->zDataDir);
        }
        cJSON_Delete(out);
        cJSON_Delete(body);
        return rc;
    }
    cli_resp r;
    rc = cli_api(c, "POST", "/api/v1/users", body, &r);
    cJSON_Delete(body);
    char zDone[300];
    snprintf(zDone, sizeof zDone, "user %s created with role %s", argv[2], zRole);
    return finish(c, rc, &r, NULL, 0, zDone);
}

static int user_list(cli_ctx *c)
{
    if (offline(c)) {
        int rc = cli_offline_open(c);
        if (rc != CLI_OK) return rc;
        cJSON *out = NULL;
        thz_err e = reg_user_list(c->reg, REG_DEFAULT_TENANT, &out);
        if (e != THZ_OK) return cli_reg_fail("user list", e, NULL);
        if (c->json) {
            /* The API's shape: {"items": [...]}. */
            cJSON *o = cJSON_CreateObject();
            cJSON_AddItemToObject(o, "items", out);
            cli_print_json(o);
            cJSON_Delete(o);
        } else {
            cli_table(out, user_cols, N_USER_COLS);
            cJSON_Delete(out);
        }
        return CLI_OK;
    }
    cli_resp r;
    return finish(c, cli_api(c, "GET", "/api/v1/users", NULL, &r), &r, user_cols, N_USER_COLS,
                  NULL);
}

int cli_cmd_user(cli_ctx *c, int argc, char **argv)
{
    const char *zSub = argc >= 2 ? argv[1] : "";
    if (strcmp(zSub, "add") == 0) return user_add(c, argc, argv);
    if (strcmp(zSub, "list") == 0 || strcmp(zSub, "ls") == 0) {
        if (argc != 2) return cli_usage_error("usage: thinghz user list");
        return user_list(c);
    }
    bool rm = strcmp(zSub, "rm") == 0, role = strcmp(zSub, "set-role") == 0;
    if ((rm && argc != 3) || (role && argc != 4) || (!rm && !role))
        return cli_usage_error("usage: thinghz user add EMAIL [--role R] [--password P] | list | "
                               "rm ID|EMAIL | set-role ID|EMAIL admin|operator|viewer");
    char zId[32], zPath[128];
    int rc = user_id(c, argv[2], zId, sizeof zId);
    if (rc != CLI_OK) return rc;
    snprintf(zPath, sizeof zPath, "/api/v1/users/%s", zId);
    cli_resp r;
    char zDone[300];
    if (rm) {
        snprintf(zDone, sizeof zDone, "user %s deleted", argv[2]);
        return finish(c, cli_api(c, "DELETE", zPath, NULL, &r), &r, NULL, 0, zDone);
    }
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "role", argv[3]);
    rc = cli_api(c, "PATCH", zPath, body, &r);
    cJSON_Delete(body);
    snprintf(zDone, sizeof zDone, "user %s now has role %s", argv[2], argv[3]);
    return finish(c, rc, &r, NULL, 0, zDone);
}

/* ---- API tokens ---- */

static const cli_col token_cols[] = {
    {"ID", "id"},
    {"NAME", "name"},
    {"ROLE", "role"},
    {"EXPIRES", "expires_at"},
    {"LAST USED", "last_used_at"},
};

int cli_cmd_token(cli_ctx *c, int argc, char **argv)
{
    const char *zSub = argc >= 2 ? argv[1] : "";
    cli_resp r;
    if ((strcmp(zSub, "list") == 0 || strcmp(zSub, "ls") == 0) && argc == 2)
        return finish(c, cli_api(c, "GET", "/api/v1/tokens", NULL, &r), &r, token_cols, 5, NULL);
    if (strcmp(zSub, "revoke") == 0 && argc == 3 && argv[2][0] &&
        strspn(argv[2], "0123456789") == strlen(argv[2])) {
        char zPath[128], zDone[128];
        snprintf(zPath, sizeof zPath, "/api/v1/tokens/%s", argv[2]);
        snprintf(zDone, sizeof zDone, "token %s revoked", argv[2]);
        return finish(c, cli_api(c, "DELETE", zPath, NULL, &r), &r, NULL, 0, zDone);
    }
    if (strcmp(zSub, "create") == 0 && argc >= 3 && argv[2][0] != '-') {
        cJSON *body = cJSON_CreateObject();
        cJSON_AddStringToObject(body, "name", argv[2]);
        for (int i = 3; i < argc; i++) {
            char *end = NULL;
            if (strcmp(argv[i], "--expires") == 0 && i + 1 < argc &&
                strtoll(argv[i + 1], &end, 10) > 0 && !*end) {
                cJSON_AddNumberToObject(body, "expires_in_s", (double)strtoll(argv[++i], 0, 10));
            } else if (strcmp(argv[i], "--role") == 0 && i + 1 < argc) {
                cJSON_AddStringToObject(body, "role", argv[++i]);
            } else {
                cJSON_Delete(body);
                return cli_usage_error("token create: bad argument '%s' (--expires SECONDS, "
                                       "--role R)",
                                       argv[i]);
            }
        }
        int rc = cli_api(c, "POST", "/api/v1/tokens", body, &r);
        cJSON_Delete(body);
        if (rc == CLI_OK && !c->json) {
            char a[64], b[64], d[64];
            printf("token %s created: id %s, role %s, expires %s\n", argv[2],
                   cli_value(cJSON_GetObjectItemCaseSensitive(r.json, "id"), a, sizeof a),
                   cli_value(cJSON_GetObjectItemCaseSensitive(r.json, "role"), b, sizeof b),
                   cli_value(cJSON_GetObjectItemCaseSensitive(r.json, "expires_at"), d, sizeof d));
            printf("token: %s\n",
                   cli_value(cJSON_GetObjectItemCaseSensitive(r.json, "token"), a, sizeof a));
            printf("note: the token is shown only now and cannot be shown again.\n");
            cli_resp_free(&r);
            return rc;
        }
        return finish(c, rc, &r, NULL, 0, NULL);
    }
    return cli_usage_error("usage: thinghz token create NAME [--expires SECONDS] [--role R] | "
                           "list | revoke ID");
}

/* ---- groups ---- */

static const cli_col group_cols[] = {
    {"ID", "id"},
    {"NAME", "name"},
    {"QUERY", "query"},
    {"DEVICES", "devices"},
};

static bool group_path(char *zBuf, size_t n, const char *zGroup, const char *zDev)
{
    snprintf(zBuf, n, "/api/v1/groups/");
    if (!cli_path_append(zBuf, n, zGroup)) return false;
    if (!zDev) return true;
    if (strlen(zBuf) + 9 >= n) return false;
    strcat(zBuf, "/devices/");
    return cli_path_append(zBuf, n, zDev);
}

int cli_cmd_group(cli_ctx *c, int argc, char **argv)
{
    const char *zSub = argc >= 2 ? argv[1] : "";
    cli_resp r;
    char zPath[1024], zDone[600];
    if ((strcmp(zSub, "list") == 0 || strcmp(zSub, "ls") == 0) && argc == 2)
        return finish(c, cli_api(c, "GET", "/api/v1/groups", NULL, &r), &r, group_cols, 4, NULL);
    if ((strcmp(zSub, "show") == 0 || strcmp(zSub, "rm") == 0) && argc == 3) {
        if (!group_path(zPath, sizeof zPath, argv[2], NULL))
            return cli_usage_error("group id too long");
        bool rm = zSub[0] == 'r';
        snprintf(zDone, sizeof zDone, "group %s deleted", argv[2]);
        return finish(c, cli_api(c, rm ? "DELETE" : "GET", zPath, NULL, &r), &r, NULL, 0,
                      rm ? zDone : NULL);
    }
    if ((strcmp(zSub, "add-device") == 0 || strcmp(zSub, "rm-device") == 0) && argc == 4) {
        if (!group_path(zPath, sizeof zPath, argv[2], argv[3]))
            return cli_usage_error("id too long");
        bool add = zSub[0] == 'a';
        snprintf(zDone, sizeof zDone, "device %s %s group %s", argv[3],
                 add ? "added to" : "removed from", argv[2]);
        return finish(c, cli_api(c, add ? "PUT" : "DELETE", zPath, NULL, &r), &r, NULL, 0, zDone);
    }
    if (strcmp(zSub, "add") == 0 && argc >= 3 && argv[2][0] != '-') {
        cJSON *body = cJSON_CreateObject(), *query = cJSON_CreateObject();
        cJSON_AddStringToObject(body, "id", argv[2]);
        for (int i = 3; i < argc; i++) {
            const char *v = i + 1 < argc ? argv[i + 1] : NULL;
            const char *eq = v ? strchr(v, '=') : NULL;
            if (strcmp(argv[i], "--name") == 0 && v) {
                cJSON_AddStringToObject(body, "name", argv[++i]);
            } else if (strcmp(argv[i], "--query") == 0 && eq && eq > v) {
                char zKey[256];
                snprintf(zKey, sizeof zKey, "%.*s", (int)(eq - v), v);
                cJSON_AddStringToObject(query, zKey, eq + 1);
                i++;
            } else {
                cJSON_Delete(body);
                cJSON_Delete(query);
                return cli_usage_error("group add: bad argument '%s' (--name N, --query k=v)",
                                       argv[i]);
            }
        }
        if (cJSON_GetArraySize(query))
            cJSON_AddItemToObject(body, "query", query);
        else
            cJSON_Delete(query);
        int rc = cli_api(c, "POST", "/api/v1/groups", body, &r);
        cJSON_Delete(body);
        snprintf(zDone, sizeof zDone, "group %s created", argv[2]);
        return finish(c, rc, &r, NULL, 0, zDone);
    }
    return cli_usage_error("usage: thinghz group add ID [--name N] [--query k=v]... | list | "
                           "show ID | rm ID | add-device GROUP DEVICE | rm-device GROUP DEVICE");
}

int cli_cmd_fleet(cli_ctx *c, int argc, char **argv)
{
    if (argc != 1) return cli_usage_error("usage: thinghz fleet");
    cli_resp r;
    return finish(c, cli_api(c, "GET", "/api/v1/fleet", NULL, &r), &r, NULL, 0, NULL);
}
