/* test_config.c - unit tests for the settings table: defaults, the file and
 * flag parsers with every error path, --help, the sample config and reload. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "core/log.h"

/* Writes text to a fresh temporary file; the caller unlinks and frees. */
static char *write_tmp(const char *text)
{
    char *path = strdup("/tmp/thz_test_config_XXXXXX");
    assert_non_null(path);
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t n = strlen(text);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    close(fd);
    return path;
}

static void drop_tmp(char *path)
{
    unlink(path);
    free(path);
}

/* Loads text as a config file on top of the defaults. */
static thz_err load_text(thz_config *cfg, const char *text, char *err, size_t errlen)
{
    config_defaults(cfg);
    err[0] = '\0';
    char *path = write_tmp(text);
    thz_err rc = config_load_file(cfg, path, err, errlen);
    drop_tmp(path);
    return rc;
}

/* Loads text through config_load_stream with the name "t.conf". */
static thz_err load_stream(thz_config *cfg, const char *text, char *err, size_t errlen)
{
    config_defaults(cfg);
    err[0] = '\0';
    FILE *f = fmemopen((void *)text, strlen(text), "r");
    assert_non_null(f);
    thz_err rc = config_load_stream(cfg, f, "t.conf", err, errlen);
    fclose(f);
    return rc;
}

/* Runs config_parse_args on the defaults with argv = {"serve", args...}. */
static thz_err parse_argv(thz_config *cfg, char *err, size_t errlen, char **args)
{
    char *argv[32] = {"serve"};
    int argc = 1;
    while (args[argc - 1] != NULL) {
        argv[argc] = args[argc - 1];
        argc++;
    }
    config_defaults(cfg);
    err[0] = '\0';
    return config_parse_args(cfg, argc, argv, 1, err, errlen);
}
#define parse(cfg, err, ...) parse_argv(cfg, err, sizeof err, (char *[]){__VA_ARGS__, NULL})

static void test_defaults(void **state)
{
    thz_config c;
    config_defaults(&c);
    assert_string_equal(c.data_dir, "./data");
    assert_string_equal(c.mqtt_listen, "127.0.0.1:1883");
    assert_string_equal(c.http_listen, "127.0.0.1:8080");
    assert_int_equal(c.threads, 0);
    assert_false(c.allow_anonymous);
    assert_int_equal(c.log_level, THZ_LOG_INFO);
    assert_string_equal(c.password_file, "");
    assert_string_equal(c.acl_file, "");
    assert_int_equal(c.max_packet_size, 1048576);
    assert_int_equal(c.receive_maximum, 1024);
    assert_int_equal(c.max_inflight, 1024);
    assert_int_equal(c.max_queued_messages, 1000);
    assert_int_equal(c.max_keepalive, 65535);
    assert_int_equal(c.max_session_expiry, 4294967295u);
    assert_int_equal(c.topic_alias_maximum, 64);
    assert_int_equal(c.max_connections, 0);
    assert_int_equal(c.connect_timeout, 10);
    assert_int_equal(c.max_outbuf, 8388608);
    assert_int_equal(c.sys_interval, 10);
    assert_true(c.retain_available);
    assert_int_equal(c.fsync, THZ_FSYNC_ALWAYS);
    assert_int_equal(c.retention_days, 0);
    assert_int_equal(c.max_series_per_tenant, 1000000);
    assert_int_equal(c.state_fsync, THZ_FSYNC_EVERYSEC);
    assert_int_equal(c.store_segment_mb, 64);
    char err[256];
    assert_int_equal(config_validate(&c, err, sizeof err), THZ_OK);
    assert_true(config_threads(&c) >= 1 && config_threads(&c) <= 256);
    c.threads = 7;
    assert_int_equal(config_threads(&c), 7);
}

static void test_file_parse(void **state)
{
    thz_config c;
    char err[256];
    const char *text = "# full-line comment\n"
                       "\n"
                       "   \t\n"
                       "data-dir = /var/lib/thinghz\n"
                       "  mqtt-listen=[::1]:1884   # trailing comment\n"
                       "http-listen = \"0.0.0.0:80\"  # quoted\n"
                       "threads = 4\r\n"
                       "allow-anonymous = yes\n"
                       "log-level = debug\n"
                       "password-file = \"/etc/my passwords#1\"\n"
                       "acl-file = /etc/acl#not-a-comment\n"
                       "max-session-expiry = 0\n"
                       "max-connections = 4294967295\n"
                       "retain-available = OFF\n"
                       "fsync = everysec\n"
                       "state-fsync = always\n"
                       "store-segment-mb = 007\n"
                       "\t# indented comment";
    assert_int_equal(load_text(&c, text, err, sizeof err), THZ_OK);
    assert_string_equal(c.data_dir, "/var/lib/thinghz");
    assert_string_equal(c.mqtt_listen, "[::1]:1884");
    assert_string_equal(c.http_listen, "0.0.0.0:80");
    assert_int_equal(c.threads, 4);
    assert_true(c.allow_anonymous);
    assert_int_equal(c.log_level, THZ_LOG_DEBUG);
    assert_string_equal(c.password_file, "/etc/my passwords#1");
    assert_string_equal(c.acl_file, "/etc/acl#not-a-comment");
    assert_int_equal(c.max_session_expiry, 0);
    assert_int_equal(c.max_connections, 4294967295u);
    assert_false(c.retain_available);
    assert_int_equal(c.fsync, THZ_FSYNC_EVERYSEC);
    assert_int_equal(c.state_fsync, THZ_FSYNC_ALWAYS);
    assert_int_equal(c.store_segment_mb, 7);

    /* Empty values: unquoted and quoted both clear a string. */
    assert_int_equal(
        load_text(&c, "mqtt-listen =\ndata-dir = x\nacl-file = \"\"\n", err, sizeof err), THZ_OK);
    assert_string_equal(c.mqtt_listen, "");
    assert_string_equal(c.acl_file, "");
    assert_int_equal(config_validate(&c, err, sizeof err), THZ_OK);

    /* Every boolean spelling. */
    const char *yes[] = {"true", "yes", "on", "1", "TRUE"}, *no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 5; i++) {
        config_defaults(&c);
        assert_int_equal(config_set(&c, "allow-anonymous", yes[i], err, sizeof err), THZ_OK);
        assert_true(c.allow_anonymous);
    }
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(config_set(&c, "allow-anonymous", no[i], err, sizeof err), THZ_OK);
        assert_false(c.allow_anonymous);
    }
    assert_int_equal(load_stream(&c, "threads = 3", err, sizeof err), THZ_OK);
    assert_int_equal(c.threads, 3);
}

/* Each case: the file text and the exact error it must produce. */
static void test_file_errors(void **state)
{
    static const struct {
        const char *text, *err;
    } cases[] = {
        {"bogus = 1\n", "t.conf:1: unknown setting 'bogus'"},
        {"# c\n\nthreads = 257\n", "t.conf:3: threads: '257' is out of range 0..256"},
        {"threads = -1\n", "t.conf:1: threads: '-1' is not a decimal number"},
        {"threads = 0x10\n", "t.conf:1: threads: '0x10' is not a decimal number"},
        {"threads = 1 2\n", "t.conf:1: threads: '1 2' is not a decimal number"},
        {"threads =\n", "t.conf:1: threads: '' is not a decimal number"},
        {"max-packet-size = 63\n", "t.conf:1: max-packet-size: '63' is out of range 64..268435455"},
        {"max-session-expiry = 4294967296\n",
         "t.conf:1: max-session-expiry: '4294967296' is out of range 0..4294967295"},
        {"max-connections = 99999999999999999999999999\n",
         "t.conf:1: max-connections: '99999999999999999999999999' is out of range 0..4294967295"},
        {"max-keepalive = 0\n", "t.conf:1: max-keepalive: '0' is out of range 1..65535"},
        {"allow-anonymous = maybe\n",
         "t.conf:1: allow-anonymous: 'maybe' is not a boolean (true/false, yes/no, on/off, 1/0)"},
        {"log-level = loud\n",
         "t.conf:1: log-level: 'loud' is not one of error, warn, info, debug"},
        {"fsync = sometimes\n",
         "t.conf:1: fsync: 'sometimes' is not one of never, everysec, always"},
        {"mqtt-listen = localhost\n",
         "t.conf:1: mqtt-listen: 'localhost' is not HOST:PORT or [V6]:PORT"},
        {"mqtt-listen = :1883\n", "t.conf:1: mqtt-listen: ':1883' is not HOST:PORT or [V6]:PORT"},
        {"http-listen = 1.2.3.4:65536\n",
         "t.conf:1: http-listen: '1.2.3.4:65536' is not HOST:PORT or [V6]:PORT"},
        {"just words\n", "t.conf:1: expected 'name = value'"},
        {" = 5\n", "t.conf:1: missing setting name before '='"},
        {"data-dir = \"abc\n", "t.conf:1: unterminated quoted value"},
        {"data-dir = \"abc\" def\n", "t.conf:1: unexpected text after the quoted value"},
    };
    thz_config c;
    char err[512];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_not_equal(load_stream(&c, cases[i].text, err, sizeof err), THZ_OK);
        assert_string_equal(err, cases[i].err);
    }

    /* The file name and line number come from config_load_file too. */
    char *path = write_tmp("threads = 1\nnope = 2\n");
    config_defaults(&c);
    assert_int_equal(config_load_file(&c, path, err, sizeof err), THZ_EINVAL);
    char want[256];
    snprintf(want, sizeof want, "%s:2: unknown setting 'nope'", path);
    assert_string_equal(err, want);
    drop_tmp(path);
    assert_int_equal(config_load_file(&c, "/nonexistent/thz.conf", err, sizeof err), THZ_EIO);
    assert_non_null(strstr(err, "/nonexistent/thz.conf"));

    /* A NUL byte inside a line. */
    static const char nul[] = "data-dir = a\0b\n";
    FILE *f = fmemopen((void *)nul, sizeof nul - 1, "r");
    assert_int_equal(config_load_stream(&c, f, "t.conf", err, sizeof err), THZ_EINVAL);
    assert_string_equal(err, "t.conf:1: NUL byte in line");
    fclose(f);

    /* A value one byte too long for its field is refused, not truncated;
     * one that just fits is kept whole. */
    char *big = malloc(THZ_PATH_MAX + 32);
    memset(big, 'a', THZ_PATH_MAX + 32);
    memcpy(big, "data-dir = ", 11);
    big[11 + THZ_PATH_MAX] = '\0';
    assert_int_equal(load_stream(&c, big, err, sizeof err), THZ_EINVAL);
    assert_string_equal(err, "t.conf:1: data-dir: value is 1024 bytes, the limit is 1023");
    assert_string_equal(c.data_dir, "./data");
    big[11 + THZ_PATH_MAX - 1] = '\0';
    assert_int_equal(load_stream(&c, big, err, sizeof err), THZ_OK);
    assert_int_equal(strlen(c.data_dir), THZ_PATH_MAX - 1);
    free(big);

    /* Lines: 4096 bytes is the limit, 4097 an error. */
    char *line = malloc(5000);
    memset(line, ' ', 5000);
    memcpy(line, "threads = 1", 11);
    line[4096] = '\0';
    assert_int_equal(load_stream(&c, line, err, sizeof err), THZ_OK);
    line[4096] = ' ';
    line[4097] = '\0';
    assert_int_equal(load_stream(&c, line, err, sizeof err), THZ_EINVAL);
    assert_string_equal(err, "t.conf:1: line longer than 4096 bytes");
    free(line);

    /* Errors stop at the first bad line and are always NUL-terminated,
     * even in a buffer too small for the message. */
    char small[8];
    memset(small, 'x', sizeof small);
    config_defaults(&c);
    FILE *g = fmemopen((void *)"bogus = 1\n", 10, "r");
    assert_int_equal(config_load_stream(&c, g, "t.conf", small, sizeof small), THZ_EINVAL);
    assert_string_equal(small, "t.conf:");
    fclose(g);
    assert_int_equal(config_set(&c, "threads", "x", NULL, 0), THZ_EINVAL);
}

static void test_flags(void **state)
{
    thz_config c;
    char err[512];
    char *path = write_tmp("threads = 2\nlog-level = warn\nallow-anonymous = true\n");
    char cfgeq[600];
    snprintf(cfgeq, sizeof cfgeq, "--config=%s", path);

    /* Flags win over the file whether they come before or after it. */
    assert_int_equal(parse(&c, err, "--threads", "8", "--config", path), THZ_OK);
    assert_int_equal(c.threads, 8);
    assert_int_equal(c.log_level, THZ_LOG_WARN);
    assert_true(c.allow_anonymous);
    assert_int_equal(parse(&c, err, "--config", path, "--threads", "8"), THZ_OK);
    assert_int_equal(c.threads, 8);
    assert_int_equal(parse(&c, err, "--threads=5", cfgeq), THZ_OK);
    assert_int_equal(c.threads, 5);
    assert_int_equal(c.log_level, THZ_LOG_WARN);

    /* Booleans: bare, --no-, =value. */
    assert_int_equal(parse(&c, err, "--no-allow-anonymous", cfgeq), THZ_OK);
    assert_false(c.allow_anonymous);
    assert_int_equal(parse(&c, err, "--allow-anonymous"), THZ_OK);
    assert_true(c.allow_anonymous);
    assert_int_equal(parse(&c, err, "--retain-available=no"), THZ_OK);
    assert_false(c.retain_available);
    assert_int_equal(parse(&c, err, "--mqtt-listen", ""), THZ_OK);
    assert_string_equal(c.mqtt_listen, "");
    assert_int_equal(parse(&c, err, "--mqtt-listen="), THZ_OK);
    assert_string_equal(c.mqtt_listen, "");

    /* Errors name the flag. */
    assert_int_equal(parse(&c, err, "--bogus"), THZ_EINVAL);
    assert_string_equal(err, "unknown flag '--bogus'");
    assert_int_equal(parse(&c, err, "--no-threads"), THZ_EINVAL);
    assert_string_equal(err, "unknown flag '--no-threads'");
    assert_int_equal(parse(&c, err, "--no-allow-anonymous=1"), THZ_EINVAL);
    assert_string_equal(err, "--no-allow-anonymous takes no value");
    assert_int_equal(parse(&c, err, "--threads"), THZ_EINVAL);
    assert_string_equal(err, "--threads: missing value");
    assert_int_equal(parse(&c, err, "--threads", "--allow-anonymous"), THZ_EINVAL);
    assert_string_equal(err, "--threads: missing value");
    assert_int_equal(parse(&c, err, "--config"), THZ_EINVAL);
    assert_string_equal(err, "--config: missing value");
    assert_int_equal(parse(&c, err, "--threads", "300"), THZ_EINVAL);
    assert_string_equal(err, "--threads: '300' is out of range 0..256");
    assert_int_equal(parse(&c, err, "--allow-anonymous", "false"), THZ_EINVAL);
    assert_string_equal(err, "unexpected argument 'false'");
    assert_int_equal(parse(&c, err, "stray"), THZ_EINVAL);
    assert_string_equal(err, "unexpected argument 'stray'");
    assert_int_equal(parse(&c, err, "--config", "/nonexistent/x.conf"), THZ_EIO);
    drop_tmp(path);

    /* A bad file reports its error even when flags come first. */
    path = write_tmp("threads = many\n");
    assert_int_equal(parse(&c, err, "--threads", "1", "--config", path), THZ_EINVAL);
    assert_non_null(strstr(err, ":1: threads: 'many' is not a decimal number"));
    drop_tmp(path);

    /* Pass 1 skips flag values, so a value spelled like a flag's file name
     * is not loaded as a config file. */
    assert_int_equal(parse(&c, err, "--data-dir", "--config.d"), THZ_EINVAL);
    assert_string_equal(err, "--data-dir: missing value");
}

static void test_validate(void **state)
{
    thz_config c;
    char err[256];
    config_defaults(&c);
    c.data_dir[0] = '\0';
    assert_int_equal(config_validate(&c, err, sizeof err), THZ_EINVAL);
    assert_string_equal(err, "data-dir: must not be empty");

    /* Every plain-text listener may be switched off... */
    config_defaults(&c);
    c.http_listen[0] = '\0';
    c.mqtt_listen[0] = '\0';
    assert_int_equal(config_validate(&c, err, sizeof err), THZ_OK);
    strcpy(c.http_listen, "nohostport");
    assert_int_equal(config_validate(&c, err, sizeof err), THZ_EINVAL);
    assert_non_null(strstr(err, "http-listen"));

    /* ...the TLS listeners must not collide with the others... */
    config_defaults(&c);
    strcpy(c.https_listen, "127.0.0.1:1883");
    assert_int_equal(config_validate(&c, err, sizeof err), THZ_EINVAL);
    assert_string_equal(err, "mqtt-listen and https-listen are both 127.0.0.1:1883");
    strcpy(c.https_listen, "127.0.0.1:8443");
    strcpy(c.mqtts_listen, "127.0.0.1:8883");
    assert_int_equal(config_validate(&c, err, sizeof err), THZ_OK);

    /* ...and a certificate comes with its key. */
    strcpy(c.tls_cert, "/etc/x.pem");
    assert_int_equal(config_validate(&c, err, sizeof err), THZ_EINVAL);
    assert_string_equal(err, "tls-cert and tls-key: set both or neither");

    config_defaults(&c);
    strcpy(c.mqtt_listen, "127.0.0.1:8080");
    assert_int_equal(config_validate(&c, err, sizeof err), THZ_EINVAL);
    assert_string_equal(err, "mqtt-listen and http-listen are both 127.0.0.1:8080");
    strcpy(c.mqtt_listen, "127.0.0.1:0"); /* two ephemeral ports never clash */
    strcpy(c.http_listen, "127.0.0.1:0");
    assert_int_equal(config_validate(&c, err, sizeof err), THZ_OK);

    /* Fields set directly, bypassing config_set, are range-checked too. */
    config_defaults(&c);
    c.max_packet_size = 1;
    assert_int_equal(config_validate(&c, err, sizeof err), THZ_EINVAL);
    assert_string_equal(err, "max-packet-size: out of range 64..268435455");
    config_defaults(&c);
    c.threads = -3;
    assert_int_equal(config_validate(&c, err, sizeof err), THZ_EINVAL);
    config_defaults(&c);
    c.fsync = 9;
    assert_int_equal(config_validate(&c, err, sizeof err), THZ_EINVAL);
    config_defaults(&c);
    strcpy(c.mqtt_listen, "nonsense");
    assert_int_equal(config_validate(&c, err, sizeof err), THZ_EINVAL);
}

static void test_split_addr(void **state)
{
    char host[64];
    int port = -1;
    assert_int_equal(config_split_addr("127.0.0.1:1883", host, sizeof host, &port), THZ_OK);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 1883);
    assert_int_equal(config_split_addr("[::1]:0", host, sizeof host, &port), THZ_OK);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 0);
    assert_int_equal(config_split_addr("[fe80::1%eth0]:65535", host, sizeof host, &port), THZ_OK);
    assert_string_equal(host, "fe80::1%eth0");
    assert_int_equal(port, 65535);
    assert_int_equal(config_split_addr("my-host.local:80", host, sizeof host, &port), THZ_OK);
    assert_string_equal(host, "my-host.local");

    static const char *const bad[] = {
        "",
        "1883",
        ":1883",
        "host:",
        "host:-1",
        "host:+1",
        "host:0x50",
        "host:65536",
        "host:1883x",
        "host: 1883",
        "::1:1883",
        "[::1]",
        "[::1]1883",
        "[]:1883",
        "[::1:1883",
        "[zz::1]:1883",
        "[1.2.3.4]:80",
        "ho st:1",
        "host:000001883",
        "[::1%]:1",
        "a/b:1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (config_split_addr(bad[i], host, sizeof host, &port) == THZ_OK)
            fail_msg("'%s' was accepted", bad[i]);
    }
    char tiny[4];
    assert_int_not_equal(config_split_addr("localhost:1", tiny, sizeof tiny, &port), THZ_OK);
}

static void test_help(void **state)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    config_print_help(f);
    fclose(f);
    assert_non_null(strstr(text, "usage: thinghz serve"));
    assert_non_null(strstr(text, "--config FILE"));
    assert_non_null(strstr(text, "--mqtt-listen ADDR"));
    assert_non_null(strstr(text, "--[no-]allow-anonymous"));
    assert_non_null(strstr(text, "(default: 127.0.0.1:1883)"));
    assert_non_null(strstr(text, "(64..268435455, default: 1048576)"));
    assert_non_null(strstr(text, "--store-segment-mb N"));
    free(text);
}

/* The sample loads unchanged, and with every `# name = value` line
 * uncommented it still equals the defaults (so the table's default texts
 * and the sample's quoting are right). */
static void test_sample_roundtrip(void **state)
{
    FILE *f = tmpfile();
    assert_non_null(f);
    config_print_sample(f);
    rewind(f);
    thz_config want, got;
    char err[256];
    config_defaults(&want);
    memset(&got, 0x5a, sizeof got);
    config_defaults(&got);
    assert_int_equal(config_load_stream(&got, f, "sample", err, sizeof err), THZ_OK);
    assert_memory_equal(&got, &want, sizeof got);

    rewind(f);
    char line[512];
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    int settings = 0;
    while (fgets(line, sizeof line, f)) {
        /* A setting line is "# name = value"; help lines have no " = ". */
        if (strncmp(line, "# ", 2) == 0 && strstr(line, " = ") != NULL &&
            strchr(line + 2, ' ') == strstr(line, " = ")) {
            fputs(line + 2, out);
            settings++;
        } else {
            fputs(line, out);
        }
    }
    fclose(out);
    fclose(f);
    /* One setting line per table row: as many as --help has flags, less
     * --config (which is not a setting). */
    char *help = NULL;
    size_t helplen = 0;
    FILE *h = open_memstream(&help, &helplen);
    config_print_help(h);
    fclose(h);
    int flags = 0;
    for (const char *p = help; (p = strstr(p, "\n  --")) != NULL; p++) flags++;
    free(help);
    assert_true(settings >= 22);
    assert_int_equal(settings, flags - 1);
    assert_int_equal(load_stream(&got, text, err, sizeof err), THZ_OK);
    assert_memory_equal(&got, &want, sizeof got);
    assert_non_null(strstr(text, "\npassword-file = \"\"\n"));
    assert_non_null(strstr(text, "\nmqtt-listen = 127.0.0.1:1883\n"));
    free(text);
}

static void test_cors_origins(void **state)
{
    thz_config c;
    config_defaults(&c);
    char err[256];
    assert_string_equal(c.cors_origins, "");
    assert_int_equal(config_set(&c, "cors-origins", "*", err, sizeof err), THZ_OK);
    assert_int_equal(config_set(&c, "cors-origins",
                                "https://app.example.com, http://localhost:3000,http://[::1]:8080",
                                err, sizeof err),
                     THZ_OK);
    assert_int_equal(config_set(&c, "cors-origins", "", err, sizeof err), THZ_OK);
    static const char *const bad[] = {"https://a.example/",
                                      "https://a.example/x",
                                      "a.example",
                                      "*, https://a.example",
                                      "https://",
                                      "https://a:99999x",
                                      "https://a.example;https://b",
                                      "://a"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(config_set(&c, "cors-origins", bad[i], err, sizeof err), THZ_EINVAL);
        assert_non_null(strstr(err, "cors-origins"));
    }
    assert_false(config_is_reloadable("cors-origins"));
}

static void test_reload(void **state)
{
    assert_true(config_is_reloadable("log-level"));
    assert_true(config_is_reloadable("password-file"));
    assert_true(config_is_reloadable("acl-file"));
    assert_true(config_is_reloadable("max-packet-size"));
    assert_true(config_is_reloadable("max-connections"));
    assert_true(config_is_reloadable("sys-interval"));
    assert_false(config_is_reloadable("mqtt-listen"));
    assert_false(config_is_reloadable("http-listen"));
    assert_false(config_is_reloadable("data-dir"));
    assert_false(config_is_reloadable("threads"));
    assert_false(config_is_reloadable("nonexistent"));

    int saved = thz_log_level;
    thz_log_level = -1; /* the warnings about restart-only settings are expected */
    thz_config live, fresh;
    config_defaults(&live);
    config_defaults(&fresh);
    strcpy(fresh.data_dir, "/elsewhere");
    strcpy(fresh.mqtt_listen, "0.0.0.0:1");
    fresh.threads = 3;
    fresh.log_level = THZ_LOG_DEBUG;
    strcpy(fresh.password_file, "/etc/pw");
    strcpy(fresh.acl_file, "/etc/acl");
    fresh.max_packet_size = 999;
    fresh.max_queued_messages = 5;
    fresh.sys_interval = 0;
    fresh.fsync = THZ_FSYNC_EVERYSEC;
    config_apply_reload(&live, &fresh);
    thz_log_level = saved;

    assert_string_equal(live.data_dir, "./data");
    assert_string_equal(live.mqtt_listen, "127.0.0.1:1883");
    assert_int_equal(live.threads, 0);
    assert_int_equal(live.fsync, THZ_FSYNC_ALWAYS);
    assert_int_equal(live.log_level, THZ_LOG_DEBUG);
    assert_string_equal(live.password_file, "/etc/pw");
    assert_string_equal(live.acl_file, "/etc/acl");
    assert_int_equal(live.max_packet_size, 999);
    assert_int_equal(live.max_queued_messages, 5);
    assert_int_equal(live.sys_interval, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),    cmocka_unit_test(test_file_parse),
        cmocka_unit_test(test_file_errors), cmocka_unit_test(test_flags),
        cmocka_unit_test(test_validate),    cmocka_unit_test(test_split_addr),
        cmocka_unit_test(test_help),        cmocka_unit_test(test_sample_roundtrip),
        cmocka_unit_test(test_reload),      cmocka_unit_test(test_cors_origins),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
