/*
 * session: a fixed-size table of client sessions (session.h). Lookups are
 * a linear scan, fine for the configured maximum of a regional broker
 * (about a thousand desks); a hash index is the upgrade path.
 */
#include "session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

bool session_table_init(session_table *t, size_t cap)
{
    memset(t, 0, sizeof *t);
    t->items = calloc(cap, sizeof *t->items);
    t->cap = cap;
    return t->items != NULL;
}

void session_table_free(session_table *t)
{
    free(t->items);
    memset(t, 0, sizeof *t);
}

session *session_find(session_table *t, const uint8_t *rid, size_t rid_len)
{
    for (size_t i = 0; i < t->cap; i++) {
        session *s = &t->items[i];
        if (s->is_used && s->rid_len == rid_len && memcmp(s->rid, rid, rid_len) == 0)
            return s;
    }
    return NULL;
}

session *session_open(session_table *t, const uint8_t *rid, size_t rid_len, const char *agency,
                      uint64_t now_ms)
{
    if (rid_len == 0 || rid_len > SESSION_RID_MAX)
        return NULL;
    session *s = session_find(t, rid, rid_len);
    for (size_t i = 0; s == NULL && i < t->cap; i++) {
        if (!t->items[i].is_used) {
            s = &t->items[i];
            t->count++;
        }
    }
    if (s == NULL)
        return NULL;
    s->is_used = true;
    memcpy(s->rid, rid, rid_len);
    s->rid_len = rid_len;
    snprintf(s->agency, sizeof s->agency, "%s", agency);
    s->credit = 0;
    s->last_seen_ms = now_ms;
    return s;
}

void session_close(session_table *t, session *s)
{
    if (s == NULL || !s->is_used)
        return;
    memset(s, 0, sizeof *s);
    t->count--;
}

size_t session_expire_idle(session_table *t, uint64_t now_ms, uint64_t idle_ms)
{
    size_t n = 0;
    for (size_t i = 0; i < t->cap; i++) {
        session *s = &t->items[i];
        if (s->is_used && now_ms - s->last_seen_ms > idle_ms) {
            log_info("session", "closed idle session agency=%s", s->agency);
            session_close(t, s);
            n++;
        }
    }
    return n;
}
