/* client.c - the CLI's HTTP client (libcurl, one easy handle per process so
 * that the connection is reused between the requests of one command) and
 * the table/record printers. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "cli/cli_int.h"

typedef struct body_buf {
    char *z;
    size_t n, cap;
    bool toobig;
} body_buf;

static size_t on_data(char *p, size_t size, size_t nmemb, void *ud)
{
    body_buf *b = ud;
    size_t n = size * nmemb;
    if (b->n + n + 1 > CLI_MAX_BODY) {
        b->toobig = true;
        return 0; /* makes curl fail with CURLE_WRITE_ERROR */
    }
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1) cap *= 2;
        char *z = realloc(b->z, cap);
        if (!z) return 0;
        b->z = z;
        b->cap = cap;
    }
    memcpy(b->z + b->n, p, n);
    b->n += n;
    b->z[b->n] = 0;
    return n;
}

int cli_http(cli_ctx *c, const char *zMethod, const char *zPath, const cJSON *body, bool auth,
             long timeout_s, cli_resp *r)
{
    memset(r, 0, sizeof *r);
    if (!c->curl) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        c->curl = curl_easy_init();
        if (!c->curl) {
            fprintf(stderr, "thinghz: cannot initialise libcurl\n");
            return CLI_FAIL;
        }
    }
    CURL *h = c->curl;
    curl_easy_reset(h);
    char zUrl[4096];
    snprintf(zUrl, sizeof zUrl, "%s%s", c->zUrl, zPath);
    char *zJson = body ? cJSON_PrintUnformatted(body) : NULL;
    struct curl_slist *hdrs = NULL;
    char zAuth[1100];
    hdrs = curl_slist_append(hdrs, "Accept: application/json");
    if (zJson) hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    if (auth && c->zToken[0]) {
        snprintf(zAuth, sizeof zAuth, "Authorization: Bearer %s", c->zToken);
        hdrs = curl_slist_append(hdrs, zAuth);
    }
    body_buf b = {0};
    char zErr[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_URL, zUrl);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, zMethod);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, zErr);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 5L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, timeout_s);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "thinghz-cli");
    if (zJson) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, zJson);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(zJson));
    } else if (strcmp(zMethod, "POST") == 0 || strcmp(zMethod, "PUT") == 0) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, 0L);
    }
    CURLcode cc = curl_easy_perform(h);
    curl_slist_free_all(hdrs);
    cJSON_free(zJson);
    if (cc != CURLE_OK) {
        if (b.toobig)
            fprintf(stderr, "thinghz: %s %s: the response is larger than %u bytes\n", zMethod, zUrl,
                    CLI_MAX_BODY);
        else
            fprintf(stderr, "thinghz: cannot reach %s: %s\n", c->zUrl,
                    zErr[0] ? zErr : curl_easy_strerror(cc));
        free(b.z);
        return CLI_FAIL;
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
    r->zBody = b.z ? b.z : calloc(1, 1);
    r->nBody = b.n;
    r->json = b.n ? cJSON_ParseWithLength(r->zBody, b.n) : NULL;
    return CLI_OK;
}

int cli_api(cli_ctx *c, const char *zMethod, const char *zPath, const cJSON *body, cli_resp *r)
{
    int rc = cli_http(c, zMethod, zPath, body, true, 60, r);
    if (rc != CLI_OK) return rc;
    if (r->status >= 200 && r->status < 300) return CLI_OK;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(r->json, "error");
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(e, "code");
    if (cJSON_IsString(m))
        fprintf(stderr, "thinghz: %s (HTTP %ld%s%s)\n", m->valuestring, r->status,
                cJSON_IsString(code) ? ", " : "", cJSON_IsString(code) ? code->valuestring : "");
    else
        fprintf(stderr, "thinghz: %s %s: HTTP %ld\n", zMethod, zPath, r->status);
    if (r->status == 401 && !c->zToken[0])
        fprintf(stderr, "thinghz: not logged in: run `thinghz login` or set THINGHZ_TOKEN\n");
    return CLI_FAIL;
}

void cli_resp_free(cli_resp *r)
{
    free(r->zBody);
    cJSON_Delete(r->json);
    memset(r, 0, sizeof *r);
}

bool cli_daemon_up(cli_ctx *c)
{
    cli_resp r;
    /* Quiet: a refused connection is the answer, not an error. */
    FILE *saved = stderr;
    FILE *devnull = fopen("/dev/null", "w");
    if (devnull) stderr = devnull;
    int rc = cli_http(c, "GET", "/api/v1/health", NULL, false, 2, &r);
    stderr = saved;
    if (devnull) fclose(devnull);
    bool up = rc == CLI_OK && r.status == 200;
    if (rc == CLI_OK) cli_resp_free(&r);
    return up;
}

bool cli_path_append(char *zBuf, size_t nBuf, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(zBuf);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        bool plain = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                     (ch >= '0' && ch <= '9') || strchr("-._~:", ch);
        if (n + (plain ? 1 : 3) >= nBuf) return false;
        if (plain) {
            zBuf[n++] = (char)ch;
        } else {
            zBuf[n++] = '%';
            zBuf[n++] = hex[ch >> 4];
            zBuf[n++] = hex[ch & 15];
        }
    }
    zBuf[n] = 0;
    return true;
}

int cli_usage_error(const char *zFmt, ...)
{
    va_list ap;
    va_start(ap, zFmt);
    fputs("thinghz: ", stderr);
    vfprintf(stderr, zFmt, ap);
    fputs(" (see `thinghz --help` and docs/CLI.md)\n", stderr);
    va_end(ap);
    return CLI_USAGE;
}

/* ---- output ---- */

const char *cli_value(const cJSON *v, char *zBuf, size_t nBuf)
{
    if (!v || cJSON_IsNull(v)) return "-";
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v) ? "yes" : "no";
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (d == (double)(long long)d)
            snprintf(zBuf, nBuf, "%lld", (long long)d);
        else
            snprintf(zBuf, nBuf, "%g", d);
        return zBuf;
    }
    if (cJSON_IsObject(v) || cJSON_IsArray(v)) {
        size_t n = 0;
        zBuf[0] = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, v)
        {
            char zItem[256];
            const char *s = cli_value(it, zItem, sizeof zItem);
            int w = cJSON_IsObject(v)
                        ? snprintf(zBuf + n, nBuf - n, "%s%s=%s", n ? "," : "", it->string, s)
                        : snprintf(zBuf + n, nBuf - n, "%s%s", n ? "," : "", s);
            if (w < 0 || (size_t)w >= nBuf - n) break;
            n += (size_t)w;
        }
        return n ? zBuf : "-";
    }
    return "?";
}

void cli_table(const cJSON *arr, const cli_col *cols, int nCol)
{
    int nRow = cJSON_GetArraySize(arr);
    size_t aw[16] = {0};
    if (nCol > 16) nCol = 16;
    char zBuf[1024];
    for (int j = 0; j < nCol; j++) aw[j] = strlen(cols[j].zHead);
    for (int i = 0; i < nRow; i++) {
        const cJSON *row = cJSON_GetArrayItem(arr, i);
        for (int j = 0; j < nCol; j++) {
            size_t w = strlen(
                cli_value(cJSON_GetObjectItemCaseSensitive(row, cols[j].zKey), zBuf, sizeof zBuf));
            if (w > aw[j]) aw[j] = w;
        }
    }
    for (int j = 0; j < nCol; j++)
        printf("%-*s%s", j + 1 < nCol ? (int)aw[j] : 0, cols[j].zHead, j + 1 < nCol ? "  " : "\n");
    for (int i = 0; i < nRow; i++) {
        const cJSON *row = cJSON_GetArrayItem(arr, i);
        for (int j = 0; j < nCol; j++)
            printf(
                "%-*s%s", j + 1 < nCol ? (int)aw[j] : 0,
                cli_value(cJSON_GetObjectItemCaseSensitive(row, cols[j].zKey), zBuf, sizeof zBuf),
                j + 1 < nCol ? "  " : "\n");
    }
}

void cli_record(const cJSON *obj)
{
    int w = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, obj) if (it->string && (int)strlen(it->string) > w) w =
        (int)strlen(it->string);
    char zBuf[4096];
    cJSON_ArrayForEach(it, obj)
    {
        char zKey[300];
        snprintf(zKey, sizeof zKey, "%s:", it->string ? it->string : "");
        printf("%-*s %s\n", w + 1, zKey, cli_value(it, zBuf, sizeof zBuf));
    }
}

void cli_print_raw(const cli_resp *r)
{
    if (!r->nBody) return;
    fwrite(r->zBody, 1, r->nBody, stdout);
    if (r->zBody[r->nBody - 1] != '\n') putchar('\n');
}

void cli_print_json(const cJSON *v)
{
    char *z = cJSON_PrintUnformatted(v);
    if (z) puts(z);
    cJSON_free(z);
}
