/* devices.c - `thinghz device add|list|show|rotate|disable|enable|rm`, over
 * the API, and add/list/rm offline on --data-dir when no daemon answers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_int.h"

static const cli_col dev_cols[] = {
    {"ID", "id"},         {"NAME", "name"},           {"TYPE", "type"},
    {"ONLINE", "online"}, {"LAST SEEN", "last_seen"},
};
#define N_DEV_COLS ((int)(sizeof dev_cols / sizeof dev_cols[0]))

/* --data-dir given and nobody answers at --url: work on the database. */
static bool use_offline(cli_ctx *c)
{
    return c->zDataDir && !cli_daemon_up(c);
}

static void print_secret(const char *zId, const cJSON *out)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(out, "secret");
    if (!cJSON_IsString(s)) return;
    printf("secret: %s\n", s->valuestring);
    printf("note: this secret is shown only now and cannot be shown again; store it on the\n"
           "      device (MQTT username %s, password the secret). `thinghz device rotate %s`\n"
           "      makes a new one.\n",
           zId, zId);
}

static bool dev_path(char *zBuf, size_t n, const char *zId, const char *zSuffix)
{
    snprintf(zBuf, n, "/api/v1/devices/");
    if (!cli_path_append(zBuf, n, zId)) return false;
    if (strlen(zBuf) + strlen(zSuffix) >= n) return false;
    strcat(zBuf, zSuffix);
    return true;
}

/* "k=v" into obj (k without '=' gets ""); false if malformed. */
static bool add_pair(cJSON *obj, const char *zPair)
{
    const char *eq = strchr(zPair, '=');
    if (eq == zPair) return false;
    char zKey[256];
    size_t kl = eq ? (size_t)(eq - zPair) : strlen(zPair);
    if (kl >= sizeof zKey) return false;
    memcpy(zKey, zPair, kl);
    zKey[kl] = 0;
    cJSON_DeleteItemFromObjectCaseSensitive(obj, zKey);
    return cJSON_AddStringToObject(obj, zKey, eq ? eq + 1 : "") != NULL;
}

static int dev_add(cli_ctx *c, int argc, char **argv)
{
    if (argc < 3 || argv[2][0] == '-')
        return cli_usage_error("usage: thinghz device add ID [--name N] [--type T] [--tag k=v]... "
                               "[--group G]... [--disabled]");
    const char *zId = argv[2];
    cJSON *body = cJSON_CreateObject();
    cJSON *tags = cJSON_CreateObject(), *groups = cJSON_CreateArray();
    cJSON_AddStringToObject(body, "id", zId);
    for (int i = 3; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--name") == 0 && v)
            cJSON_AddStringToObject(body, "name", v), i++;
        else if (strcmp(a, "--type") == 0 && v)
            cJSON_AddStringToObject(body, "type", v), i++;
        else if (strcmp(a, "--tag") == 0 && v && add_pair(tags, v))
            i++;
        else if (strcmp(a, "--group") == 0 && v)
            cJSON_AddItemToArray(groups, cJSON_CreateString(v)), i++;
        else if (strcmp(a, "--disabled") == 0)
            cJSON_AddBoolToObject(body, "enabled", 0);
        else {
            cJSON_Delete(body);
            cJSON_Delete(tags);
            cJSON_Delete(groups);
            return cli_usage_error("device add: bad argument '%s'", a);
        }
    }
    if (cJSON_GetArraySize(tags))
        cJSON_AddItemToObject(body, "tags", tags);
    else
        cJSON_Delete(tags);
    if (cJSON_GetArraySize(groups))
        cJSON_AddItemToObject(body, "groups", groups);
    else
        cJSON_Delete(groups);

    int rc;
    if (use_offline(c)) {
        cJSON *out = NULL;
        char err[REG_ERR_LEN] = "";
        thz_err e = THZ_OK;
        if ((rc = cli_offline_open(c)) == CLI_OK) {
            e = reg_device_create(c->reg, REG_DEFAULT_TENANT, body, &out, err);
            if (e != THZ_OK) rc = cli_reg_fail("device add", e, err);
        }
        if (rc == CLI_OK) {
            if (c->json)
                cli_print_json(out);
            else {
                printf("device %s created (offline, in %s)\n", zId, c->zDataDir);
                print_secret(zId, out);
            }
        }
        cJSON_Delete(out);
        cJSON_Delete(body);
        return rc;
    }
    cli_resp r;
    rc = cli_api(c, "POST", "/api/v1/devices", body, &r);
    cJSON_Delete(body);
    if (rc == CLI_OK) {
        if (c->json)
            cli_print_raw(&r);
        else {
            printf("device %s created\n", zId);
            print_secret(zId, r.json);
        }
    }
    cli_resp_free(&r);
    return rc;
}

static int dev_list(cli_ctx *c, int argc, char **argv)
{
    const char *zTag = NULL, *zGroup = NULL, *zCursor = NULL;
    int online = -1, limit = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--tag") == 0 && v)
            zTag = v, i++;
        else if (strcmp(a, "--group") == 0 && v)
            zGroup = v, i++;
        else if (strcmp(a, "--online") == 0)
            online = 1;
        else if (strcmp(a, "--offline") == 0)
            online = 0;
        else if (strcmp(a, "--cursor") == 0 && v)
            zCursor = v, i++;
        else if (strcmp(a, "--limit") == 0 && v && atoi(v) >= 1 && atoi(v) <= 1000)
            limit = atoi(v), i++;
        else
            return cli_usage_error("usage: thinghz device list [--tag k=v] [--group G] "
                                   "[--online|--offline] [--limit 1..1000] [--cursor C]");
    }
    /* A table follows next_cursor through every page (--limit is the page
     * size); --json prints one page unchanged, for scripts to page. */
    int page = limit ? limit : c->json ? 100 : 1000;
    cJSON *all = cJSON_CreateArray();
    char zCur[512] = "";
    if (zCursor) snprintf(zCur, sizeof zCur, "%s", zCursor);
    bool offline = use_offline(c);
    int rc = offline ? cli_offline_open(c) : CLI_OK;
    while (rc == CLI_OK) {
        cJSON *out = NULL;
        if (offline) {
            char err[REG_ERR_LEN] = "";
            thz_err e = reg_device_list(c->reg, REG_DEFAULT_TENANT, zTag, zGroup, online, page,
                                        zCur[0] ? zCur : NULL, &out, err);
            if (e != THZ_OK) {
                rc = cli_reg_fail("device list", e, err);
                break;
            }
            if (c->json) {
                cli_print_json(out);
                cJSON_Delete(out);
                break;
            }
        } else {
            char zPath[2048];
            snprintf(zPath, sizeof zPath, "/api/v1/devices?limit=%d", page);
            if (zTag) strcat(zPath, "&tag="), cli_path_append(zPath, sizeof zPath, zTag);
            if (zGroup) strcat(zPath, "&group="), cli_path_append(zPath, sizeof zPath, zGroup);
            if (online >= 0) strcat(zPath, online ? "&online=true" : "&online=false");
            if (zCur[0]) strcat(zPath, "&cursor="), cli_path_append(zPath, sizeof zPath, zCur);
            cli_resp r;
            rc = cli_api(c, "GET", zPath, NULL, &r);
            if (rc != CLI_OK || c->json) {
                if (rc == CLI_OK) cli_print_raw(&r);
                cli_resp_free(&r);
                break;
            }
            out = r.json;
            r.json = NULL;
            cli_resp_free(&r);
        }
        cJSON *items = cJSON_GetObjectItemCaseSensitive(out, "items");
        cJSON *it;
        while (cJSON_IsArray(items) && (it = cJSON_DetachItemFromArray(items, 0)))
            cJSON_AddItemToArray(all, it);
        const cJSON *next = cJSON_GetObjectItemCaseSensitive(out, "next_cursor");
        bool more = cJSON_IsString(next) && next->valuestring[0] && !limit;
        if (more) snprintf(zCur, sizeof zCur, "%s", next->valuestring);
        cJSON_Delete(out);
        if (!more) break;
    }
    if (rc == CLI_OK && !c->json) cli_table(all, dev_cols, N_DEV_COLS);
    cJSON_Delete(all);
    return rc;
}

static int dev_rm_offline(cli_ctx *c, const char *zId)
{
    int rc = cli_offline_open(c);
    if (rc != CLI_OK) return rc;
    thz_err e = reg_device_delete(c->reg, REG_DEFAULT_TENANT, zId);
    if (e != THZ_OK) return cli_reg_fail(zId, e, NULL);
    if (!c->json) printf("device %s deleted (offline)\n", zId);
    return CLI_OK;
}

/* show, rotate, disable, enable, rm: one device id, one request. */
static int dev_one(cli_ctx *c, int argc, char **argv)
{
    const char *zSub = argv[1];
    if (argc != 3) return cli_usage_error("usage: thinghz device %s ID", zSub);
    const char *zId = argv[2];
    if (strcmp(zSub, "rm") == 0 && use_offline(c)) return dev_rm_offline(c, zId);
    const char *zMethod = "GET", *zSuffix = "";
    if (strcmp(zSub, "rotate") == 0)
        zMethod = "POST", zSuffix = "/rotate";
    else if (strcmp(zSub, "disable") == 0)
        zMethod = "POST", zSuffix = "/disable";
    else if (strcmp(zSub, "enable") == 0)
        zMethod = "POST", zSuffix = "/enable";
    else if (strcmp(zSub, "rm") == 0)
        zMethod = "DELETE";
    char zPath[1024];
    if (!dev_path(zPath, sizeof zPath, zId, zSuffix)) return cli_usage_error("device id too long");
    cli_resp r;
    int rc = cli_api(c, zMethod, zPath, NULL, &r);
    if (rc == CLI_OK) {
        if (c->json)
            cli_print_raw(&r);
        else if (strcmp(zSub, "show") == 0)
            cli_record(r.json);
        else if (strcmp(zSub, "rotate") == 0) {
            printf("device %s has a new secret; the old one no longer works\n", zId);
            print_secret(zId, r.json);
        } else if (strcmp(zSub, "rm") == 0)
            printf("device %s deleted\n", zId);
        else
            printf("device %s %sd\n", zId, zSub);
    }
    cli_resp_free(&r);
    return rc;
}

int cli_cmd_device(cli_ctx *c, int argc, char **argv)
{
    if (argc < 2)
        return cli_usage_error("usage: thinghz device add|list|show|rotate|disable|enable|rm ...");
    const char *zSub = argv[1];
    if (strcmp(zSub, "add") == 0) return dev_add(c, argc, argv);
    if (strcmp(zSub, "list") == 0 || strcmp(zSub, "ls") == 0) return dev_list(c, argc, argv);
    if (strcmp(zSub, "show") == 0 || strcmp(zSub, "rotate") == 0 || strcmp(zSub, "disable") == 0 ||
        strcmp(zSub, "enable") == 0 || strcmp(zSub, "rm") == 0)
        return dev_one(c, argc, argv);
    return cli_usage_error("device: unknown subcommand '%s'", zSub);
}
