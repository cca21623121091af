/* api_broker.c - the first endpoints of the REST API: health, broker
 * statistics and publish over HTTP (as AWS IoT's HTTPS publish). The server
 * stays generic; these only use http.h, mqtt.h and auth.h. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>
#include "net/net.h"
#include <uv.h>
#include "core/base64.h"
#include "core/version.h"
#include "http/http_int.h"
#include "metrics/metrics.h"
#include "mqtt/mqtt.h"
#include "mqtt/topic.h"

/* Same as main.c's; one shared version header is an open point. */

static auth *A;
static struct timespec started;

static http_result get_health(http_request *req, http_response *res, void *ctx)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "status", "ok");
    cJSON_AddStringToObject(j, "version", THINGHZ_VERSION);
    cJSON_AddNumberToObject(j, "uptime_s", (double)(now.tv_sec - started.tv_sec));
    if (http_res_json(res, 200, j) != THZ_OK)
        http_res_error(res, 503, "out_of_memory", "the server is out of memory");
    cJSON_Delete(j);
    return HTTP_DONE;
}

static http_result get_broker_stats(http_request *req, http_response *res, void *ctx)
{
    mqtt_stats st;
    mqtt_get_stats(&st);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "clients_connected", (double)st.clients_connected);
    cJSON_AddNumberToObject(j, "sessions", (double)st.sessions);
    cJSON_AddNumberToObject(j, "subscriptions", (double)st.subscriptions);
    cJSON_AddNumberToObject(j, "retained", (double)st.retained);
    cJSON_AddNumberToObject(j, "messages_received", (double)st.msgs_received);
    cJSON_AddNumberToObject(j, "messages_sent", (double)st.msgs_sent);
    cJSON_AddNumberToObject(j, "messages_dropped", (double)st.msgs_dropped);
    cJSON_AddNumberToObject(j, "bytes_received", (double)st.bytes_received);
    cJSON_AddNumberToObject(j, "bytes_sent", (double)st.bytes_sent);
    cJSON_AddNumberToObject(j, "uptime_s", (double)st.uptime_s);
    if (http_res_json(res, 200, j) != THZ_OK)
        http_res_error(res, 503, "out_of_memory", "the server is out of memory");
    cJSON_Delete(j);
    return HTTP_DONE;
}

static http_result unauthorized(http_response *res, const char *msg)
{
    http_res_error(res, 401, "unauthorized", msg);
    http_res_header(res, "WWW-Authenticate", "Basic realm=\"thinghz\"");
    return HTTP_DONE;
}

/* The publish itself, once the credentials are known to be good or bad. */
static void post_topic_finish(http_request *req, http_response *res, thz_err rc, const char *user,
                              const auth_identity *id)
{
    if (rc == THZ_EDENIED) {
        http_res_error(res, 403, "forbidden", "not authorized");
        return;
    }
    if (rc) {
        unauthorized(res, "missing or bad credentials");
        return;
    }
    const char *topic = http_req_param(req, "topic");
    if (!topic || !topic_name_valid(topic, strlen(topic))) {
        http_res_error(res, 400, "invalid_topic",
                       "the topic must be a non-empty MQTT topic name without wildcards");
        return;
    }
    char q[8] = "0", r[8] = "false";
    if (http_req_query(req, "qos", q, sizeof q) < 0) q[0] = 0;
    if (http_req_query(req, "retain", r, sizeof r) < 0) r[0] = 0;
    if (strcmp(q, "0") != 0 && strcmp(q, "1") != 0) {
        http_res_error(res, 400, "invalid_qos", "qos must be 0 or 1");
        return;
    }
    if (strcmp(r, "true") != 0 && strcmp(r, "false") != 0) {
        http_res_error(res, 400, "invalid_retain", "retain must be true or false");
        return;
    }
    size_t tl = strlen(topic);
    bool sys = tl >= 4 && memcmp(topic, "$SYS", 4) == 0 && (tl == 4 || topic[4] == '/');
    if (sys || topic_reserved(topic, tl) || !auth_can_publish(A, id, "http", user, topic)) {
        http_res_error(res, 403, "forbidden", "not authorized to publish to this topic");
        return;
    }
    /* the broker's name of the topic: the caller's tenant prefix in front */
    char pre[TOPIC_TENANT_PREFIX_MAX];
    size_t pl = topic_tenant_prefix(id->tenant, pre);
    char *full = malloc(pl + tl + 1);
    if (!full) {
        http_res_error(res, 503, "out_of_memory", "the server is out of memory");
        return;
    }
    memcpy(full, pre, pl);
    memcpy(full + pl, topic, tl + 1);
    size_t len;
    const uint8_t *body = http_req_body(req, &len);
    int qos = q[0] - '0';
    rc = mqtt_publish_internal(full, body, len, qos, strcmp(r, "true") == 0);
    free(full);
    if (rc == THZ_ETOPIC) {
        http_res_error(res, 400, "invalid_topic", "the topic is not a valid MQTT topic name");
        return;
    }
    if (rc) {
        http_res_error(res, 503, "unavailable", thz_strerror(rc));
        return;
    }
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "topic", topic);
    cJSON_AddNumberToObject(j, "qos", qos);
    if (http_res_json(res, 200, j) != THZ_OK)
        http_res_error(res, 503, "out_of_memory", "the server is out of memory");
    cJSON_Delete(j);
}

/* A password that needs hashing is checked on libuv's worker pool; the
 * request is answered later (HTTP_PENDING) from this loop's thread. */
typedef struct cred_work {
    uv_work_t req;
    http_request *hreq;
    thz_err rc;
    auth_identity id;
    char *user, *pass;
} cred_work;

static void cred_work_run(uv_work_t *w)
{
    cred_work *cw = w->data;
    metrics_pool_started();
    cw->rc =
        auth_connect(A, "http", cw->user, (const uint8_t *)cw->pass, strlen(cw->pass), &cw->id);
}

static void cred_work_done(uv_work_t *w, int status)
{
    cred_work *cw = w->data;
    metrics_pool_finished();
    post_topic_finish(cw->hreq, http_req_response(cw->hreq), status == 0 ? cw->rc : THZ_EIO,
                      cw->user, &cw->id);
    http_reply(cw->hreq);
    auth_identity_clear(&cw->id);
    OPENSSL_cleanse(cw->pass, strlen(cw->pass));
    free(cw->user);
    free(cw->pass);
    free(cw);
}

/* POST /api/v1/topics/{topic...}?qos=0|1&retain=true|false, body = payload.
 * Credentials are an API token (Bearer), or HTTP Basic checked like an MQTT
 * CONNECT (client id "http": a device id and its secret, or a password-file
 * user); then the ACL like an MQTT PUBLISH, in the caller's tenant. */
static http_result post_topic(http_request *req, http_response *res, void *ctx)
{
    char cred[512];
    const char *user = NULL, *pass = NULL;
    const char *h = http_req_header(req, "authorization");
    auth_identity id = {0};
    if (h && strncasecmp(h, "Bearer ", 7) == 0) {
        const char *t = h + 7;
        while (*t == ' ') t++;
        thz_err rc = auth_bearer(A, t, &id);
        post_topic_finish(req, res, rc, NULL, &id);
        auth_identity_clear(&id);
        return HTTP_DONE;
    }
    if (h) {
        if (strncasecmp(h, "Basic ", 6) != 0)
            return unauthorized(res, "only Basic and Bearer authentication are supported");
        const char *b = h + 6;
        while (*b == ' ') b++;
        long n = thz_b64_decode(b, strlen(b), (uint8_t *)cred, sizeof cred - 1);
        if (n < 0) return unauthorized(res, "malformed Basic credentials");
        cred[n] = 0;
        char *colon = strchr(cred, ':');
        if (!colon) return unauthorized(res, "malformed Basic credentials");
        *colon = 0;
        user = cred;
        pass = colon + 1;
    }
    thz_err rc =
        auth_connect_quick(A, "http", user, (const uint8_t *)pass, pass ? strlen(pass) : 0, &id);
    if (rc == THZ_EAGAIN) {
        cred_work *cw = calloc(1, sizeof *cw);
        if (cw && (cw->user = strdup(user)) && (cw->pass = strdup(pass))) {
            cw->req.data = cw;
            cw->hreq = req;
            if (uv_queue_work(net_loop(net_self()), &cw->req, cred_work_run, cred_work_done) == 0) {
                metrics_pool_queued();
                return HTTP_PENDING;
            }
        }
        if (cw) {
            free(cw->user);
            free(cw->pass);
        }
        free(cw);
        OPENSSL_cleanse(cred, sizeof cred);
        http_res_error(res, 503, "out_of_memory", "the server is out of memory");
        return HTTP_DONE;
    }
    post_topic_finish(req, res, rc, user, &id);
    auth_identity_clear(&id);
    OPENSSL_cleanse(cred, sizeof cred);
    return HTTP_DONE;
}

/* GET /api/v1/_test/async?ms=N (only with THINGHZ_HTTP_TEST_ROUTES=1): answers
 * from another thread after N ms, so the tests exercise HTTP_PENDING and
 * http_reply (ordering behind pipelined requests, clients that leave). */
static void *async_worker(void *arg)
{
    http_request *req = arg;
    char ms[16] = "0";
    http_req_query(req, "ms", ms, sizeof ms);
    struct timespec ts = {0, (long)(atoi(ms) % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    http_response *res = http_req_response(req);
    http_res_status(res, 200);
    http_res_header(res, "Content-Type", "application/json");
    http_res_body(res, "{\"async\":true}", 14);
    http_reply(req);
    return NULL;
}

static http_result get_test_async(http_request *req, http_response *res, void *ctx)
{
    pthread_t t;
    if (pthread_create(&t, NULL, async_worker, req) != 0) {
        http_res_error(res, 503, "unavailable", "cannot start a thread");
        return HTTP_DONE;
    }
    pthread_detach(t);
    return HTTP_PENDING;
}

/* GET /api/v1/_test/blob?n=N&type=T&enc=E (test routes only): N bytes
 * (at most 1 MiB) of repetitive text with Content-Type T (default
 * text/plain) and, if given, a Content-Encoding E, for the gzip tests. */
static http_result get_test_blob(http_request *req, http_response *res, void *ctx)
{
    char n[16] = "0", type[64] = "text/plain", enc[32] = "";
    http_req_query(req, "n", n, sizeof n);
    http_req_query(req, "type", type, sizeof type);
    http_req_query(req, "enc", enc, sizeof enc);
    long len = atol(n);
    if (len < 0 || len > 1024 * 1024) len = 0;
    static const char line[] = "thinghz says hello to the gzip tests, line after line.\n";
    for (long i = 0; i < len; i++)
        if (http_res_body(res, &line[i % (sizeof line - 1)], 1) != THZ_OK) break;
    http_res_header(res, "Content-Type", type);
    if (enc[0]) http_res_header(res, "Content-Encoding", enc);
    return HTTP_DONE;
}

void http_api_register(auth *a)
{
    A = a;
    clock_gettime(CLOCK_MONOTONIC, &started);
    http_route(HTTP_GET, "/api/v1/health", get_health, NULL);
    http_route(HTTP_GET, "/api/v1/broker/stats", get_broker_stats, NULL);
    http_route(HTTP_POST, "/api/v1/topics/{topic...}", post_topic, NULL);
    const char *t = getenv("THINGHZ_HTTP_TEST_ROUTES");
    if (t && strcmp(t, "1") == 0) {
        http_route(HTTP_GET, "/api/v1/_test/async", get_test_async, NULL);
        http_route(HTTP_GET, "/api/v1/_test/blob", get_test_blob, NULL);
    }
    http_api_ws_register();
}
