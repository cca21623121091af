/* fuzz_acl.c - libFuzzer target for the ACL and password file parsers: the
 * input is written to a temp file, loaded as both, and queried. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth/auth.h"
#include "core/log.h"

static char path[64];

static void cleanup(void)
{
    if (path[0]) unlink(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (path[0] == '\0') {
        thz_log_level = -1; /* malformed lines are the point; keep stderr quiet */
        snprintf(path, sizeof path, "/tmp/thz_fuzz_acl_%d", (int)getpid());
        atexit(cleanup);
    }
    FILE *f = fopen(path, "w");
    if (f == NULL) return 0;
    fwrite(data, 1, size, f);
    fclose(f);

    thz_config cfg;
    config_defaults(&cfg);
    strcpy(cfg.acl_file, path);
    strcpy(cfg.password_file, path);
    cfg.allow_anonymous = true;
    auth *a = NULL;
    if (auth_open(&cfg, &a) != THZ_OK) {
        /* A bad ACL line fails the load; the password side alone must load. */
        cfg.acl_file[0] = '\0';
        if (auth_open(&cfg, &a) != THZ_OK) abort();
    }
    static const char *const topics[] = {"a", "a/b", "a/b/c", "$SYS/x", "devices/u/x", "", "/"};
    static const char *const filters[] = {"#", "+", "a/#", "a/+/c", "+/+", "$SYS/#", "a//b"};
    static const char *const users[] = {NULL, "u", "alice", "a+b"};
    for (size_t u = 0; u < 4; u++) {
        for (size_t t = 0; t < 7; t++) {
            (void)auth_can_publish(a, NULL, "cid", users[u], topics[t]);
            (void)auth_can_subscribe(a, NULL, "cid", users[u], filters[t]);
        }
    }
    /* The input's own first line as a topic, filter and user name. */
    char line[256];
    size_t n = 0;
    while (n < size && n < sizeof line - 1 && data[n] != '\n' && data[n] != '\0') {
        line[n] = (char)data[n];
        n++;
    }
    line[n] = '\0';
    (void)auth_can_publish(a, NULL, line, line, line);
    (void)auth_can_subscribe(a, NULL, line, line, line);
    /* Unknown users and anonymous never reach PBKDF2, so this stays cheap. */
    (void)auth_connect(a, "cid", NULL, NULL, 0, NULL);
    (void)auth_has_acl(a, NULL);
    auth_close(a);
    return 0;
}
