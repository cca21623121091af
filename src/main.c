/* main.c - the thinghz command line: `serve` runs the daemon; `passwd`,
 * `sample-config` and `--help` are the helpers around it. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "api/api.h"
#include "auth/auth.h"
#include "cli/cli.h"
#include "core/config.h"
#include "core/fs.h"
#include "core/log.h"
#include "core/version.h"
#include "http/http.h"
#include "ingest/ingest.h"
#include "live/live.h"
#include "metrics/metrics.h"
#include "mqtt/mqtt.h"
#include "net/net.h"
#include "net/net_tls.h"
#include "query/query.h"
#include "registry/registry.h"
#include "web/web.h"

static void usage(FILE *out)
{
    fprintf(out,
            "thinghz %s - a self-hosted IoT cloud in one daemon\n\n"
            "usage:\n"
            "  thinghz serve [flags]                   run the daemon (flags below)\n"
            "  thinghz passwd FILE USERNAME PASSWORD   add or replace a user in a password file\n"
            "  thinghz sample-config                   print a commented config file\n"
            "  thinghz version                         print the version\n\n",
            THINGHZ_VERSION);
    cli_usage(out);
    config_print_help(out);
}

/* Rewrites FILE with USERNAME's line replaced (or added). */
static int cmd_passwd(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: thinghz passwd FILE USERNAME PASSWORD\n");
        return 2;
    }
    const char *path = argv[2], *user = argv[3], *pass = argv[4];
    if (!*user || strchr(user, ':') || strchr(user, '\n')) {
        fprintf(stderr, "thinghz passwd: a user name must be non-empty and contain no ':'\n");
        return 2;
    }
    char line[1024];
    if (auth_hash_password(user, pass, line, sizeof line) != THZ_OK) {
        fprintf(stderr, "thinghz passwd: cannot hash the password\n");
        return 1;
    }
    char tmp[THZ_PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *out = fopen(tmp, "w");
    if (!out) {
        fprintf(stderr, "thinghz passwd: %s: %s\n", tmp, strerror(errno));
        return 1;
    }
    FILE *in = fopen(path, "r");
    size_t ul = strlen(user);
    if (in) {
        char buf[4096];
        while (fgets(buf, sizeof buf, in))
            if (!(strncmp(buf, user, ul) == 0 && buf[ul] == ':')) fputs(buf, out);
        fclose(in);
    }
    fprintf(out, "%s\n", line);
    if (fclose(out) != 0 || rename(tmp, path) != 0) {
        fprintf(stderr, "thinghz passwd: %s: %s\n", path, strerror(errno));
        return 1;
    }
    return 0;
}

static int load_config(thz_config *cfg, int argc, char **argv)
{
    char err[512];
    config_defaults(cfg);
    if (config_parse_args(cfg, argc, argv, 2, err, sizeof err) != THZ_OK ||
        config_validate(cfg, err, sizeof err) != THZ_OK) {
        fprintf(stderr, "thinghz: %s\n", err);
        return -1;
    }
    return 0;
}

static int cmd_serve(int argc, char **argv)
{
    static thz_config cfg;
    for (int i = 2; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
    if (load_config(&cfg, argc, argv) != 0) return 2;
    thz_log_level = cfg.log_level;
    /* libuv's worker pool runs password hashes, registry writes and queries
     * of up to seconds: more than its default 4, unless the user chose. */
    setenv("UV_THREADPOOL_SIZE", "16", 0);
    if (thz_mkdir_p(cfg.data_dir, 0755) != 0) {
        log_error("main", "cannot create data dir %s: %s", cfg.data_dir, strerror(errno));
        return 1;
    }
    /* Signals are taken synchronously by this thread with sigwait; every
     * other thread inherits the blocked mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* After the mask: the registry starts a thread, which must not take
     * SIGTERM with its default action. */
    registry *reg = NULL;
    char rerr[REG_ERR_LEN];
    thz_err regrc = reg_open(cfg.data_dir, &reg, rerr);
    if (regrc != THZ_OK) {
        log_error("main", "registry: %s", rerr);
        /* Refuse rather than serve from a partly readable registry: the
         * devices and tokens on a damaged page would be silently unknown. */
        if (regrc == THZ_ECORRUPT)
            log_error("main",
                      "%s/registry.db is damaged; not starting. Restore it from a backup: "
                      "thinghz restore BACKUP_DIR --data-dir %s (or salvage it with "
                      "sqlite3's .recover); see docs/OPERATIONS.md",
                      cfg.data_dir, cfg.data_dir);
        return 1;
    }

    /* the time-series engine, at DATA_DIR/tsdb (after the mask too) */
    tsdb *db = NULL;
    {
        char tdir[THZ_PATH_MAX + 8], terr[TSDB_ERR_LEN] = "";
        snprintf(tdir, sizeof tdir, "%s/tsdb", cfg.data_dir);
        tsdb_options to = {.dir = tdir,
                           .fsync = cfg.fsync == THZ_FSYNC_ALWAYS ? TSDB_FSYNC_ALWAYS
                                                                  : TSDB_FSYNC_EVERYSEC,
                           .max_series_per_tenant = cfg.max_series_per_tenant,
                           .retention_s = (int64_t)cfg.retention_days * 86400};
        if (tsdb_open(&to, &db, terr) != THZ_OK) {
            log_error("main", "tsdb: %s", terr);
            return 1;
        }
    }

    auth *a = NULL;
    thz_err rc = auth_open(&cfg, &a);
    if (rc) {
        log_error("main", "auth: %s", thz_strerror(rc));
        return 1;
    }
    if (net_tls_setup(&cfg) != THZ_OK) {
        log_error("main", "TLS: cannot load the certificate");
        return 1;
    }
    if (net_init(config_threads(&cfg)) != THZ_OK || mqtt_start(&cfg, a) != THZ_OK) {
        log_error("main", "startup failed");
        return 1;
    }
    mqtt_set_registry(reg);
    mqtt_set_tsdb(db);
    mqtt_ws_register();
    if (http_start(&cfg, a) != THZ_OK || api_start(reg) != THZ_OK ||
        ingest_start(db, reg) != THZ_OK || query_start(db) != THZ_OK ||
        live_start(reg, db) != THZ_OK || web_start() != THZ_OK ||
        metrics_start(&cfg, reg, db) != THZ_OK || net_start() != THZ_OK) {
        log_error("main", "startup failed");
        return 1;
    }
    log_info("main",
             "thinghz %s serving: MQTT on %s, MQTT/TLS on %s, HTTP on %s, HTTPS on %s, %d I/O "
             "threads, data in %s%s",
             THINGHZ_VERSION, cfg.mqtt_listen[0] ? cfg.mqtt_listen : "(off)",
             cfg.mqtts_listen[0] ? cfg.mqtts_listen : "(off)",
             cfg.http_listen[0] ? cfg.http_listen : "(off)",
             cfg.https_listen[0] ? cfg.https_listen : "(off)", net_threads(), cfg.data_dir,
             cfg.allow_anonymous ? ", anonymous access allowed" : "");
    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0) continue;
        if (sig == SIGHUP) {
            thz_config fresh;
            if (load_config(&fresh, argc, argv) != 0) {
                log_warn("main", "reload: configuration has errors; keeping the old one");
                continue;
            }
            config_apply_reload(&cfg, &fresh);
            thz_log_level = cfg.log_level;
            rc = auth_reload(a, &cfg);
            if (rc) log_warn("main", "reload: auth: %s (old rules kept)", thz_strerror(rc));
            mqtt_reload(&cfg);
            net_tls_reload(&cfg); /* new connections get the new certificate */
            log_info("main", "configuration reloaded");
            continue;
        }
        log_info("main", "%s: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
        break;
    }
    net_shutdown();
    mqtt_stop();
    net_tls_cleanup();
    if (db) tsdb_close(db);
    reg_close(reg);
    auth_close(a);
    log_info("main", "stopped");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0) return cmd_serve(argc, argv);
    if (strcmp(cmd, "passwd") == 0) return cmd_passwd(argc, argv);
    if (cli_handles(cmd)) return cli_main(argc, argv);
    if (strcmp(cmd, "sample-config") == 0) {
        config_print_sample(stdout);
        return 0;
    }
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("thinghz %s\n", THINGHZ_VERSION);
        return 0;
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "thinghz: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
