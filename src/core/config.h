/* config.h - every daemon setting, declared once in a table (config.c) that
 * also produces `--help`, the commented sample config and the validation. */
#ifndef THZ_CONFIG_H
#define THZ_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/err.h"

#define THZ_PATH_MAX 1024
#define THZ_ADDR_MAX 128

/* The settings. Field names are the setting names with '-' as '_':
 * the config file says `mqtt-listen = 127.0.0.1:1883`, the flag is
 * `--mqtt-listen 127.0.0.1:1883`. */
typedef struct thz_config {
    char data_dir[THZ_PATH_MAX];      /* data-dir: broker state, later tsdb and registry */
    char mqtt_listen[THZ_ADDR_MAX];   /* mqtt-listen: ADDR:PORT; empty string = off */
    char http_listen[THZ_ADDR_MAX];   /* http-listen: ADDR:PORT (used by the HTTP issue) */
    int threads;                      /* threads: I/O threads; 0 = number of cores */
    bool allow_anonymous;             /* allow-anonymous: accept CONNECT without credentials */
    int log_level;                    /* log-level: error|warn|info|debug (THZ_LOG_*) */
    char password_file[THZ_PATH_MAX]; /* password-file: `user:hash` lines (thinghz passwd) */
    char acl_file[THZ_PATH_MAX];      /* acl-file: mosquitto-style ACL; empty = all allowed */
    uint32_t max_packet_size;         /* max-packet-size: bytes, inbound (advertised in CONNACK) */
    uint32_t receive_maximum;         /* receive-maximum: inbound QoS 1/2 in flight per client */
    uint32_t max_inflight;            /* max-inflight: outbound QoS 1/2 in flight cap per client */
    uint32_t max_queued_messages;     /* max-queued-messages: per session queue bound */
    uint32_t max_keepalive;      /* max-keepalive: seconds; longer requests get server keep alive */
    uint32_t max_session_expiry; /* max-session-expiry: seconds cap on session expiry */
    uint32_t topic_alias_maximum;   /* topic-alias-maximum: inbound aliases per v5 client */
    uint32_t max_connections;       /* max-connections: 0 = unlimited */
    uint32_t connect_timeout;       /* connect-timeout: seconds to wait for CONNECT */
    uint32_t max_outbuf;            /* max-outbuf: bytes queued to one socket before QoS 0 drops */
    uint32_t slow_consumer_timeout; /* slow-consumer-timeout: seconds a congested reader lasts */
    uint32_t sys_interval;          /* sys-interval: seconds between $SYS updates; 0 = off */
    bool retain_available;          /* retain-available */
    int fsync;               /* fsync: THZ_FSYNC_* for the telemetry WAL (never acts as everysec) */
    uint32_t retention_days; /* retention-days: default telemetry retention; 0 = forever */
    uint32_t max_series_per_tenant;  /* max-series-per-tenant: 0 = unlimited */
    int state_fsync;                 /* state-fsync: THZ_FSYNC_* for the broker state log */
    uint32_t store_segment_mb;       /* store-segment-mb: state log segment size before rotating */
    char cors_origins[THZ_PATH_MAX]; /* cors-origins: "*" or comma-separated origins; empty = off */
    int metrics_auth;                /* metrics-auth: THZ_METRICS_AUTH_* for GET /metrics */
    char mqtts_listen[THZ_ADDR_MAX]; /* mqtts-listen: MQTT over TLS; empty = off */
    char https_listen[THZ_ADDR_MAX]; /* https-listen: HTTPS (and wss://); empty = off */
    char tls_cert[THZ_PATH_MAX];     /* tls-cert: PEM certificate chain; empty = dev CA */
    char tls_key[THZ_PATH_MAX];      /* tls-key: PEM private key of tls-cert */
    char tls_ciphers[THZ_PATH_MAX];  /* tls-ciphers: TLS 1.2 cipher list; empty = OpenSSL's */
    char tls_ciphersuites[THZ_PATH_MAX]; /* tls-ciphersuites: TLS 1.3 suites; empty = OpenSSL's */
    int tls_min_version;                 /* tls-min-version: THZ_TLS_1_2 or THZ_TLS_1_3 */
    /* Limits and fairness (docs/OPERATIONS.md "Limits"); 0 = unlimited unless said. */
    uint32_t max_connections_per_tenant; /* max-connections-per-tenant */
    uint32_t max_connect_rate;           /* max-connect-rate: CONNECTs/s per source address */
    uint32_t connect_burst;              /* connect-burst: bucket size of max-connect-rate */
    uint32_t max_publish_rate;           /* max-publish-rate: PUBLISHes/s per client */
    uint32_t publish_burst;              /* publish-burst: bucket size of max-publish-rate */
    int publish_rate_action;             /* publish-rate-action: THZ_RATE_* */
    uint32_t max_subscriptions;          /* max-subscriptions: filters per client */
    uint32_t max_topic_length;           /* max-topic-length: bytes of a topic or filter */
    uint32_t max_topic_levels;           /* max-topic-levels: levels of a topic or filter */
    uint32_t max_retained_per_tenant;    /* max-retained-per-tenant: retained topics */
    uint32_t max_payload_size;           /* max-payload-size: PUBLISH payload bytes */
    int backpressure;                    /* backpressure: THZ_BACKPRESSURE_* */
    uint32_t backpressure_exempt_rate;   /* backpressure-exempt-rate: msgs/s never paused */
} thz_config;

enum { THZ_TLS_1_2 = 0, THZ_TLS_1_3 = 1 };
enum { THZ_RATE_DISCONNECT = 0, THZ_RATE_DROP = 1 };
/* queued: publishers pause only for QoS 1/2 messages that land in a consumer's
 * queue past half its bound; all: for any message to a consumer that is behind
 * (the old behaviour); off: never (QoS 1/2 past the queue bound are dropped). */
enum { THZ_BACKPRESSURE_QUEUED = 0, THZ_BACKPRESSURE_ALL = 1, THZ_BACKPRESSURE_OFF = 2 };

enum { THZ_FSYNC_NEVER = 0, THZ_FSYNC_EVERYSEC = 1, THZ_FSYNC_ALWAYS = 2 };
enum { THZ_METRICS_AUTH_LOOPBACK = 0, THZ_METRICS_AUTH_NONE = 1, THZ_METRICS_AUTH_TOKEN = 2 };

/* Fills cfg with every default from the table. */
void config_defaults(thz_config *cfg);

/* Applies a config file (`name = value` lines, `#` comments, blank lines).
 * On error returns THZ_EINVAL and writes "FILE:LINE: reason" into err. */
thz_err config_load_file(thz_config *cfg, const char *path, char *err, size_t errlen);

/* Applies one setting by name ("mqtt-listen") from its text value. */
thz_err config_set(thz_config *cfg, const char *name, const char *value, char *err, size_t errlen);

/* Parses `--name value`, `--name=value` and, for booleans, bare `--name` and
 * `--no-name` from argv[first..argc). A `--config FILE` is loaded first so
 * that flags override the file whatever their order. Unknown flags are errors. */
thz_err config_parse_args(thz_config *cfg, int argc, char **argv, int first, char *err,
                          size_t errlen);

/* Checks cross-setting rules after everything is applied. */
thz_err config_validate(const thz_config *cfg, char *err, size_t errlen);

/* Writes the flag reference (for --help) / a commented sample config file. */
void config_print_help(FILE *out);
void config_print_sample(FILE *out);

/* Splits "ADDR:PORT" ("[::1]:1883" for IPv6) into host and port. */
thz_err config_split_addr(const char *addr, char *host, size_t hostlen, int *port);

/* Like config_load_file but reads an open stream; `name` labels the errors
 * ("NAME:LINE: reason"). The stream stays owned by the caller. */
thz_err config_load_stream(thz_config *cfg, FILE *in, const char *name, char *err, size_t errlen);

/* True if the setting (by name, "log-level") takes effect on SIGHUP. */
bool config_is_reloadable(const char *name);

/* Copies the reloadable settings from fresh into live and logs a warning for
 * each other setting that differs (it needs a restart). Call it on the thread
 * that owns live; it does no locking. */
void config_apply_reload(thz_config *live, const thz_config *fresh);

/* The number of I/O threads to start: cfg->threads, or the number of online
 * cores (1..256) when it is 0. */
int config_threads(const thz_config *cfg);

#endif
