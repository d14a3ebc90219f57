/*
 * state (libreferral internal): the client's own LMDB directory.
 *
 *   outbox  message id -> packed Envelope, until the broker answers
 *           ACCEPTED (or refuses for good); replayed at every start
 *   seen    message id -> forget_at_ms, referral id, sender: what was
 *           received, so the application sees each message once; pruned
 *           after forget_at_ms
 * Full sync as in the broker: a referral in the outbox survives kill -9.
 */
#ifndef REF_CLIENT_STATE_H
#define REF_CLIENT_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct state state;

typedef struct {
    uint64_t forget_at_ms;
    uint8_t referral_id[16];
    char from[65];
    uint8_t urgency;
} state_seen;

int state_open(const char *dir, state **out, char *why, size_t why_len);
void state_destroy(state **s);

int state_outbox_put(state *s, const uint8_t id[16], const uint8_t *env, size_t len);
int state_outbox_del(state *s, const uint8_t id[16]);
/* Call fn for each outbox entry (copies handed out). */
typedef void (*state_outbox_fn)(const uint8_t id[16], const uint8_t *env, size_t len, void *ctx);
int state_outbox_each(state *s, state_outbox_fn fn, void *ctx);
size_t state_outbox_count(state *s);
/* A copy of the outbox entry of id (caller frees *env); REF_E_AGAIN if none. */
int state_outbox_get(state *s, const uint8_t id[16], uint8_t **env, size_t *len);

/* 0 and *seen filled if id was received; REF_E_AGAIN-like 1 if not. */
int state_seen_get(state *s, const uint8_t id[16], state_seen *seen);
int state_seen_put(state *s, const uint8_t id[16], const state_seen *seen);
/* Forget entries past their time; returns how many. */
size_t state_seen_prune(state *s, uint64_t now_ms);

#endif
