/*
 * session: a fixed-size table of client sessions (session.h). Lookups are
 * a linear scan, fine for the configured maximum of a regional broker
 * (about a thousand desks); a hash index is the upgrade path.
 *
 * It must never let a session outlive what it is bound to without the
 * loop's say, and never forget a delivery a closed session held unless
 * memory runs out (then the ack timeout returns it, and a warning says so).
 */
#include "session.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* The moves of session.h's table: free -> open, open -> open, open -> free. */
static void session_assert_move(const session *s, bool is_to_open, bool is_reopen)
{
    bool ok = is_to_open ? (s->is_used == is_reopen) : s->is_used;
    assert(ok && "session move not in session.h's table");
    (void)ok;
}

bool session_table_init(session_table *t, size_t cap)
{
    memset(t, 0, sizeof *t);
    t->items = calloc(cap, sizeof *t->items);
    t->cap = cap;
    t->max_per_agency = cap;
    t->max_flights = 1024;
    t->next_serial = 1;
    return t->items != NULL;
}

void session_table_free(session_table *t)
{
    for (size_t i = 0; t->items != NULL && i < t->cap; i++)
        free(t->items[i].flights);
    free(t->items);
    free(t->orphans);
    memset(t, 0, sizeof *t);
}

void session_table_limits(session_table *t, size_t max_per_agency, size_t max_flights)
{
    assert(max_per_agency >= 1 && max_flights >= 1 && t->count == 0);
    t->max_per_agency = max_per_agency;
    t->max_flights = max_flights;
}

bool session_is_broker_rid(const uint8_t *rid, size_t rid_len)
{
    return rid_len == SESSION_BROKER_RID_BYTES && rid[0] == 0;
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

session *session_find_fd(session_table *t, int fd)
{
    for (size_t i = 0; fd >= 0 && i < t->cap; i++)
        if (t->items[i].is_used && !t->items[i].is_gone && t->items[i].fd == fd)
            return &t->items[i];
    return NULL;
}

bool session_is_connection(const session *s, int fd, const char *agency,
                           const uint8_t key_id[16])
{
    return s->fd == fd && strcmp(s->agency, agency) == 0 && memcmp(s->key_id, key_id, 16) == 0;
}

session_room_result session_room(const session_table *t, const char *agency, uint64_t now_ms,
                                 uint64_t silent_ms, session **victim)
{
    *victim = NULL;
    size_t own = 0;
    session *own_quiet = NULL, *free_slot = NULL;
    for (size_t i = 0; i < t->cap; i++) {
        session *s = &t->items[i];
        if (!s->is_used) {
            free_slot = free_slot != NULL ? free_slot : s;
        } else if (strcmp(s->agency, agency) == 0) {
            own++;
            bool is_quiet = s->is_gone || now_ms - s->last_seen_ms > silent_ms;
            if (is_quiet && (own_quiet == NULL || s->serial < own_quiet->serial))
                own_quiet = s;
        }
    }
    if (own >= t->max_per_agency || (free_slot == NULL && own > 0)) {
        *victim = own_quiet;   /* the agency makes room among its own */
        if (own_quiet != NULL)
            return SESSION_ROOM_EVICT;
        if (own >= t->max_per_agency)
            return SESSION_ROOM_AGENCY_FULL;
    }
    if (free_slot != NULL)
        return SESSION_ROOM_FREE;
    /* Full, and the agency has none: the agency holding the most gives up
     * its oldest, if it holds two or more (ties: the older oldest). */
    size_t best = 0;
    for (size_t i = 0; i < t->cap; i++) {
        const session *s = &t->items[i];
        size_t n = 0;
        const session *oldest = s;
        for (size_t j = 0; j < t->cap; j++) {
            const session *o = &t->items[j];
            if (strcmp(o->agency, s->agency) == 0) {
                n++;
                if (o->serial < oldest->serial)
                    oldest = o;
            }
        }
        if (n > best || (n == best && *victim != NULL && oldest->serial < (*victim)->serial)) {
            best = n;
            *victim = (session *)(uintptr_t)oldest;
        }
    }
    if (best >= 2)
        return SESSION_ROOM_EVICT;
    *victim = NULL;
    return SESSION_ROOM_TABLE_FULL;
}

session *session_open(session_table *t, const uint8_t *rid, size_t rid_len, const char *agency,
                      const uint8_t key_id[16], int fd, uint64_t now_ms)
{
    if (rid_len == 0 || rid_len > SESSION_RID_MAX)
        return NULL;
    session *s = NULL;
    for (size_t i = 0; s == NULL && i < t->cap; i++)
        if (!t->items[i].is_used)
            s = &t->items[i];
    if (s == NULL)
        return NULL;
    session_assert_move(s, true, false);
    memset(s, 0, sizeof *s);
    s->is_used = true;
    s->serial = t->next_serial++;
    memcpy(s->rid, rid, rid_len);
    s->rid_len = rid_len;
    s->fd = fd;
    snprintf(s->agency, sizeof s->agency, "%s", agency);
    memcpy(s->key_id, key_id, sizeof s->key_id);
    s->last_seen_ms = now_ms;
    t->count++;
    return s;
}

static bool orphan(session_table *t, const session_flight *f)
{
    if (t->n_orphans == t->cap_orphans) {
        size_t cap = t->cap_orphans == 0 ? 64 : t->cap_orphans * 2;
        session_flight *p = realloc(t->orphans, cap * sizeof *p);
        if (p == NULL)
            return false;
        t->orphans = p;
        t->cap_orphans = cap;
    }
    t->orphans[t->n_orphans++] = *f;
    return true;
}

void session_close(session_table *t, session *s)
{
    if (s == NULL || !s->is_used)
        return;
    session_assert_move(s, false, false);
    size_t forgotten = 0;
    for (size_t k = 0; k < s->n_flights; k++)
        if (!orphan(t, &s->flights[(s->head_flight + k) % t->max_flights]))
            forgotten++;
    if (forgotten > 0)
        log_warn("session", "out of memory: deliveries of a closed session return by ack "
                 "timeout instead agency=%s count=%zu", s->agency, forgotten);
    free(s->flights);
    memset(s, 0, sizeof *s);
    t->count--;
}

void session_track(session_table *t, session *s, const uint8_t id[IDS_BYTES],
                   uint64_t due_at_ms)
{
    if (s->flights == NULL) {
        s->flights = calloc(t->max_flights, sizeof *s->flights);
        if (s->flights == NULL)
            return;   /* the ack timeout returns it if this session ends */
    }
    if (s->n_flights == t->max_flights) {   /* forget the oldest: its ack timeout stands */
        s->head_flight = (s->head_flight + 1) % t->max_flights;
        s->n_flights--;
    }
    session_flight *f = &s->flights[(s->head_flight + s->n_flights) % t->max_flights];
    memcpy(f->id, id, IDS_BYTES);
    f->due_at_ms = due_at_ms;
    s->n_flights++;
}

static session_flight *flight_of(session *s, size_t ring, const uint8_t id[IDS_BYTES],
                                 size_t *k_out)
{
    for (size_t k = 0; k < s->n_flights; k++) {
        session_flight *f = &s->flights[(s->head_flight + k) % ring];
        if (memcmp(f->id, id, IDS_BYTES) == 0) {
            *k_out = k;
            return f;
        }
    }
    return NULL;
}

void session_untrack(const session_table *t, session *s, const uint8_t id[IDS_BYTES])
{
    size_t k, ring = t->max_flights;
    if (s->flights == NULL || flight_of(s, ring, id, &k) == NULL)
        return;
    for (; k + 1 < s->n_flights; k++)   /* keep the ring in order: close the gap */
        s->flights[(s->head_flight + k) % ring] = s->flights[(s->head_flight + k + 1) % ring];
    s->n_flights--;
}

void session_retrack(const session_table *t, session *s, const uint8_t id[IDS_BYTES],
                     uint64_t due_at_ms)
{
    size_t k;
    session_flight *f = s->flights != NULL ? flight_of(s, t->max_flights, id, &k) : NULL;
    if (f != NULL)
        f->due_at_ms = due_at_ms;
}

size_t session_expire_idle(session_table *t, uint64_t now_ms, uint64_t idle_ms,
                           bool (*may_speak)(const void *ctx, const session *s),
                           const void *ctx)
{
    size_t n = 0;
    for (size_t i = 0; i < t->cap; i++) {
        session *s = &t->items[i];
        if (s->is_used && now_ms - s->last_seen_ms > idle_ms && !may_speak(ctx, s)) {
            log_info("session", "session ended agency=%s serial=%llu why=idle in_flight=%zu",
                     s->agency, (unsigned long long)s->serial, s->n_flights);
            session_close(t, s);
            n++;
        }
    }
    return n;
}

void session_heard_all(session_table *t, uint64_t now_ms)
{
    for (size_t i = 0; i < t->cap; i++)
        if (t->items[i].is_used && t->items[i].last_seen_ms < now_ms)
            t->items[i].last_seen_ms = now_ms;
}
