/*
 * admin_client: one request to a broker's operators' socket
 * (docs/operations.md, "The admin socket"), for referralctl and
 * referral-trace.
 */
#ifndef REF_TOOLS_ADMIN_CLIENT_H
#define REF_TOOLS_ADMIN_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include "referral.pb-c.h"

/* What to ask. id: NULL, or 16 bytes. */
typedef struct {
    const char *socket_path;      /* the broker's [admin] socket file */
    const char *command;
    const uint8_t *id;
    uint32_t limit;
    const char *reason;
    const char *operator_name;    /* NULL: the login name ($USER, else the uid) */
    int timeout_ms;
} admin_call_spec;

/* Send one AdminRequest and wait for its AdminReply. On 0, *code gets the
 * broker's result code, detail (detail_len) its sentence and *json the
 * parsed result (json_object_put() it). On -1 (no answer, unreadable),
 * detail says why and how to fix it (the socket's path and permissions). */
int admin_call(const admin_call_spec *spec, Referral__V1__ResultCode *code, char *detail,
               size_t detail_len, json_object **json);

#endif
