/* proto.c - the parser of the live WebSocket's client messages: a pure
 * function of the bytes (unit-tested and fuzzed by tests/fuzz/fuzz_live_cmd.c). */
#include "live/live.h"

#include <string.h>

/* Copies s (NUL-terminated) into the command's buffer at *used. */
static const char *keep(live_cmd *c, size_t *used, const char *s)
{
    size_t n = strlen(s);
    if (*used + n + 1 > sizeof c->buf) return NULL;
    char *d = c->buf + *used;
    memcpy(d, s, n + 1);
    *used += n + 1;
    return d;
}

static bool id_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > REG_ID_MAX) return false;
    for (; *s; s++) {
        char ch = *s;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '.' || ch == ':' || ch == '-'))
            return false;
    }
    return true;
}

thz_err live_parse_cmd(const uint8_t *p, size_t n, live_cmd *out, const char **err)
{
    memset(out, 0, offsetof(live_cmd, buf));
    *err = NULL;
    if (n > LIVE_CLIENT_MAX) {
        *err = "message too long";
        return THZ_EINVAL;
    }
    if (memchr(p, 0, n)) {
        *err = "message is not a JSON object";
        return THZ_EINVAL;
    }
    /* NUL-terminated, so that cJSON refuses trailing garbage */
    char text[LIVE_CLIENT_MAX + 1];
    if (n) memcpy(text, p, n);
    text[n] = 0;
    cJSON *j = cJSON_ParseWithLengthOpts(text, n + 1, NULL, 1);
    thz_err rc = THZ_EINVAL;
    size_t used = 0;
    if (!cJSON_IsObject(j)) {
        *err = "message is not a JSON object";
        goto out;
    }
    const cJSON *op = cJSON_GetObjectItemCaseSensitive(j, "op");
    if (!cJSON_IsString(op)) {
        *err = "message needs \"op\": a string";
        goto out;
    }
    const char *o = op->valuestring;
    if (strcmp(o, "auth") == 0) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "token");
        if (!cJSON_IsString(t) || !t->valuestring[0]) {
            *err = "auth needs \"token\": a string";
            goto out;
        }
        out->op = LIVE_OP_AUTH;
        if (!(out->token = keep(out, &used, t->valuestring))) {
            *err = "token too long";
            goto out;
        }
    } else if (strcmp(o, "subscribe") == 0 || strcmp(o, "unsubscribe") == 0) {
        out->op = o[0] == 's' ? LIVE_OP_SUBSCRIBE : LIVE_OP_UNSUBSCRIBE;
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "device");
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(j, "fleet");
        if (d && f) {
            *err = "give either \"device\" or \"fleet\", not both";
            goto out;
        }
        if (cJSON_IsTrue(f)) {
            out->fleet = true;
        } else if (cJSON_IsString(d) && id_valid(d->valuestring)) {
            out->device = keep(out, &used, d->valuestring);
        } else {
            *err = "subscribe needs \"device\": a device id, or \"fleet\": true";
            goto out;
        }
    } else if (strcmp(o, "ping") == 0) {
        out->op = LIVE_OP_PING;
    } else {
        *err = "unknown op (auth, subscribe, unsubscribe, ping)";
        goto out;
    }
    rc = THZ_OK;
out:
    cJSON_Delete(j);
    return rc;
}
