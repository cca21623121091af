/* topic.h - MQTT topic rules (OASIS MQTT 3.1.1 and 5.0, section 4.7): which
 * topic names and filters are valid and which filters match which topics.
 * The one implementation of these rules, for the broker and for the ACL. */
#ifndef THZ_MQTT_TOPIC_H
#define THZ_MQTT_TOPIC_H

#include <stdbool.h>
#include <stddef.h>

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

#endif
