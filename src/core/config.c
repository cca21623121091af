/* config.c - the settings table and everything derived from it: defaults, the
 * config file and flag parsers, validation, --help and the sample config. */
#include "core/config.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"

/* Longest config file line we accept; longer ones are errors, not truncated. */
#define CONFIG_LINE_MAX 4096

typedef enum {
    OPT_PATH,   /* char[] holding a file or directory name; may be empty */
    OPT_ADDR,   /* char[] holding "HOST:PORT"; checked by config_split_addr */
    OPT_INT,    /* int within [min, max] */
    OPT_U32,    /* uint32_t within [min, max] */
    OPT_BOOL,   /* bool */
    OPT_ENUM,   /* int: index into names[] */
    OPT_ORIGINS /* char[]: "*" or comma-separated scheme://host[:port]; may be empty */
} opt_type;

typedef struct config_opt {
    const char *zName; /* "mqtt-listen": the file key and the flag without "--" */
    opt_type type;
    size_t off;                /* offsetof(thz_config, field) */
    size_t size;               /* sizeof the field; bounds strings */
    uint64_t min, max;         /* numeric range, inclusive */
    const char *const *azEnum; /* OPT_ENUM: NULL-terminated names, index = value */
    const char *zDefault;      /* the default as text, parsed like any other value */
    const char *zHelp;         /* one line for --help and the sample config */
    bool reloadable;           /* takes effect on SIGHUP without a restart */
} config_opt;

static const char *const log_level_names[] = {"error", "warn", "info", "debug", NULL};
static const char *const fsync_names[] = {"never", "everysec", "always", NULL};
static const char *const metrics_auth_names[] = {"loopback", "none", "token", NULL};
static const char *const tls_version_names[] = {"1.2", "1.3", NULL};
static const char *const rate_action_names[] = {"disconnect", "drop", NULL};
static const char *const backpressure_names[] = {"queued", "all", "off", NULL};

#define FIELD(f)          offsetof(thz_config, f), sizeof(((thz_config *)0)->f)
#define PATH(n, f)        n, OPT_PATH, FIELD(f), 0, 0, NULL
#define ADDR(n, f)        n, OPT_ADDR, FIELD(f), 0, 0, NULL
#define INT(n, f, lo, hi) n, OPT_INT, FIELD(f), lo, hi, NULL
#define U32(n, f, lo, hi) n, OPT_U32, FIELD(f), lo, hi, NULL
#define BOOL(n, f)        n, OPT_BOOL, FIELD(f), 0, 1, NULL
#define ENUM(n, f, names) n, OPT_ENUM, FIELD(f), 0, 0, names
#define ORIGINS(n, f)     n, OPT_ORIGINS, FIELD(f), 0, 0, NULL

/* Every setting, once. The order here is the order of --help and the sample. */
static const config_opt opts[] = {
    {PATH("data-dir", data_dir), "./data", "Directory for broker state (created if missing).",
     false},
    {ADDR("mqtt-listen", mqtt_listen), "127.0.0.1:1883",
     "MQTT listener as HOST:PORT or [V6]:PORT; empty turns it off; port 0 picks a free one.",
     false},
    {ADDR("http-listen", http_listen), "127.0.0.1:8080",
     "HTTP listener (the API and ws:// MQTT over WebSockets) as HOST:PORT; empty turns it off.",
     false},
    {INT("threads", threads, 0, 256), "0", "I/O threads; 0 means one per CPU core.", false},
    {BOOL("allow-anonymous", allow_anonymous), "false",
     "Accept clients without a user name (and any user name if no password-file).", true},
    {ENUM("log-level", log_level, log_level_names), "info", "One of error, warn, info, debug.",
     true},
    {PATH("password-file", password_file), "",
     "File of user:hash lines written by `thinghz passwd`; empty means none.", true},
    {PATH("acl-file", acl_file), "",
     "Mosquitto-style ACL file; empty allows every topic to every client.", true},
    {U32("max-packet-size", max_packet_size, 64, 268435455), "1048576",
     "Largest inbound MQTT packet in bytes.", true},
    {U32("receive-maximum", receive_maximum, 1, 65535), "1024",
     "Inbound QoS 1/2 messages in flight per client.", false},
    {U32("max-inflight", max_inflight, 1, 65535), "1024",
     "Outbound QoS 1/2 messages in flight per client.", true},
    {U32("max-queued-messages", max_queued_messages, 0, 10000000), "1000",
     "Messages queued per session before new ones are dropped.", true},
    {U32("max-keepalive", max_keepalive, 1, 65535), "65535",
     "Longest keep alive in seconds a client may ask for.", true},
    {U32("max-session-expiry", max_session_expiry, 0, 4294967295u), "4294967295",
     "Cap on session expiry in seconds; 4294967295 means never expire.", true},
    {U32("topic-alias-maximum", topic_alias_maximum, 0, 65535), "64",
     "Inbound topic aliases per MQTT 5 client; 0 disables them.", false},
    {U32("max-connections", max_connections, 0, 4294967295u), "0",
     "Most concurrent clients; 0 means unlimited.", true},
    {U32("connect-timeout", connect_timeout, 1, 3600), "10",
     "Seconds a new connection has to send CONNECT.", false},
    {U32("max-outbuf", max_outbuf, 4096, 1073741824), "8388608",
     "Bytes queued to one slow socket before QoS 0 messages are dropped.", true},
    {U32("slow-consumer-timeout", slow_consumer_timeout, 1, 86400), "30",
     "Seconds a client may stay behind on its messages (holding publishers back) before it is "
     "disconnected.",
     true},
    {U32("sys-interval", sys_interval, 0, 86400), "10",
     "Seconds between $SYS topic updates; 0 turns them off.", true},
    {BOOL("retain-available", retain_available), "true", "Support retained messages.", false},
    {ENUM("fsync", fsync, fsync_names), "always",
     "When telemetry reaches the disk: always (a QoS 1 PUBACK or an HTTP 204 leaves only after "
     "the fsync that covers it; group commit) or everysec (at most one second of data at "
     "risk; never acts as everysec).",
     false},
    {U32("retention-days", retention_days, 0, 36500), "0",
     "Days telemetry is kept before whole blocks of it are dropped; 0 keeps it forever. A "
     "tenant or one metric may override it with PUT /api/v1/retention.",
     false},
    {U32("max-series-per-tenant", max_series_per_tenant, 0, 4294967295u), "1000000",
     "Time series (device, metric, tag set) one tenant may create; past it new series are "
     "refused. 0 means unlimited.",
     false},
    {ENUM("state-fsync", state_fsync, fsync_names), "everysec",
     "When the broker's state log (sessions, queued messages, retained messages) is flushed to "
     "disk: never, everysec or always.",
     false},
    {U32("store-segment-mb", store_segment_mb, 1, 4096), "64",
     "State log segment size in MiB before a new segment is started.", false},
    /* Not reloadable: main.c's SIGHUP path copies settings into the live
     * struct on the main thread while I/O threads read it, and only settings
     * with a module reload hook (auth, mqtt) may change under them. */
    {ORIGINS("cors-origins", cors_origins), "",
     "Browser origins allowed to call the HTTP API (CORS): comma-separated like "
     "https://app.example.com,http://localhost:3000, or * for any; empty turns CORS off.",
     false},
    {ENUM("metrics-auth", metrics_auth, metrics_auth_names), "loopback",
     "Who may read GET /metrics: loopback (clients on 127.0.0.0/8 or ::1 without a token, "
     "others with a bearer token of the default tenant), none (anyone) or token (always a "
     "bearer token).",
     false},
    {ADDR("mqtts-listen", mqtts_listen), "",
     "MQTT over TLS listener as HOST:PORT (8883 is usual); empty turns it off.", false},
    {ADDR("https-listen", https_listen), "",
     "HTTPS listener (the API and wss:// MQTT over WebSockets) as HOST:PORT (8443 is usual); "
     "empty turns it off.",
     false},
    /* The tls-* settings are read by net_tls_reload on the main thread only,
     * so SIGHUP may change them: new connections get the new context. */
    {PATH("tls-cert", tls_cert), "",
     "PEM server certificate, followed by its intermediate CA certificates; empty generates a "
     "development CA in DATA_DIR/tls (ca.pem) and a certificate for 127.0.0.1 and localhost.",
     true},
    {PATH("tls-key", tls_key), "", "PEM private key of tls-cert.", true},
    {PATH("tls-ciphers", tls_ciphers), "",
     "OpenSSL cipher list for TLS 1.2; empty keeps OpenSSL's default.", true},
    {PATH("tls-ciphersuites", tls_ciphersuites), "",
     "OpenSSL ciphersuites for TLS 1.3; empty keeps OpenSSL's default.", true},
    {ENUM("tls-min-version", tls_min_version, tls_version_names), "1.2",
     "Oldest TLS version accepted: 1.2 or 1.3.", true},
    /* Limits and fairness: docs/OPERATIONS.md "Limits" says what clients see. */
    {U32("max-connections-per-tenant", max_connections_per_tenant, 0, 4294967295u), "0",
     "Most concurrent MQTT clients of one tenant (CONNACK 0x97, 3.1.1: 3); 0 means unlimited.",
     true},
    {U32("max-connect-rate", max_connect_rate, 0, 1000000), "0",
     "CONNECTs per second one source address may make (token bucket; CONNACK 0x9F, 3.1.1: 3); "
     "0 means unlimited.",
     true},
    {U32("connect-burst", connect_burst, 1, 1000000), "20",
     "CONNECTs one source address may make at once before max-connect-rate applies.", true},
    {U32("max-publish-rate", max_publish_rate, 0, 10000000), "0",
     "PUBLISH packets per second one client may send (token bucket); 0 means unlimited.", true},
    {U32("publish-burst", publish_burst, 1, 10000000), "100",
     "PUBLISH packets one client may send at once before max-publish-rate applies.", true},
    {ENUM("publish-rate-action", publish_rate_action, rate_action_names), "disconnect",
     "Over max-publish-rate: disconnect (MQTT 5 DISCONNECT 0x96) or drop (the message is "
     "dropped and counted; MQTT 5 QoS 1/2 get reason 0x97).",
     true},
    {U32("max-subscriptions", max_subscriptions, 0, 4294967295u), "1000",
     "Subscription filters per client; more get SUBACK 0x97 (3.1.1: 0x80). 0 means unlimited.",
     true},
    {U32("max-topic-length", max_topic_length, 1, 65535), "1024",
     "Longest topic name or filter in bytes (PUBLISH: 0x90, SUBSCRIBE: 0x8F).", true},
    {U32("max-topic-levels", max_topic_levels, 0, 65535), "32",
     "Most levels ('/'-separated) in a topic name or filter; 0 means unlimited.", true},
    {U32("max-retained-per-tenant", max_retained_per_tenant, 0, 4294967295u), "100000",
     "Retained topics one tenant may hold; new ones past it are not retained (still delivered; "
     "MQTT 5 PUBACK 0x97). 0 means unlimited.",
     true},
    {U32("max-payload-size", max_payload_size, 0, 268435455), "0",
     "Largest PUBLISH payload in bytes (MQTT 5 QoS 1/2: PUBACK 0x97, QoS 0: DISCONNECT 0x95); "
     "0 means max-packet-size only.",
     true},
    {ENUM("backpressure", backpressure, backpressure_names), "all",
     "When publishers are paused for slow consumers: all (any message to a consumer that is "
     "behind), queued (only QoS 1/2 messages landing in a queue past half of "
     "max-queued-messages) or off (never; QoS 1/2 past the queue bound are dropped).",
     true},
    {U32("backpressure-exempt-rate", backpressure_exempt_rate, 0, 10000000), "100",
     "Messages per second a publisher may send to consumers that are behind without ever being "
     "paused (QoS 0 beyond max-outbuf is dropped instead); 0 exempts none.",
     true},
};

#define N_OPTS (sizeof opts / sizeof opts[0])

/* snprintf into a caller's buffer that may be NULL or empty. */
static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const config_opt *opt_find(const char *zName)
{
    for (size_t i = 0; i < N_OPTS; i++)
        if (strcmp(opts[i].zName, zName) == 0) return &opts[i];
    return NULL;
}

static void *opt_ptr(const config_opt *o, thz_config *cfg)
{
    return (char *)cfg + o->off;
}

static const void *opt_cptr(const config_opt *o, const thz_config *cfg)
{
    return (const char *)cfg + o->off;
}

/* Parses a decimal number with no sign, no spaces and no base prefix, so
 * that "0x10", "-1" and " 5" are errors rather than surprises. */
static thz_err parse_u64(const char *z, uint64_t *out)
{
    if (*z == '\0') return THZ_EINVAL;
    for (const char *p = z; *p; p++)
        if (!isdigit((unsigned char)*p)) return THZ_EINVAL;
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(z, &end, 10);
    if (errno == ERANGE || end == z || *end != '\0') return THZ_ETOOBIG;
    *out = v;
    return THZ_OK;
}

/* One origin as browsers send it: scheme "://" host [":" port], no path,
 * no trailing slash. Case is not checked (matching ignores it). */
static bool origin_ok(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && (isalnum((unsigned char)s[i]) || s[i] == '+' || s[i] == '-' || s[i] == '.'))
        i++;
    if (i == 0 || !isalpha((unsigned char)s[0]) || n - i < 4 || memcmp(s + i, "://", 3) != 0)
        return false;
    i += 3;
    size_t host = i;
    if (i < n && s[i] == '[') { /* [v6] */
        while (i < n && s[i] != ']') {
            if (!isxdigit((unsigned char)s[i]) && s[i] != ':' && s[i] != '[') return false;
            i++;
        }
        if (i == n) return false;
        i++;
    } else {
        while (i < n && (isalnum((unsigned char)s[i]) || s[i] == '-' || s[i] == '.' || s[i] == '_'))
            i++;
    }
    if (i == host) return false;
    if (i < n && s[i] == ':') {
        size_t d = ++i;
        while (i < n && isdigit((unsigned char)s[i])) i++;
        if (i == d || i - d > 5) return false;
    }
    return i == n;
}

/* Checks a cors-origins value; NULL when fine, else the reason. */
static const char *origins_check(const char *v)
{
    if (strcmp(v, "*") == 0 || v[0] == '\0') return NULL;
    for (const char *p = v;;) {
        while (*p == ' ' || *p == '\t') p++;
        const char *e = p;
        while (*e && *e != ',' && *e != ' ' && *e != '\t') e++;
        if (e - p == 1 && *p == '*') return "'*' must be the whole value";
        if (!origin_ok(p, (size_t)(e - p))) return "each origin must be scheme://host[:port]";
        while (*e == ' ' || *e == '\t') e++;
        if (*e == '\0') return NULL;
        if (*e != ',') return "origins are separated by commas";
        p = e + 1;
    }
}

static thz_err parse_bool(const char *z, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(z, yes[i]) == 0) return *out = true, THZ_OK;
        if (strcasecmp(z, no[i]) == 0) return *out = false, THZ_OK;
    }
    return THZ_EINVAL;
}

/* Stores value into the field of o, or explains in err (without the setting
 * name; callers prefix it) why not. cfg is untouched on error. */
static thz_err opt_set(const config_opt *o, thz_config *cfg, const char *value, char *err,
                       size_t errlen)
{
    void *p = opt_ptr(o, cfg);
    switch (o->type) {
    case OPT_ADDR:
    case OPT_ORIGINS:
    case OPT_PATH: {
        const char *why = o->type == OPT_ORIGINS ? origins_check(value) : NULL;
        if (why) {
            seterr(err, errlen, "'%s': %s", value, why);
            return THZ_EINVAL;
        }
        if (o->type == OPT_ADDR && value[0] != '\0') {
            char host[THZ_ADDR_MAX];
            int port;
            if (config_split_addr(value, host, sizeof host, &port) != THZ_OK) {
                seterr(err, errlen, "'%s' is not HOST:PORT or [V6]:PORT", value);
                return THZ_EINVAL;
            }
        }
        size_t n = strlen(value);
        if (n >= o->size) {
            seterr(err, errlen, "value is %zu bytes, the limit is %zu", n, o->size - 1);
            return THZ_EINVAL;
        }
        memcpy(p, value, n + 1);
        return THZ_OK;
    }
    case OPT_INT:
    case OPT_U32: {
        uint64_t v;
        thz_err rc = parse_u64(value, &v);
        if (rc == THZ_EINVAL) {
            seterr(err, errlen, "'%s' is not a decimal number", value);
            return THZ_EINVAL;
        }
        if (rc != THZ_OK || v < o->min || v > o->max) {
            seterr(err, errlen, "'%s' is out of range %llu..%llu", value,
                   (unsigned long long)o->min, (unsigned long long)o->max);
            return THZ_EINVAL;
        }
        if (o->type == OPT_INT)
            *(int *)p = (int)v;
        else
            *(uint32_t *)p = (uint32_t)v;
        return THZ_OK;
    }
    case OPT_BOOL: {
        bool b;
        if (parse_bool(value, &b) != THZ_OK) {
            seterr(err, errlen, "'%s' is not a boolean (true/false, yes/no, on/off, 1/0)", value);
            return THZ_EINVAL;
        }
        *(bool *)p = b;
        return THZ_OK;
    }
    case OPT_ENUM:
        for (int i = 0; o->azEnum[i]; i++) {
            if (strcmp(value, o->azEnum[i]) == 0) {
                *(int *)p = i;
                return THZ_OK;
            }
        }
        {
            char list[128] = "";
            size_t len = 0;
            for (int i = 0; o->azEnum[i] && len < sizeof list; i++)
                len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "",
                                        o->azEnum[i]);
            seterr(err, errlen, "'%s' is not one of %s", value, list);
        }
        return THZ_EINVAL;
    }
    return THZ_EINVAL;
}

/* Formats the current value of o in cfg as text that opt_set accepts. */
static void opt_format(const config_opt *o, const thz_config *cfg, char *out, size_t outlen)
{
    const void *p = opt_cptr(o, cfg);
    switch (o->type) {
    case OPT_PATH:
    case OPT_ORIGINS:
    case OPT_ADDR: snprintf(out, outlen, "%s", (const char *)p); break;
    case OPT_INT: snprintf(out, outlen, "%d", *(const int *)p); break;
    case OPT_U32: snprintf(out, outlen, "%u", (unsigned)*(const uint32_t *)p); break;
    case OPT_BOOL: snprintf(out, outlen, "%s", *(const bool *)p ? "true" : "false"); break;
    case OPT_ENUM: snprintf(out, outlen, "%s", o->azEnum[*(const int *)p]); break;
    }
}

void config_defaults(thz_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    /* Defaults go through the same parser as user values, so a bad default
     * text in the table fails the unit tests instead of hiding. */
    for (size_t i = 0; i < N_OPTS; i++) {
        thz_err rc = opt_set(&opts[i], cfg, opts[i].zDefault, NULL, 0);
        (void)rc;
    }
}

thz_err config_set(thz_config *cfg, const char *name, const char *value, char *err, size_t errlen)
{
    const config_opt *o = opt_find(name);
    if (o == NULL) {
        seterr(err, errlen, "unknown setting '%s'", name);
        return THZ_EINVAL;
    }
    char why[256];
    thz_err rc = opt_set(o, cfg, value, why, sizeof why);
    if (rc != THZ_OK) seterr(err, errlen, "%s: %s", name, why);
    return rc;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\r') s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r')) s[--n] = '\0';
    return s;
}

/* Splits one non-comment line into name and value, in place. A value may be
 * double-quoted (no escapes) to keep spaces or a '#'; otherwise a '#' after
 * whitespace starts a trailing comment. Returns NULL or the reason. */
static const char *split_line(char *line, char **name, char **value)
{
    char *eq = strchr(line, '=');
    if (eq == NULL) return "expected 'name = value'";
    *eq = '\0';
    *name = trim(line);
    if (**name == '\0') return "missing setting name before '='";
    char *v = eq + 1;
    while (*v == ' ' || *v == '\t') v++;
    if (*v == '"') {
        char *close = strchr(v + 1, '"');
        if (close == NULL) return "unterminated quoted value";
        *close = '\0';
        char *rest = trim(close + 1);
        if (*rest != '\0' && *rest != '#') return "unexpected text after the quoted value";
        *value = v + 1;
        return NULL;
    }
    for (char *p = v; *p; p++) {
        if (*p == '#' && (p == v || p[-1] == ' ' || p[-1] == '\t')) {
            *p = '\0';
            break;
        }
    }
    *value = trim(v);
    return NULL;
}

thz_err config_load_stream(thz_config *cfg, FILE *in, const char *name, char *err, size_t errlen)
{
    char line[CONFIG_LINE_MAX + 1];
    unsigned lineno = 0;
    for (;;) {
        /* Read byte by byte so that over-long lines and NUL bytes are caught
         * exactly; config files are small. */
        size_t n = 0;
        int c;
        bool toolong = false, nul = false;
        while ((c = getc(in)) != EOF && c != '\n') {
            if (c == '\0') nul = true;
            if (n < CONFIG_LINE_MAX)
                line[n++] = (char)c;
            else
                toolong = true;
        }
        if (c == EOF && n == 0 && !toolong) {
            if (ferror(in)) {
                seterr(err, errlen, "%s: read error", name);
                return THZ_EIO;
            }
            return THZ_OK;
        }
        line[n] = '\0';
        lineno++;
        if (toolong) {
            seterr(err, errlen, "%s:%u: line longer than %d bytes", name, lineno, CONFIG_LINE_MAX);
            return THZ_EINVAL;
        }
        if (nul) {
            seterr(err, errlen, "%s:%u: NUL byte in line", name, lineno);
            return THZ_EINVAL;
        }
        char *s = trim(line);
        if (*s == '\0' || *s == '#') continue;
        char *key, *value;
        const char *why = split_line(s, &key, &value);
        if (why != NULL) {
            seterr(err, errlen, "%s:%u: %s", name, lineno, why);
            return THZ_EINVAL;
        }
        char msg[512];
        thz_err rc = config_set(cfg, key, value, msg, sizeof msg);
        if (rc != THZ_OK) {
            seterr(err, errlen, "%s:%u: %s", name, lineno, msg);
            return rc;
        }
        if (c == EOF) return THZ_OK;
    }
}

thz_err config_load_file(thz_config *cfg, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        seterr(err, errlen, "%s: %s", path, strerror(errno));
        return THZ_EIO;
    }
    thz_err rc = config_load_stream(cfg, f, path, err, errlen);
    fclose(f);
    return rc;
}

/* Applies one flag (argv[*i], possibly consuming argv[*i + 1]). */
static thz_err apply_flag(thz_config *cfg, int argc, char **argv, int *i, char *err, size_t errlen)
{
    const char *arg = argv[*i];
    const char *body = arg + 2;
    const char *eq = strchr(body, '=');
    char name[64];
    size_t nlen = eq ? (size_t)(eq - body) : strlen(body);
    if (nlen >= sizeof name) {
        seterr(err, errlen, "unknown flag '%.*s'", 64, arg);
        return THZ_EINVAL;
    }
    memcpy(name, body, nlen);
    name[nlen] = '\0';

    const config_opt *o = opt_find(name);
    const char *value = NULL;
    if (o == NULL && strncmp(name, "no-", 3) == 0) {
        o = opt_find(name + 3);
        if (o == NULL || o->type != OPT_BOOL) {
            seterr(err, errlen, "unknown flag '--%s'", name);
            return THZ_EINVAL;
        }
        if (eq != NULL) {
            seterr(err, errlen, "--%s takes no value", name);
            return THZ_EINVAL;
        }
        value = "false";
    } else if (o == NULL) {
        seterr(err, errlen, "unknown flag '--%s'", name);
        return THZ_EINVAL;
    } else if (eq != NULL) {
        value = eq + 1;
    } else if (o->type == OPT_BOOL) {
        /* Booleans never consume the next argument, so `--allow-anonymous
         * serve` cannot be misread; use --name=false or --no-name. */
        value = "true";
    } else {
        if (*i + 1 >= argc || strncmp(argv[*i + 1], "--", 2) == 0) {
            seterr(err, errlen, "--%s: missing value", name);
            return THZ_EINVAL;
        }
        value = argv[++*i];
    }
    char why[256];
    thz_err rc = opt_set(o, cfg, value, why, sizeof why);
    if (rc != THZ_OK) seterr(err, errlen, "--%s: %s", o->zName, why);
    return rc;
}

thz_err config_parse_args(thz_config *cfg, int argc, char **argv, int first, char *err,
                          size_t errlen)
{
    /* Pass 1: config files, in the order given, so that pass 2 flags win. */
    for (int i = first; i < argc; i++) {
        const char *path = NULL;
        if (strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc) {
                seterr(err, errlen, "--config: missing value");
                return THZ_EINVAL;
            }
            path = argv[++i];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            path = argv[i] + 9;
        } else if (strncmp(argv[i], "--", 2) == 0 && strchr(argv[i], '=') == NULL) {
            /* Skip the value of a valued flag so a value is never read as a
             * flag; booleans take no separate value. */
            const config_opt *o = opt_find(argv[i] + 2);
            if (o != NULL && o->type != OPT_BOOL && i + 1 < argc &&
                strncmp(argv[i + 1], "--", 2) != 0)
                i++;
            continue;
        } else {
            continue;
        }
        if (path[0] == '\0') {
            seterr(err, errlen, "--config: missing value");
            return THZ_EINVAL;
        }
        thz_err rc = config_load_file(cfg, path, err, errlen);
        if (rc != THZ_OK) return rc;
    }
    /* Pass 2: every other flag. */
    for (int i = first; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--config") == 0) {
            i++;
            continue;
        }
        if (strncmp(arg, "--config=", 9) == 0) continue;
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
            seterr(err, errlen, "unexpected argument '%s'", arg);
            return THZ_EINVAL;
        }
        thz_err rc = apply_flag(cfg, argc, argv, &i, err, errlen);
        if (rc != THZ_OK) return rc;
    }
    return THZ_OK;
}

thz_err config_validate(const thz_config *cfg, char *err, size_t errlen)
{
    char host[THZ_ADDR_MAX], host2[THZ_ADDR_MAX];
    int port, port2;
    if (cfg->data_dir[0] == '\0') {
        seterr(err, errlen, "data-dir: must not be empty");
        return THZ_EINVAL;
    }
    /* Every listener: a valid address when on (empty turns it off), and no
     * two on the same explicit port of the same host. */
    static const struct {
        const char *name;
        size_t off;
    } lst[] = {{"mqtt-listen", offsetof(thz_config, mqtt_listen)},
               {"http-listen", offsetof(thz_config, http_listen)},
               {"mqtts-listen", offsetof(thz_config, mqtts_listen)},
               {"https-listen", offsetof(thz_config, https_listen)}};
    for (size_t i = 0; i < sizeof lst / sizeof lst[0]; i++) {
        const char *a = (const char *)cfg + lst[i].off;
        if (a[0] == '\0') continue;
        if (config_split_addr(a, host, sizeof host, &port) != THZ_OK) {
            seterr(err, errlen, "%s: '%s' is not HOST:PORT or [V6]:PORT", lst[i].name, a);
            return THZ_EINVAL;
        }
        for (size_t k = 0; k < i; k++) {
            const char *b = (const char *)cfg + lst[k].off;
            if (b[0] == '\0' || config_split_addr(b, host2, sizeof host2, &port2) != THZ_OK)
                continue;
            if (port != 0 && port == port2 && strcmp(host, host2) == 0) {
                seterr(err, errlen, "%s and %s are both %s", lst[k].name, lst[i].name, a);
                return THZ_EINVAL;
            }
        }
    }
    if ((cfg->tls_cert[0] == '\0') != (cfg->tls_key[0] == '\0')) {
        seterr(err, errlen, "tls-cert and tls-key: set both or neither");
        return THZ_EINVAL;
    }
    /* Values set directly in the struct bypass opt_set; check ranges again. */
    for (size_t i = 0; i < N_OPTS; i++) {
        const config_opt *o = &opts[i];
        const void *p = opt_cptr(o, cfg);
        uint64_t v;
        if (o->type == OPT_INT) {
            int x = *(const int *)p;
            if (x < 0) goto range;
            v = (uint64_t)x;
        } else if (o->type == OPT_U32) {
            v = *(const uint32_t *)p;
        } else if (o->type == OPT_ENUM) {
            int x = *(const int *)p, n = 0;
            while (o->azEnum[n]) n++;
            if (x < 0 || x >= n) {
                seterr(err, errlen, "%s: %d is not a valid choice", o->zName, x);
                return THZ_EINVAL;
            }
            continue;
        } else if (o->type == OPT_PATH || o->type == OPT_ADDR || o->type == OPT_ORIGINS) {
            if (memchr(p, '\0', o->size) == NULL) {
                seterr(err, errlen, "%s: not NUL-terminated", o->zName);
                return THZ_EINVAL;
            }
            continue;
        } else {
            continue;
        }
        if (v >= o->min && v <= o->max) continue;
    range:
        seterr(err, errlen, "%s: out of range %llu..%llu", o->zName, (unsigned long long)o->min,
               (unsigned long long)o->max);
        return THZ_EINVAL;
    }
    return THZ_OK;
}

static const char *opt_meta(const config_opt *o)
{
    switch (o->type) {
    case OPT_PATH: return "PATH";
    case OPT_ADDR: return "ADDR";
    case OPT_INT:
    case OPT_U32: return "N";
    case OPT_BOOL: return "";
    case OPT_ORIGINS: return "ORIGINS";
    case OPT_ENUM: return o->azEnum == log_level_names ? "LEVEL" : "MODE";
    }
    return "VALUE";
}

/* Text of a default for humans: empty strings are shown as "". */
static const char *shown_default(const config_opt *o)
{
    return o->zDefault[0] ? o->zDefault : "\"\"";
}

void config_print_help(FILE *out)
{
    fprintf(out, "usage: thinghz serve [--config FILE] [flags]\n"
                 "\n"
                 "Flags override the config file whatever their order. Every flag is also\n"
                 "a config file setting (`name = value`). Booleans: --name, --no-name or\n"
                 "--name=BOOL. [SIGHUP] marks settings that a SIGHUP reloads.\n"
                 "\n"
                 "  --config FILE                  config file to load first\n");
    for (size_t i = 0; i < N_OPTS; i++) {
        const config_opt *o = &opts[i];
        char flag[96];
        if (o->type == OPT_BOOL)
            snprintf(flag, sizeof flag, "--[no-]%s", o->zName);
        else
            snprintf(flag, sizeof flag, "--%s %s", o->zName, opt_meta(o));
        fprintf(out, "  %-30s %s", flag, o->zHelp);
        if (o->type == OPT_INT || o->type == OPT_U32)
            fprintf(out, " (%llu..%llu, default: %s)", (unsigned long long)o->min,
                    (unsigned long long)o->max, o->zDefault);
        else
            fprintf(out, " (default: %s)", shown_default(o));
        fprintf(out, "%s\n", o->reloadable ? " [SIGHUP]" : "");
    }
}

void config_print_sample(FILE *out)
{
    fprintf(out, "# thinghz configuration. Every setting is shown commented out with its\n"
                 "# default; uncomment and edit to change it. `thinghz serve --help` lists\n"
                 "# the same settings as flags. Settings marked [SIGHUP] are re-read on\n"
                 "# SIGHUP; the others need a restart.\n");
    for (size_t i = 0; i < N_OPTS; i++) {
        const config_opt *o = &opts[i];
        fprintf(out, "\n# %s", o->zHelp);
        if (o->type == OPT_INT || o->type == OPT_U32)
            fprintf(out, " Range %llu..%llu.", (unsigned long long)o->min,
                    (unsigned long long)o->max);
        fprintf(out, "%s\n# %s = %s\n", o->reloadable ? " [SIGHUP]" : "", o->zName,
                shown_default(o));
    }
}

/* Host names and IPv4 literals: letters, digits, '.', '-', '_'. */
static bool host_ok(const char *h, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)h[i]) && h[i] != '.' && h[i] != '-' && h[i] != '_')
            return false;
    return true;
}

/* IPv6 literals: hex digits, ':', '.' (embedded IPv4) and a %zone. */
static bool host6_ok(const char *h, size_t n)
{
    if (n == 0 || memchr(h, ':', n) == NULL) return false;
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)h[i]) && h[i] != ':' && h[i] != '.')
            return h[i] == '%' && i + 1 < n && host_ok(h + i + 1, n - i - 1);
    return true;
}

thz_err config_split_addr(const char *addr, char *host, size_t hostlen, int *port)
{
    const char *h, *portz;
    size_t hlen;
    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (close == NULL || close[1] != ':') return THZ_EINVAL;
        h = addr + 1;
        hlen = (size_t)(close - h);
        if (!host6_ok(h, hlen)) return THZ_EINVAL;
        portz = close + 2;
    } else {
        const char *colon = strrchr(addr, ':');
        if (colon == NULL) return THZ_EINVAL;
        h = addr;
        hlen = (size_t)(colon - addr);
        /* A bare IPv6 literal is ambiguous ("::1:1883"); require brackets. */
        if (hlen == 0 || !host_ok(h, hlen)) return THZ_EINVAL;
        portz = colon + 1;
    }
    uint64_t v;
    if (strlen(portz) > 5 || parse_u64(portz, &v) != THZ_OK || v > 65535) return THZ_EINVAL;
    if (hlen >= hostlen) return THZ_ETOOBIG;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (int)v;
    return THZ_OK;
}

bool config_is_reloadable(const char *name)
{
    const config_opt *o = opt_find(name);
    return o != NULL && o->reloadable;
}

void config_apply_reload(thz_config *live, const thz_config *fresh)
{
    for (size_t i = 0; i < N_OPTS; i++) {
        const config_opt *o = &opts[i];
        void *dst = opt_ptr(o, live);
        const void *src = opt_cptr(o, fresh);
        bool str = o->type == OPT_PATH || o->type == OPT_ADDR || o->type == OPT_ORIGINS;
        bool same = str ? strcmp(dst, src) == 0 : memcmp(dst, src, o->size) == 0;
        if (same) continue;
        if (o->reloadable) {
            memcpy(dst, src, o->size);
            log_info("config", "%s changed", o->zName);
        } else {
            char now[THZ_PATH_MAX];
            opt_format(o, fresh, now, sizeof now);
            log_warn("config", "%s changed to '%s'; it takes effect after a restart", o->zName,
                     now);
        }
    }
}

int config_threads(const thz_config *cfg)
{
    if (cfg->threads > 0) return cfg->threads;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    if (n > 256) n = 256;
    return (int)n;
}
