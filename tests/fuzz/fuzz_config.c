/* fuzz_config.c - libFuzzer target for the config file parser (through
 * config_load_stream on an in-memory stream) and config_split_addr. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    thz_config cfg;
    char err[256];
    config_defaults(&cfg);
    if (size > 0) {
        FILE *f = fmemopen((void *)data, size, "r");
        if (f != NULL) {
            thz_err rc = config_load_stream(&cfg, f, "fuzz", err, sizeof err);
            fclose(f);
            /* The error text must always be a terminated string. */
            if (rc != THZ_OK && memchr(err, '\0', sizeof err) == NULL) abort();
            /* Whatever loaded must validate or fail cleanly. */
            (void)config_validate(&cfg, err, sizeof err);
        }
    }

    /* The same bytes as an address string. */
    char *z = malloc(size + 1);
    if (z == NULL) return 0;
    memcpy(z, data, size);
    z[size] = '\0';
    char host[THZ_ADDR_MAX];
    int port = -1;
    if (config_split_addr(z, host, sizeof host, &port) == THZ_OK) {
        if (port < 0 || port > 65535 || strlen(host) == 0 || strlen(host) >= sizeof host) abort();
    }
    /* And as a value for one setting chosen by the first byte. */
    static const char *const names[] = {"mqtt-listen",     "threads",   "max-session-expiry",
                                        "allow-anonymous", "log-level", "data-dir"};
    if (size > 0) {
        thz_config c2;
        config_defaults(&c2);
        (void)config_set(&c2, names[data[0] % 6], z + 1, err, sizeof err);
    }
    free(z);
    return 0;
}
