/* admin_ops.c - the operations routes of the REST API: GET/PUT /retention
 * (the caller's tenant's telemetry retention, kept by the time-series
 * engine) and POST /admin/backup (an online copy of the registry and the
 * engine into a directory on the daemon's host). They run on libuv's worker
 * pool: a backup copies files and fsyncs. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "api/api_int.h"
#include "query/query.h"
#include "tsdb/tsdb.h"

#define RETENTION_MAX_DAYS 36500 /* as the retention-days setting */
#define DAY_S              86400

static tsdb *engine(api_call *c)
{
    tsdb *db = query_db();
    if (!db) {
        c->rc = THZ_EUNSUPPORTED;
        snprintf(c->err, sizeof c->err, "the time-series engine is not running");
    }
    return db;
}

static void bad(api_call *c, const char *msg)
{
    c->rc = THZ_EINVAL;
    snprintf(c->err, sizeof c->err, "%s", msg);
}

/* ---- retention ---- */

typedef struct ret_out {
    cJSON *o;       /* the answer */
    cJSON *metrics; /* its "metrics" array */
    bool oom;
} ret_out;

static bool add_period(cJSON *o, int64_t seconds)
{
    return cJSON_AddNumberToObject(o, "days", (double)seconds / DAY_S) &&
           cJSON_AddNumberToObject(o, "seconds", (double)seconds);
}

static void ret_cb(void *ctx, const char *metric, size_t metric_len, int64_t seconds, bool own)
{
    ret_out *r = ctx;
    if (r->oom) return;
    if (!metric) {
        r->oom = !add_period(r->o, seconds) || !cJSON_AddBoolToObject(r->o, "default", !own);
        return;
    }
    cJSON *m = cJSON_CreateObject();
    char *name = malloc(metric_len + 1);
    if (!m || !name) {
        cJSON_Delete(m);
        free(name);
        r->oom = true;
        return;
    }
    memcpy(name, metric, metric_len);
    name[metric_len] = 0;
    r->oom = !cJSON_AddStringToObject(m, "metric", name) || !add_period(m, seconds);
    free(name);
    if (r->oom || !cJSON_AddItemToArray(r->metrics, m)) {
        cJSON_Delete(m);
        r->oom = true;
    }
}

static int by_metric(const void *a, const void *b)
{
    const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
    return strcmp(cJSON_GetObjectItemCaseSensitive(x, "metric")->valuestring,
                  cJSON_GetObjectItemCaseSensitive(y, "metric")->valuestring);
}

/* {"days", "seconds", "default", "metrics": [{"metric", "days", "seconds"}]},
 * metrics sorted by name (the engine reports them in hash order). */
static void retention_answer(api_call *c, tsdb *db)
{
    ret_out r = {.o = cJSON_CreateObject()};
    r.metrics = r.o ? cJSON_CreateArray() : NULL;
    if (!r.metrics) {
        cJSON_Delete(r.o);
        c->rc = THZ_ENOMEM;
        return;
    }
    thz_err rc = tsdb_get_retention(db, c->p.tenant, ret_cb, &r);
    int n = cJSON_GetArraySize(r.metrics);
    cJSON **v = n ? malloc((size_t)n * sizeof *v) : NULL;
    if (!rc && !r.oom && (n == 0 || v)) {
        for (int i = 0; i < n; i++) v[i] = cJSON_DetachItemFromArray(r.metrics, 0);
        if (n > 1) qsort(v, (size_t)n, sizeof *v, by_metric);
        for (int i = 0; i < n; i++) cJSON_AddItemToArray(r.metrics, v[i]);
    } else if (!rc) {
        rc = THZ_ENOMEM;
    }
    free(v);
    if (!rc)
        cJSON_AddItemToObject(r.o, "metrics", r.metrics);
    else
        cJSON_Delete(r.metrics);
    if (rc) {
        cJSON_Delete(r.o);
        c->rc = rc;
        return;
    }
    c->out = r.o;
    c->status = 200;
    c->rc = THZ_OK;
}

void op_retention_get(api_call *c)
{
    tsdb *db = engine(c);
    if (db) retention_answer(c, db);
}

/* PUT {"days": N} or {"metric": "m", "days": N}; 0 keeps data forever. */
void op_retention_put(api_call *c)
{
    const cJSON *days = cJSON_GetObjectItemCaseSensitive(c->body, "days");
    const cJSON *metric = cJSON_GetObjectItemCaseSensitive(c->body, "metric");
    if (!cJSON_IsNumber(days) || days->valuedouble < 0 || days->valuedouble > RETENTION_MAX_DAYS ||
        days->valuedouble != floor(days->valuedouble)) {
        bad(c, "days must be an integer 0..36500 (0 keeps data forever)");
        return;
    }
    if (metric && !cJSON_IsNull(metric) &&
        (!cJSON_IsString(metric) || !metric->valuestring[0] || strlen(metric->valuestring) > 256 ||
         strpbrk(metric->valuestring, " \t\r\n"))) {
        bad(c, "metric must be a metric name: 1..256 bytes, no spaces");
        return;
    }
    tsdb *db = engine(c);
    if (!db) return;
    const char *m = cJSON_IsString(metric) ? metric->valuestring : NULL;
    thz_err rc = tsdb_set_retention(db, c->p.tenant, m, (int64_t)days->valuedouble * DAY_S);
    if (rc) {
        c->rc = rc;
        if (rc == THZ_EINVAL) snprintf(c->err, sizeof c->err, "the retention was refused");
        return;
    }
    retention_answer(c, db);
}

/* ---- backup ---- */

/* One backup at a time: two into the same directory would both find it
 * empty; and each already holds the engine's maintenance lock for its copy. */
static pthread_mutex_t backup_mu = PTHREAD_MUTEX_INITIALIZER;

/* 1 if dir is missing or an empty directory, 0 if not empty, -1 if it is
 * not a directory or cannot be read (errno set). */
static int dir_usable(const char *dir)
{
    struct stat st;
    if (stat(dir, &st) != 0) return errno == ENOENT ? 1 : -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    DIR *d = opendir(dir);
    if (!d) return -1;
    struct dirent *e;
    int empty = 1;
    while (empty && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
    closedir(d);
    return empty;
}

/* Bytes of the regular files under dir (depth-bounded: the engine's
 * layout is two levels deep). */
static uint64_t dir_bytes(const char *dir, int depth)
{
    DIR *d = depth < 4 ? opendir(dir) : NULL;
    if (!d) return 0;
    uint64_t n = 0;
    struct dirent *e;
    char path[4400];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) != 0) continue;
        if (S_ISDIR(st.st_mode))
            n += dir_bytes(path, depth + 1);
        else if (S_ISREG(st.st_mode))
            n += (uint64_t)st.st_size;
    }
    closedir(d);
    return n;
}

/* POST {"dir": "/abs/path"}: DIR/registry.db and DIR/tsdb/. */
void op_backup(api_call *c)
{
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(c->body, "dir");
    if (!cJSON_IsString(jd) || jd->valuestring[0] != '/') {
        bad(c, "dir must be an absolute path on the daemon's host");
        return;
    }
    const char *dir = jd->valuestring;
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    if (n > 3000) {
        bad(c, "dir is too long");
        return;
    }
    char zDir[3100], zTsdb[3200];
    snprintf(zDir, sizeof zDir, "%.*s", (int)n, dir);
    snprintf(zTsdb, sizeof zTsdb, "%s/tsdb", zDir);
    tsdb *db = query_db(); /* NULL: the engine is off; the registry is still copied */
    pthread_mutex_lock(&backup_mu);
    int u = dir_usable(zDir);
    if (u != 1) {
        pthread_mutex_unlock(&backup_mu);
        c->rc = THZ_EINVAL;
        snprintf(c->err, sizeof c->err, "%.150s: %s", zDir,
                 u == 0 ? "the directory is not empty" : strerror(errno));
        return;
    }
    thz_err rc = reg_backup(c->r, zDir, c->err);
    char terr[TSDB_ERR_LEN] = "";
    if (!rc && db && (rc = tsdb_backup(db, zTsdb, terr)))
        snprintf(c->err, sizeof c->err, "time-series engine: %.170s",
                 terr[0] ? terr : thz_strerror(rc));
    pthread_mutex_unlock(&backup_mu);
    if (rc) {
        /* The directory's state is the caller's to clean up; EEXIST here is
         * a race with another writer, not the caller's input. */
        c->rc = rc == THZ_EEXIST ? THZ_EIO : rc;
        return;
    }
    cJSON *o = cJSON_CreateObject();
    bool ok = o && cJSON_AddStringToObject(o, "dir", zDir) && cJSON_AddTrueToObject(o, "registry");
    if (ok && db) {
        tsdb_stats st;
        tsdb_get_stats(db, &st);
        cJSON *t = cJSON_AddObjectToObject(o, "tsdb");
        ok = t && cJSON_AddNumberToObject(t, "series", (double)st.series) &&
             cJSON_AddNumberToObject(t, "bytes", (double)dir_bytes(zTsdb, 0));
    } else if (ok) {
        ok = cJSON_AddNullToObject(o, "tsdb") != NULL;
    }
    if (!ok) {
        cJSON_Delete(o);
        c->rc = THZ_ENOMEM;
        return;
    }
    c->out = o;
    c->status = 200;
    c->rc = THZ_OK;
}
