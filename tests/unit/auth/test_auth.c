/* test_auth.c - unit tests for auth: password hashing and CONNECT decisions,
 * the verification cache, ACL rules and coverage, and reload. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "auth/auth.h"
#include "core/log.h"

/* Tests use few PBKDF2 iterations so they stay fast under sanitizers. */
#define FAST_ITER 1000

typedef struct fixture {
    char pw[64], acl[64];
    thz_config cfg;
    auth *a;
} fixture;

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static char *make_path(char *buf, size_t n, const char *what)
{
    snprintf(buf, n, "/tmp/thz_test_auth_%s_XXXXXX", what);
    int fd = mkstemp(buf);
    assert_true(fd >= 0);
    close(fd);
    return buf;
}

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    make_path(fx->pw, sizeof fx->pw, "pw");
    make_path(fx->acl, sizeof fx->acl, "acl");
    config_defaults(&fx->cfg);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    auth_close(fx->a);
    unlink(fx->pw);
    unlink(fx->acl);
    free(fx);
    return 0;
}

static char *hash_line(const char *user, const char *pass, char *out, size_t n)
{
    assert_int_equal(auth_hash_password_iter(user, pass, FAST_ITER, out, n), THZ_OK);
    return out;
}

/* Opens fx->a with the given password file and ACL texts (NULL = unset). */
static thz_err open_with(fixture *fx, const char *pw, const char *acl, bool anon)
{
    fx->cfg.allow_anonymous = anon;
    fx->cfg.password_file[0] = fx->cfg.acl_file[0] = '\0';
    if (pw) {
        write_file(fx->pw, pw);
        strcpy(fx->cfg.password_file, fx->pw);
    }
    if (acl) {
        write_file(fx->acl, acl);
        strcpy(fx->cfg.acl_file, fx->acl);
    }
    return auth_open(&fx->cfg, &fx->a);
}

static thz_err conn(auth *a, const char *user, const char *pass)
{
    return auth_connect(a, "cid", user, (const uint8_t *)pass, pass ? strlen(pass) : 0, NULL);
}

static void test_hash_format(void **state)
{
    char a[256], b[256];
    assert_int_equal(auth_hash_password("alice", "secret", a, sizeof a), THZ_OK);
    assert_int_equal(strncmp(a, "alice:$pbkdf2-sha256$100000$", 28), 0);
    const char *salt = a + 28, *d = strchr(salt, '$');
    assert_non_null(d);
    assert_int_equal(d - salt, 24);      /* 16 bytes of salt */
    assert_int_equal(strlen(d + 1), 44); /* 32 bytes of hash */
    assert_int_equal(auth_hash_password("alice", "secret", b, sizeof b), THZ_OK);
    assert_string_not_equal(a, b); /* a fresh salt every time */

    assert_int_equal(auth_hash_password_iter("", "x", FAST_ITER, a, sizeof a), THZ_EINVAL);
    assert_int_equal(auth_hash_password_iter("a:b", "x", FAST_ITER, a, sizeof a), THZ_EINVAL);
    assert_int_equal(auth_hash_password_iter("a\nb", "x", FAST_ITER, a, sizeof a), THZ_EINVAL);
    assert_int_equal(auth_hash_password_iter("#a", "x", FAST_ITER, a, sizeof a), THZ_EINVAL);
    assert_int_equal(auth_hash_password_iter("a", "x", 0, a, sizeof a), THZ_EINVAL);
    assert_int_equal(auth_hash_password_iter("a", "x", AUTH_MAX_ITERATIONS + 1, a, sizeof a),
                     THZ_EINVAL);
    assert_int_equal(auth_hash_password_iter("a", "x", FAST_ITER, a, 20), THZ_ETOOBIG);
}

static void test_connect_passwords(void **state)
{
    fixture *fx = *state;
    char l1[256], l2[256], text[1024];
    snprintf(text, sizeof text, "# users\n\n%s\n  %s  \n", hash_line("alice", "secret", l1, 256),
             hash_line("bob", "", l2, 256));
    assert_int_equal(open_with(fx, text, NULL, false), THZ_OK);
    assert_int_equal(conn(fx->a, "alice", "secret"), THZ_OK);
    assert_int_equal(conn(fx->a, "alice", "secret"), THZ_OK); /* now from the cache */
    assert_int_equal(conn(fx->a, "alice", "Secret"), THZ_EBADAUTH);
    assert_int_equal(conn(fx->a, "alice", "secret "), THZ_EBADAUTH);
    assert_int_equal(conn(fx->a, "alice", ""), THZ_EBADAUTH);
    assert_int_equal(conn(fx->a, "alice", NULL), THZ_EBADAUTH);
    assert_int_equal(auth_connect(fx->a, "c", "alice", (const uint8_t *)"secret", 5, NULL),
                     THZ_EBADAUTH);
    /* The length, not a NUL, ends a password. (A trailing NUL byte itself
     * is invisible to PBKDF2-HMAC, which zero-pads short keys; stored
     * passwords are C strings, so only the holder of the password could
     * send one.) */
    assert_int_equal(auth_connect(fx->a, "c", "alice", (const uint8_t *)"secret\0x", 8, NULL),
                     THZ_EBADAUTH);
    assert_int_equal(conn(fx->a, "bob", ""), THZ_OK);
    assert_int_equal(conn(fx->a, "carol", "secret"), THZ_EBADAUTH);
    assert_int_equal(conn(fx->a, NULL, NULL), THZ_EBADAUTH);
    /* The cached digest is per user: alice's password does not open bob. */
    assert_int_equal(conn(fx->a, "bob", "secret"), THZ_EBADAUTH);
}

static void test_anonymous(void **state)
{
    fixture *fx = *state;
    /* No password file: a user name is a label, allowed iff anonymous is. */
    assert_int_equal(open_with(fx, NULL, NULL, false), THZ_OK);
    assert_int_equal(conn(fx->a, NULL, NULL), THZ_EBADAUTH);
    assert_int_equal(conn(fx->a, "anyone", "x"), THZ_EBADAUTH);
    auth_close(fx->a);
    assert_int_equal(open_with(fx, NULL, NULL, true), THZ_OK);
    assert_int_equal(conn(fx->a, NULL, NULL), THZ_OK);
    assert_int_equal(conn(fx->a, "anyone", "x"), THZ_OK);
    auth_close(fx->a);
    /* With a password file, anonymous covers only clients without a name. */
    char l[256];
    assert_int_equal(open_with(fx, hash_line("u", "p", l, sizeof l), NULL, true), THZ_OK);
    assert_int_equal(conn(fx->a, NULL, NULL), THZ_OK);
    assert_int_equal(conn(fx->a, "anyone", "x"), THZ_EBADAUTH);
    assert_int_equal(conn(fx->a, "u", "p"), THZ_OK);
}

static void test_malformed_password_lines(void **state)
{
    fixture *fx = *state;
    char good[256], text[4096];
    hash_line("good", "pw", good, sizeof good);
    const char *salt = strchr(good, '$') + strlen("$pbkdf2-sha256$1000$");
    char long_user[5000];
    memset(long_user, 'x', sizeof long_user - 1);
    long_user[sizeof long_user - 1] = '\0';
    snprintf(text, sizeof text,
             "no colon here\n"
             ":$pbkdf2-sha256$1000$%s\n"                              /* empty user */
             "u1:$sha512$1000$%s\n"                                   /* unknown scheme */
             "u2:$pbkdf2-sha256$abc$%s\n"                             /* bad iterations */
             "u3:$pbkdf2-sha256$0$%s\n"                               /* zero iterations */
             "u4:$pbkdf2-sha256$99999999999$%s\n"                     /* too many iterations */
             "u5:$pbkdf2-sha256$1000$!!!!$AAAA\n"                     /* bad salt */
             "u6:$pbkdf2-sha256$1000$AAAAAAAAAAAAAAAAAAAAAA==$AAAA\n" /* short hash */
             "u7:$pbkdf2-sha256$1000\n"                               /* truncated */
             "%s\n",
             salt, salt, salt, salt, salt, good);
    assert_true(strlen(text) < sizeof text - 1);
    /* A line too long to read is skipped as a whole, too. */
    FILE *f = fopen(fx->pw, "w");
    fputs(text, f);
    fprintf(f, "%s:x\n", long_user);
    fclose(f);
    strcpy(fx->cfg.password_file, fx->pw);
    assert_int_equal(auth_open(&fx->cfg, &fx->a), THZ_OK);
    assert_int_equal(conn(fx->a, "good", "pw"), THZ_OK);
    for (int i = 1; i <= 7; i++) {
        char u[16];
        snprintf(u, sizeof u, "u%d", i);
        assert_int_equal(conn(fx->a, u, "pw"), THZ_EBADAUTH);
    }
    /* A missing password file is an error, not "no users". */
    auth_close(fx->a);
    fx->a = NULL;
    strcpy(fx->cfg.password_file, "/nonexistent/pw");
    assert_int_equal(auth_open(&fx->cfg, &fx->a), THZ_EIO);
    assert_null(fx->a);
}

/* A user listed twice: the first line counts, whatever qsort does. */
static void test_duplicate_users(void **state)
{
    fixture *fx = *state;
    char text[2048], l[256], l2[256];
    size_t n = 0;
    n += (size_t)snprintf(text + n, sizeof text - n, "%s\n", hash_line("dup", "first", l, 256));
    for (int i = 0; i < 5; i++) {
        char other[16];
        snprintf(other, sizeof other, "o%d", i);
        hash_line("dup", "later", l, sizeof l);
        hash_line(other, "x", l2, sizeof l2);
        n += (size_t)snprintf(text + n, sizeof text - n, "%s\n%s\n", l, l2);
    }
    assert_int_equal(open_with(fx, text, NULL, false), THZ_OK);
    assert_int_equal(conn(fx->a, "dup", "first"), THZ_OK);
    assert_int_equal(conn(fx->a, "dup", "later"), THZ_EBADAUTH);
    assert_int_equal(conn(fx->a, "o4", "x"), THZ_OK);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A successful verification is cached: repeats cost far less than PBKDF2;
 * failures are not cached and a reload forgets everything. */
static void test_cache(void **state)
{
    fixture *fx = *state;
    char l[256];
    assert_int_equal(auth_hash_password_iter("slow", "pw", 400000, l, sizeof l), THZ_OK);
    assert_int_equal(open_with(fx, l, NULL, false), THZ_OK);
    double t0 = now_s();
    assert_int_equal(conn(fx->a, "slow", "pw"), THZ_OK);
    double first = now_s() - t0;
    t0 = now_s();
    for (int i = 0; i < 20; i++) assert_int_equal(conn(fx->a, "slow", "pw"), THZ_OK);
    double twenty = now_s() - t0;
    assert_true(twenty < first);
    assert_int_equal(conn(fx->a, "slow", "wrong"), THZ_EBADAUTH);

    /* The password changes in the file; after reload the old one fails even
     * though it was cached. */
    write_file(fx->pw, hash_line("slow", "new", l, sizeof l));
    assert_int_equal(auth_reload(fx->a, &fx->cfg), THZ_OK);
    assert_int_equal(conn(fx->a, "slow", "pw"), THZ_EBADAUTH);
    assert_int_equal(conn(fx->a, "slow", "new"), THZ_OK);
}

static void test_no_acl(void **state)
{
    fixture *fx = *state;
    assert_int_equal(open_with(fx, NULL, NULL, true), THZ_OK);
    assert_false(auth_has_acl(fx->a, NULL));
    assert_true(auth_can_publish(fx->a, NULL, "c", NULL, "any/topic"));
    assert_true(auth_can_subscribe(fx->a, NULL, "c", "u", "#"));
    assert_true(auth_can_subscribe(fx->a, NULL, "c", "u", "$SYS/#"));
}

/* Empty user tables: an ACL of patterns only and a password file of
 * comments only (regression: bsearch was handed a NULL array). */
static void test_empty_tables(void **state)
{
    fixture *fx = *state;
    assert_int_equal(open_with(fx, "# nobody yet\n", "pattern devices/%u/#\n", true), THZ_OK);
    assert_int_equal(conn(fx->a, "u", "p"), THZ_EBADAUTH);
    assert_int_equal(conn(fx->a, NULL, NULL), THZ_OK);
    assert_true(auth_can_publish(fx->a, NULL, "c", "u", "devices/u/1"));
    assert_false(auth_can_publish(fx->a, NULL, "c", "u", "devices/v/1"));
    assert_false(auth_can_publish(fx->a, NULL, "c", NULL, "devices/u/1"));
}

static void test_acl_rules(void **state)
{
    fixture *fx = *state;
    const char *acl = "# anonymous clients\n"
                      "topic read public/#\n"
                      "topic write  anon/in\n"
                      "\n"
                      "user alice\n"
                      "topic home/#\n"
                      "topic deny home/secret\n"
                      "topic read sensors/+/temp\n"
                      "  topic   write   cmd/alice  \n"
                      "\n"
                      "user bob\n"
                      "topic readwrite bob/#\n"
                      "topic read $SYS/#\n"
                      "\n"
                      "pattern devices/%u/#\n"
                      "pattern read clients/%c/status\n"
                      "pattern write all/%u/%c\n";
    assert_int_equal(open_with(fx, NULL, acl, true), THZ_OK);
    auth *a = fx->a;
    assert_true(auth_has_acl(a, NULL));

    /* Anonymous: only the lines before the first user, plus patterns
     * without %u. */
    assert_true(auth_can_subscribe(a, NULL, "c1", NULL, "public/news"));
    assert_true(auth_can_subscribe(a, NULL, "c1", NULL, "public/#"));
    assert_false(auth_can_publish(a, NULL, "c1", NULL, "public/news"));
    assert_true(auth_can_publish(a, NULL, "c1", NULL, "anon/in"));
    assert_false(auth_can_subscribe(a, NULL, "c1", NULL, "anon/in"));
    assert_false(auth_can_publish(a, NULL, "c1", NULL, "home/x"));
    assert_true(auth_can_subscribe(a, NULL, "c1", NULL, "clients/c1/status"));
    assert_false(auth_can_subscribe(a, NULL, "c1", NULL, "devices/c1/x"));

    /* alice: her section (readwrite by default), deny wins. */
    assert_true(auth_can_publish(a, NULL, "c", "alice", "home/kitchen"));
    assert_true(auth_can_subscribe(a, NULL, "c", "alice", "home/kitchen/+"));
    assert_true(auth_can_publish(a, NULL, "c", "alice", "home"));
    assert_false(auth_can_publish(a, NULL, "c", "alice", "home/secret"));
    assert_true(auth_can_publish(a, NULL, "c", "alice", "home/secret/sub"));
    assert_false(auth_can_subscribe(a, NULL, "c", "alice", "home/secret"));
    /* A subscription that would receive the denied topic is refused too. */
    assert_false(auth_can_subscribe(a, NULL, "c", "alice", "home/#"));
    assert_false(auth_can_subscribe(a, NULL, "c", "alice", "home/+"));
    assert_true(auth_can_subscribe(a, NULL, "c", "alice", "home/+/x"));
    assert_true(auth_can_subscribe(a, NULL, "c", "alice", "sensors/1/temp"));
    assert_false(auth_can_publish(a, NULL, "c", "alice", "sensors/1/temp"));
    assert_true(auth_can_publish(a, NULL, "c", "alice", "cmd/alice"));
    assert_false(auth_can_subscribe(a, NULL, "c", "alice", "cmd/alice"));
    assert_false(auth_can_subscribe(a, NULL, "c", "alice", "public/news")); /* anon-only line */
    assert_false(auth_can_publish(a, NULL, "c", "alice", "bob/x"));

    /* Patterns: %u and %c. */
    assert_true(auth_can_publish(a, NULL, "c", "alice", "devices/alice/t"));
    assert_true(auth_can_subscribe(a, NULL, "c", "alice", "devices/alice/#"));
    assert_false(auth_can_publish(a, NULL, "c", "alice", "devices/bob/t"));
    assert_true(auth_can_subscribe(a, NULL, "dev7", "alice", "clients/dev7/status"));
    assert_false(auth_can_subscribe(a, NULL, "dev7", "alice", "clients/dev8/status"));
    assert_false(auth_can_publish(a, NULL, "dev7", "alice", "clients/dev7/status"));
    assert_true(auth_can_publish(a, NULL, "dev7", "alice", "all/alice/dev7"));
    assert_false(auth_can_publish(a, NULL, "dev7", "alice", "all/alice/dev8"));
    /* A user missing from the file still gets the patterns. */
    assert_true(auth_can_publish(a, NULL, "c", "zed", "devices/zed/x"));
    assert_false(auth_can_publish(a, NULL, "c", "zed", "home/x"));
    /* Names with / + # never substitute: they could reach other clients. */
    assert_false(auth_can_subscribe(a, NULL, "#", "alice", "clients/#/status"));
    assert_false(auth_can_subscribe(a, NULL, "+", "alice", "clients/+/status"));
    assert_false(auth_can_subscribe(a, NULL, "x/y", "alice", "clients/x/y/status"));
    assert_false(auth_can_publish(a, NULL, "c", "a/b", "devices/a/b/x"));
    assert_false(auth_can_publish(a, NULL, "", "alice", "all/alice/"));
    assert_false(auth_can_subscribe(a, NULL, NULL, "alice", "clients//status"));

    /* bob: readwrite keyword, and $SYS only through an explicit $ rule. */
    assert_true(auth_can_subscribe(a, NULL, "c", "bob", "bob/#"));
    assert_true(auth_can_publish(a, NULL, "c", "bob", "bob/x"));
    assert_true(auth_can_subscribe(a, NULL, "c", "bob", "$SYS/broker/uptime"));
    assert_false(auth_can_publish(a, NULL, "c", "bob", "$SYS/broker/uptime"));
}

/* Subscription coverage and the $ rule, with one ACL entry per user. */
static void test_acl_coverage(void **state)
{
    fixture *fx = *state;
    const char *acl = "user plus\ntopic read a/+/c\n"
                      "user hash\ntopic read a/#\n"
                      "user all\ntopic read #\n"
                      "user lead\ntopic read +/x\n"
                      "user mixed\ntopic read a/+/#\n"
                      "user denyplus\ntopic read #\ntopic deny x/+/z\n";
    assert_int_equal(open_with(fx, NULL, acl, false), THZ_OK);
    auth *a = fx->a;
    static const struct {
        const char *user, *filter;
        bool ok;
    } cases[] = {
        {"plus", "a/b/c", true},
        {"plus", "a/+/c", true},
        {"plus", "a/b/d", false},
        {"plus", "a/#", false},
        {"plus", "a/+/+", false},
        {"plus", "a/b/c/d", false},
        {"plus", "a/b", false},
        {"plus", "+/b/c", false},
        {"plus", "a//c", true},
        {"hash", "a", true},
        {"hash", "a/#", true},
        {"hash", "a/+/x", true},
        {"hash", "a/b/c/d/e", true},
        {"hash", "#", false},
        {"hash", "+/b", false},
        {"hash", "b/a", false},
        {"all", "#", true},
        {"all", "+/+/#", true},
        {"all", "anything/at/all", true},
        {"all", "$SYS/x", false},
        {"all", "$SYS/#", false},
        {"lead", "y/x", true},
        {"lead", "+/x", true},
        {"lead", "$SYS/x", false},
        {"lead", "y/x/z", false},
        {"mixed", "a/b", true},
        {"mixed", "a/b/c/d", true},
        {"mixed", "a/+/#", true},
        {"mixed", "a", false},
        {"mixed", "a/#", false},
        {"denyplus", "x/y/w", true},
        {"denyplus", "x/y/z", false},
        {"denyplus", "x/#", false},
        {"denyplus", "+/+/+", false},
        {"denyplus", "x/+/w", true},
        {"denyplus", "x/y", true},
        {"denyplus", "x/y/z/w", true},
        {"nobody", "a/b/c", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bool got = auth_can_subscribe(a, NULL, "c", cases[i].user, cases[i].filter);
        if (got != cases[i].ok)
            fail_msg("%s subscribing %s: got %d", cases[i].user, cases[i].filter, got);
    }
    assert_true(auth_can_publish(a, NULL, "c", "denyplus", "x/y/w") == false); /* read only */
}

static void test_acl_malformed(void **state)
{
    fixture *fx = *state;
    static const char *const bad[] = {
        "topic\n",   "topic deny +x\n",     "topic a/#/b\n",     "topic a+\n",      "user\n",
        "users x\n", "pattern write #/a\n", "topic read a/b#\n", "subscribe a/b\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (open_with(fx, NULL, bad[i], true) == THZ_OK) fail_msg("accepted: %s", bad[i]);
        assert_null(fx->a);
    }
    /* The keyword alone is taken as the topic, as mosquitto does. */
    assert_int_equal(open_with(fx, NULL, "topic read\n", true), THZ_OK);
    assert_true(auth_can_publish(fx->a, NULL, "c", NULL, "read"));
}

static void test_reload(void **state)
{
    fixture *fx = *state;
    char l[256];
    assert_int_equal(open_with(fx, hash_line("u", "p", l, sizeof l), "user u\ntopic a/#\n", false),
                     THZ_OK);
    auth *a = fx->a;
    assert_true(auth_can_publish(a, NULL, "c", "u", "a/1"));
    assert_false(auth_can_publish(a, NULL, "c", "u", "b/1"));

    /* New rules, new users, anonymous switched on. */
    char text[600];
    char l2[256];
    snprintf(text, sizeof text, "%s\n%s\n", hash_line("u", "p", l, sizeof l),
             hash_line("v", "q", l2, sizeof l2));
    write_file(fx->pw, text);
    write_file(fx->acl, "user u\ntopic b/#\n");
    fx->cfg.allow_anonymous = true;
    assert_int_equal(auth_reload(a, &fx->cfg), THZ_OK);
    assert_false(auth_can_publish(a, NULL, "c", "u", "a/1"));
    assert_true(auth_can_publish(a, NULL, "c", "u", "b/1"));
    assert_int_equal(conn(a, "v", "q"), THZ_OK);
    assert_int_equal(conn(a, NULL, NULL), THZ_OK);

    /* A bad ACL line fails the reload and the rules in force stay. */
    write_file(fx->acl, "user u\ntopic c/#\nbogus line\n");
    fx->cfg.allow_anonymous = false;
    assert_int_equal(auth_reload(a, &fx->cfg), THZ_EINVAL);
    assert_true(auth_can_publish(a, NULL, "c", "u", "b/1"));
    assert_false(auth_can_publish(a, NULL, "c", "u", "c/1"));
    assert_int_equal(conn(a, NULL, NULL), THZ_OK);
    assert_int_equal(conn(a, "v", "q"), THZ_OK);

    /* So does a missing file. */
    strcpy(fx->cfg.acl_file, "/nonexistent/acl");
    assert_int_equal(auth_reload(a, &fx->cfg), THZ_EIO);
    assert_true(auth_has_acl(a, NULL));
    assert_true(auth_can_publish(a, NULL, "c", "u", "b/1"));

    /* Dropping the ACL file allows everything again. */
    fx->cfg.acl_file[0] = '\0';
    assert_int_equal(auth_reload(a, &fx->cfg), THZ_OK);
    assert_false(auth_has_acl(a, NULL));
    assert_true(auth_can_publish(a, NULL, "c", "u", "z"));
    assert_int_equal(conn(a, NULL, NULL), THZ_EBADAUTH);
}

typedef struct race {
    auth *a;
    atomic_int stop;
    atomic_int errors;
} race;

static void *race_reader(void *arg)
{
    race *r = arg;
    while (!r->stop) {
        /* Both rule sets allow u on x/#; p verifies under both. */
        if (!auth_can_publish(r->a, NULL, "c", "u", "x/1")) r->errors++;
        if (!auth_can_subscribe(r->a, NULL, "c", "u", "x/+")) r->errors++;
        if (conn(r->a, "u", "p") != THZ_OK) r->errors++;
    }
    return NULL;
}

/* Readers never see a torn rule set while reloads swap it underneath. */
static void test_reload_concurrent(void **state)
{
    fixture *fx = *state;
    char l[256];
    assert_int_equal(open_with(fx, hash_line("u", "p", l, sizeof l), "user u\ntopic x/#\n", false),
                     THZ_OK);
    race r = {.a = fx->a};
    atomic_init(&r.stop, 0);
    atomic_init(&r.errors, 0);
    pthread_t th[2];
    for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&th[i], NULL, race_reader, &r), 0);
    for (int i = 0; i < 40; i++) {
        write_file(fx->acl, i % 2 ? "user u\ntopic x/#\n" : "pattern x/%u/#\nuser u\ntopic x/#\n");
        assert_int_equal(auth_reload(fx->a, &fx->cfg), THZ_OK);
    }
    r.stop = 1;
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    assert_int_equal(r.errors, 0);
}

int main(void)
{
    thz_log_level = -1; /* the malformed-line warnings are expected */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hash_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_passwords, setup, teardown),
        cmocka_unit_test_setup_teardown(test_anonymous, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_password_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_users, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_acl, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_tables, setup, teardown),
        cmocka_unit_test_setup_teardown(test_acl_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_acl_coverage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_acl_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload_concurrent, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
