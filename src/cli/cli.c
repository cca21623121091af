/* cli.c - `thinghz login|logout|whoami|user|device|token|group|fleet|backup|
 * restore|export`: global flags, the stored token, secrets from the terminal, and
 * the dispatch to one function per command group. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <curl/curl.h>

#include "cli/cli.h"
#include "cli/cli_int.h"
#include "core/log.h"

#define CLI_DEFAULT_URL "http://127.0.0.1:8080"

static const struct {
    const char *zName;
    int (*fn)(cli_ctx *, int, char **);
} cli_cmds[] = {
    {"login", cli_cmd_login},     {"logout", cli_cmd_logout}, {"whoami", cli_cmd_whoami},
    {"user", cli_cmd_user},       {"device", cli_cmd_device}, {"token", cli_cmd_token},
    {"group", cli_cmd_group},     {"fleet", cli_cmd_fleet},   {"backup", cli_cmd_backup},
    {"restore", cli_cmd_restore}, {"export", cli_cmd_export},
};

bool cli_handles(const char *name)
{
    for (size_t i = 0; i < sizeof cli_cmds / sizeof cli_cmds[0]; i++)
        if (strcmp(name, cli_cmds[i].zName) == 0) return true;
    return false;
}

void cli_usage(FILE *out)
{
    fprintf(out,
            "administration (a client of the REST API; docs/CLI.md):\n"
            "  thinghz login [--email E] [--password P]   get a token (~/.config/thinghz/token)\n"
            "  thinghz logout | whoami\n"
            "  thinghz user add EMAIL [--role R] [--password P] | list | rm ID|EMAIL\n"
            "               | set-role ID|EMAIL ROLE\n"
            "  thinghz device add ID [--name N] [--type T] [--tag k=v]... [--group G]...\n"
            "  thinghz device list [--tag k=v] [--group G] [--online|--offline] [--limit N]\n"
            "  thinghz device show|rotate|disable|enable|rm ID\n"
            "  thinghz token create NAME [--expires S] [--role R] | list | revoke ID\n"
            "  thinghz group add ID [--name N] [--query k=v]... | list | show ID | rm ID\n"
            "               | add-device G DEV | rm-device G DEV\n"
            "  thinghz fleet                              device counts and message rates\n"
            "  thinghz backup DIR [--data-dir D]          registry.db and tsdb/ into DIR\n"
            "  thinghz restore DIR --data-dir D           into a stopped daemon's data dir\n"
            "  thinghz export [--device ID]... [--metric M]... [--from T] [--to T]\n"
            "                 [--format csv|lp] [--output FILE]   telemetry out of the daemon\n"
            "  global flags: --url URL (THINGHZ_URL, default " CLI_DEFAULT_URL "), --json,\n"
            "                --data-dir D (offline mode when no daemon answers at --url)\n\n");
}

/* ~/.config/thinghz/token; false if HOME is unset. */
static bool token_path(char *zBuf, size_t nBuf, bool mkdirs)
{
    const char *home = getenv("HOME");
    if (!home || !*home) return false;
    if (mkdirs) {
        snprintf(zBuf, nBuf, "%s/.config", home);
        mkdir(zBuf, 0700);
        snprintf(zBuf, nBuf, "%s/.config/thinghz", home);
        mkdir(zBuf, 0700);
    }
    int n = snprintf(zBuf, nBuf, "%s/.config/thinghz/token", home);
    return n > 0 && (size_t)n < nBuf;
}

static void token_load(cli_ctx *c)
{
    const char *env = getenv("THINGHZ_TOKEN");
    if (env && *env) {
        snprintf(c->zToken, sizeof c->zToken, "%s", env);
        return;
    }
    char zPath[1024];
    if (!token_path(zPath, sizeof zPath, false)) return;
    FILE *f = fopen(zPath, "r");
    if (!f) return;
    if (fgets(c->zToken, sizeof c->zToken, f)) c->zToken[strcspn(c->zToken, "\r\n")] = 0;
    fclose(f);
}

/* Writes the token with mode 0600 from the start (never readable by others,
 * not even for a moment), through a temporary file and rename. */
static int token_store(const char *zToken)
{
    char zPath[1024], zTmp[1100];
    if (!token_path(zPath, sizeof zPath, true)) {
        fprintf(stderr, "thinghz: HOME is not set; cannot store the token (use THINGHZ_TOKEN)\n");
        return CLI_FAIL;
    }
    snprintf(zTmp, sizeof zTmp, "%s.tmp", zPath);
    int fd = open(zTmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "thinghz: %s: %s\n", zTmp, strerror(errno));
        return CLI_FAIL;
    }
    size_t n = strlen(zToken);
    bool ok = fchmod(fd, 0600) == 0 && write(fd, zToken, n) == (ssize_t)n &&
              write(fd, "\n", 1) == 1 && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    if (!ok || rename(zTmp, zPath) != 0) {
        fprintf(stderr, "thinghz: %s: %s\n", zPath, strerror(errno));
        unlink(zTmp);
        return CLI_FAIL;
    }
    return CLI_OK;
}

char *cli_read_secret(const char *zGiven, const char *zEnv, const char *zPrompt)
{
    if (zGiven) return strdup(zGiven);
    const char *env = zEnv ? getenv(zEnv) : NULL;
    if (env) return strdup(env);
    int fd = open("/dev/tty", O_RDWR | O_CLOEXEC);
    if (fd < 0 || !isatty(fd)) {
        if (fd >= 0) close(fd);
        fprintf(stderr, "thinghz: no terminal to ask for the %s: give it with a flag%s%s\n",
                zPrompt, zEnv ? " or " : "", zEnv ? zEnv : "");
        return NULL;
    }
    struct termios old, quiet;
    bool restore = tcgetattr(fd, &old) == 0;
    if (restore) {
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        quiet.c_lflag |= ECHONL;
        tcsetattr(fd, TCSAFLUSH, &quiet);
    }
    dprintf(fd, "%s: ", zPrompt);
    char zBuf[1024];
    size_t n = 0;
    char ch;
    while (n + 1 < sizeof zBuf && read(fd, &ch, 1) == 1 && ch != '\n') zBuf[n++] = ch;
    zBuf[n] = 0;
    if (restore) tcsetattr(fd, TCSAFLUSH, &old);
    close(fd);
    return strdup(zBuf);
}

static char *read_line_tty(const char *zPrompt)
{
    if (!isatty(STDIN_FILENO)) return NULL;
    fprintf(stderr, "%s: ", zPrompt);
    char zBuf[512];
    if (!fgets(zBuf, sizeof zBuf, stdin)) return NULL;
    zBuf[strcspn(zBuf, "\r\n")] = 0;
    return strdup(zBuf);
}

int cli_cmd_login(cli_ctx *c, int argc, char **argv)
{
    const char *zEmail = NULL, *zPass = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--email") == 0 && i + 1 < argc)
            zEmail = argv[++i];
        else if (strcmp(argv[i], "--password") == 0 && i + 1 < argc)
            zPass = argv[++i];
        else
            return cli_usage_error("login: unexpected argument '%s'", argv[i]);
    }
    char *zEmailOwned = NULL;
    if (!zEmail) zEmail = getenv("THINGHZ_EMAIL");
    if (!zEmail) zEmail = zEmailOwned = read_line_tty("email");
    if (!zEmail || !*zEmail) {
        free(zEmailOwned);
        return cli_usage_error("login: give --email (or THINGHZ_EMAIL)");
    }
    char *zPw = cli_read_secret(zPass, "THINGHZ_PASSWORD", "password");
    if (!zPw) {
        free(zEmailOwned);
        return CLI_USAGE;
    }
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "email", zEmail);
    cJSON_AddStringToObject(body, "password", zPw);
    memset(zPw, 0, strlen(zPw));
    free(zPw);
    c->zToken[0] = 0; /* a stale token must not ride along */
    cli_resp r;
    int rc = cli_api(c, "POST", "/api/v1/auth/login", body, &r);
    cJSON_Delete(body);
    if (rc == CLI_OK) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(r.json, "token");
        if (!cJSON_IsString(t)) {
            fprintf(stderr, "thinghz: the login answer has no token\n");
            rc = CLI_FAIL;
        } else if (getenv("THINGHZ_TOKEN") && *getenv("THINGHZ_TOKEN")) {
            /* The environment wins over the file, so storing it would mislead. */
            if (c->json)
                cli_print_raw(&r);
            else
                printf("%s\n", t->valuestring);
            fprintf(stderr, "thinghz: THINGHZ_TOKEN is set, so the token was not stored; "
                            "export THINGHZ_TOKEN with the one printed above\n");
        } else if ((rc = token_store(t->valuestring)) == CLI_OK) {
            if (c->json) {
                cli_print_raw(&r);
            } else {
                const cJSON *exp = cJSON_GetObjectItemCaseSensitive(r.json, "expires_at");
                char zBuf[64];
                printf("logged in as %s at %s (token stored in ~/.config/thinghz/token, "
                       "expires %s)\n",
                       zEmail, c->zUrl, cli_value(exp, zBuf, sizeof zBuf));
            }
        }
    }
    free(zEmailOwned);
    cli_resp_free(&r);
    return rc;
}

int cli_cmd_logout(cli_ctx *c, int argc, char **argv)
{
    if (argc != 1) return cli_usage_error("usage: thinghz logout");
    cli_resp r;
    int rc = cli_api(c, "POST", "/api/v1/auth/logout", NULL, &r);
    cli_resp_free(&r);
    char zPath[1024];
    if (token_path(zPath, sizeof zPath, false) &&
        !(getenv("THINGHZ_TOKEN") && *getenv("THINGHZ_TOKEN")))
        unlink(zPath);
    if (rc == CLI_OK && !c->json) printf("logged out\n");
    return rc;
}

int cli_cmd_whoami(cli_ctx *c, int argc, char **argv)
{
    if (argc != 1) return cli_usage_error("usage: thinghz whoami");
    cli_resp r;
    int rc = cli_api(c, "GET", "/api/v1/auth/whoami", NULL, &r);
    if (rc == CLI_OK) {
        if (c->json) {
            cli_print_raw(&r);
        } else {
            const cJSON *u = cJSON_GetObjectItemCaseSensitive(r.json, "user");
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(r.json, "tenant");
            char a[64], b[64], d[64];
            printf("%s (role %s) in tenant %s\n",
                   cli_value(cJSON_GetObjectItemCaseSensitive(u, "email"), a, sizeof a),
                   cli_value(cJSON_GetObjectItemCaseSensitive(r.json, "role"), b, sizeof b),
                   cli_value(cJSON_GetObjectItemCaseSensitive(t, "name"), d, sizeof d));
        }
    }
    cli_resp_free(&r);
    return rc;
}

int cli_offline_open(cli_ctx *c)
{
    if (c->reg) return CLI_OK;
    char err[REG_ERR_LEN] = "";
    /* The registry logs through the daemon's logger; keep the CLI quiet. */
    if (thz_log_level > THZ_LOG_WARN) thz_log_level = THZ_LOG_WARN;
    thz_err rc = reg_open(c->zDataDir, &c->reg, err);
    if (rc != THZ_OK) {
        c->reg = NULL;
        fprintf(stderr, "thinghz: cannot open the registry in %s: %s\n", c->zDataDir,
                err[0] ? err : thz_strerror(rc));
        return CLI_FAIL;
    }
    return CLI_OK;
}

int cli_reg_fail(const char *zWhat, thz_err rc, const char *zErr)
{
    fprintf(stderr, "thinghz: %s: %s\n", zWhat, zErr && zErr[0] ? zErr : thz_strerror(rc));
    return CLI_FAIL;
}

int cli_main(int argc, char **argv)
{
    static cli_ctx ctx;
    cli_ctx *c = &ctx;
    const char *zUrl = getenv("THINGHZ_URL");
    /* Global flags may stand anywhere after the command; they are taken out
     * and the rest is handed to the command group. */
    char **args = calloc((size_t)argc + 1, sizeof *args);
    int n = 0;
    if (!args) return CLI_FAIL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--json") == 0) {
            c->json = true;
        } else if (strcmp(a, "--url") == 0 || strcmp(a, "--data-dir") == 0) {
            if (i + 1 >= argc) {
                free(args);
                return cli_usage_error("%s needs a value", a);
            }
            if (a[2] == 'u')
                zUrl = argv[++i];
            else
                c->zDataDir = argv[++i];
        } else if (strncmp(a, "--url=", 6) == 0) {
            zUrl = a + 6;
        } else if (strncmp(a, "--data-dir=", 11) == 0) {
            c->zDataDir = a + 11;
        } else {
            args[n++] = argv[i];
        }
    }
    if (!zUrl || !*zUrl) zUrl = CLI_DEFAULT_URL;
    snprintf(c->zUrl, sizeof c->zUrl, "%s", zUrl);
    for (size_t l = strlen(c->zUrl); l > 0 && c->zUrl[l - 1] == '/'; l--) c->zUrl[l - 1] = 0;
    token_load(c);
    int rc = CLI_USAGE;
    for (size_t i = 0; i < sizeof cli_cmds / sizeof cli_cmds[0]; i++)
        if (strcmp(args[0], cli_cmds[i].zName) == 0) {
            rc = cli_cmds[i].fn(c, n, args);
            break;
        }
    if (c->reg) reg_close(c->reg);
    if (c->curl) {
        curl_easy_cleanup(c->curl);
        curl_global_cleanup();
    }
    free(args);
    fflush(stdout);
    return rc;
}
