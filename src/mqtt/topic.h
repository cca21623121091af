/* topic.h - MQTT topic rules (OASIS MQTT 3.1.1 and 5.0, section 4.7): which
 * topic names and filters are valid and which filters match which topics.
 * The one implementation of these rules, for the broker and for the ACL. */
#ifndef THZ_MQTT_TOPIC_H
#define THZ_MQTT_TOPIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A topic name: 1..65535 bytes, no '+' or '#'. */
bool topic_name_valid(const char *t, size_t n);
/* A topic filter: 1..65535 bytes; '+' fills a whole level, '#' too and only
 * as the last level. */
bool topic_filter_valid(const char *f, size_t n);
/* Does filter (valid) match topic name? Wildcards at the first level do not
 * match topics starting with '$'; "a/#" also matches "a". */
bool topic_matches(const char *filter, size_t flen, const char *topic, size_t tlen);
/* Does filter acl cover filter req: is every topic req matches also matched
 * by acl? With req a plain topic this is topic_matches. NUL-terminated. */
bool topic_filter_covers(const char *acl, const char *req);
/* Could some topic match both filters? NUL-terminated. */
bool topic_filters_overlap(const char *x, const char *y);

/* Tenant namespaces. Inside the broker the topics, filters and client ids of
 * a tenant other than the default one (1) start with "$t/N/". Clients never
 * name such topics themselves (topic_reserved), and wildcards at a level
 * starting with '$' never match it, so no subscription crosses tenants; the
 * '$' rule applies again at the first level after the prefix. */
#define TOPIC_TENANT_PREFIX_MAX 24
/* Writes tenant's prefix ("" for tenant 1) into out; returns its length. */
size_t topic_tenant_prefix(int64_t tenant, char out[TOPIC_TENANT_PREFIX_MAX]);
/* The length of the tenant prefix t starts with, or 0. */
size_t topic_tenant_base(const char *t, size_t n);
/* Is this client-given topic or filter in the broker's reserved namespace? */
bool topic_reserved(const char *t, size_t n);

#endif
