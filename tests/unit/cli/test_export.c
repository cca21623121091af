/* test_export.c - unit tests for the pure parts of `thinghz export`: time
 * arguments and the CSV and line-protocol rows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cli/cli_int.h"

static void test_parse_time(void **state)
{
    int64_t ns;
    assert_true(cli_export_parse_time("2026-11-26T10:00:00Z", &ns));
    assert_true(ns == 1795687200ll * 1000000000);
    assert_true(cli_export_parse_time("2026-11-26 10:00:00.25Z", &ns));
    assert_true(ns == 1795687200ll * 1000000000 + 250000000);
    assert_true(cli_export_parse_time("2020-09-13T12:26:40.123456789Z", &ns));
    assert_true(ns == 1600000000123456789ll);
    assert_true(cli_export_parse_time("2026-11-26T12:00:00+02:00", &ns));
    assert_true(ns == 1795687200ll * 1000000000);
    assert_true(cli_export_parse_time("2026-11-26", &ns));
    assert_true(ns == (1795687200ll - 36000) * 1000000000);
    assert_true(cli_export_parse_time("1600000000123", &ns));
    assert_true(ns == 1600000000123000000ll);
    assert_true(cli_export_parse_time("1969-12-31T23:59:59Z", &ns));
    assert_true(ns == -1000000000ll);
    const char *bad[] = {"",
                         "yesterday",
                         "2026-13-01",
                         "2026-11-26T10:00Z",
                         "2026-11-26T10:00:00.Z",
                         "2026-11-26X",
                         "12345678901234567"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(cli_export_parse_time(bad[i], &ns));
}

static char *row(cli_exp_format fmt, const char *dev, const char *metric, cli_exp_kind kind,
                 cJSON *v)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    int rc = cli_export_write(f, fmt, "2026-11-26T10:00:00Z", 1795687200000000000ll, dev, metric,
                              kind, v);
    fclose(f);
    cJSON_Delete(v);
    if (rc != 0) {
        free(text);
        return NULL;
    }
    return text;
}

static void check(char *got, const char *want)
{
    assert_non_null(got);
    assert_string_equal(got, want);
    free(got);
}

static void test_rows(void **state)
{
    check(row(CLI_EXP_CSV, "d1", "temp", CLI_EXP_FLOAT, cJSON_CreateNumber(21.5)),
          "2026-11-26T10:00:00Z,d1,temp,21.5\n");
    check(row(CLI_EXP_CSV, "d1", "temp", CLI_EXP_FLOAT, cJSON_CreateNumber(0.1)),
          "2026-11-26T10:00:00Z,d1,temp,0.1\n");
    check(row(CLI_EXP_CSV, "d,1", "s", CLI_EXP_STRING, cJSON_CreateString("a \"b\"")),
          "2026-11-26T10:00:00Z,\"d,1\",s,\"a \"\"b\"\"\"\n");
    check(row(CLI_EXP_CSV, "d1", "n", CLI_EXP_INT, cJSON_CreateNumber(-3)),
          "2026-11-26T10:00:00Z,d1,n,-3\n");
    check(row(CLI_EXP_LP, "d 1,x=y", "a=b c", CLI_EXP_FLOAT, cJSON_CreateNumber(7)),
          "telemetry,device=d\\ 1\\,x\\=y a\\=b\\ c=7 1795687200000000000\n");
    check(row(CLI_EXP_LP, "d1", "n", CLI_EXP_INT, cJSON_CreateNumber(3)),
          "telemetry,device=d1 n=3i 1795687200000000000\n");
    check(row(CLI_EXP_LP, "d1", "on", CLI_EXP_BOOL, cJSON_CreateFalse()),
          "telemetry,device=d1 on=false 1795687200000000000\n");
    check(row(CLI_EXP_LP, "d1", "s", CLI_EXP_STRING, cJSON_CreateString("x\"y\\z")),
          "telemetry,device=d1 s=\"x\\\"y\\\\z\" 1795687200000000000\n");
    /* a value of the wrong JSON type is refused */
    assert_null(row(CLI_EXP_CSV, "d1", "t", CLI_EXP_FLOAT, cJSON_CreateString("1")));
    assert_null(row(CLI_EXP_LP, "d1", "t", CLI_EXP_BOOL, cJSON_CreateNumber(1)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_time),
        cmocka_unit_test(test_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
