/* fuzz_live_cmd.c - libFuzzer target for the live WebSocket's client
 * messages (live_parse_cmd) and for the payload-as-JSON rule of message
 * frames and /messages (live_payload_json, cut and not cut), both on the
 * raw input. Checks that what the parser returns points into its buffer. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "live/live.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static live_cmd c;
    const char *err;
    if (live_parse_cmd(data, size, &c, &err) == THZ_OK) {
        if (c.op == LIVE_OP_AUTH &&
            (!c.token || c.token < c.buf || c.token >= c.buf + sizeof c.buf))
            abort();
        if ((c.op == LIVE_OP_SUBSCRIBE || c.op == LIVE_OP_UNSUBSCRIBE) && !c.fleet &&
            (!c.device || strlen(c.device) > 128))
            abort();
    } else if (!err) {
        abort();
    }
    size_t n = size < LIVE_PAYLOAD_MAX ? size : LIVE_PAYLOAD_MAX;
    for (int cut = 0; cut < 2; cut++) {
        cJSON *o = cJSON_CreateObject();
        live_payload_json(o, data, n, cut);
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "payload");
        if (!p || (!cJSON_IsNull(p) && !cJSON_IsString(p))) abort();
        if (cJSON_IsString(p) && strlen(p->valuestring) > n) abort();
        cJSON_Delete(o);
    }
    return 0;
}
