/*
 * admin_client: one request to a broker's operators' socket (admin_client.h).
 */
#include "admin_client.h"

#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>

#include "ids.h"
#include "wire.h"

static const char *login_name(char *buf, size_t len)
{
    const char *user = getenv("USER");
    if (user != NULL && ids_is_valid_name(user))
        return user;
    const struct passwd *pw = getpwuid(getuid());
    if (pw != NULL && ids_is_valid_name(pw->pw_name))
        return pw->pw_name;
    snprintf(buf, len, "uid-%u", (unsigned)getuid());
    return buf;
}

int admin_call(const admin_call_spec *spec, Referral__V1__ResultCode *code, char *detail,
               size_t detail_len, json_object **json)
{
    *json = NULL;
    struct stat st;
    if (stat(spec->socket_path, &st) != 0) {
        snprintf(detail, detail_len, "no admin socket at %s (%s): is the broker running, and "
                 "is this its [admin] socket? (--socket PATH)", spec->socket_path,
                 strerror(errno));
        return -1;
    }
    if (access(spec->socket_path, R_OK | W_OK) != 0) {
        snprintf(detail, detail_len, "no permission to use %s: run as the broker's user, or "
                 "set [admin] group_access = true and join its group", spec->socket_path);
        return -1;
    }
    char who[64];
    Referral__V1__AdminRequest rq = REFERRAL__V1__ADMIN_REQUEST__INIT;
    rq.version = REFERRAL__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    rq.request_id = (uint64_t)getpid();
    rq.operator_name = (char *)(uintptr_t)(spec->operator_name != NULL
                                               ? spec->operator_name
                                               : login_name(who, sizeof who));
    rq.command = (char *)(uintptr_t)spec->command;
    if (spec->id != NULL)
        rq.id = (ProtobufCBinaryData){IDS_BYTES, (uint8_t *)(uintptr_t)spec->id};
    rq.limit = spec->limit;
    rq.reason = (char *)(uintptr_t)(spec->reason != NULL ? spec->reason : "");
    size_t len;
    uint8_t *buf = wire_pack(&rq, &len);
    void *ctx = zmq_ctx_new();
    void *sock = ctx != NULL ? zmq_socket(ctx, ZMQ_DEALER) : NULL;
    int rc = -1;
    char endpoint[600];
    snprintf(endpoint, sizeof endpoint, "ipc://%s", spec->socket_path);
    int linger = 0;
    if (buf == NULL || sock == NULL ||
        zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_connect(sock, endpoint) != 0 || zmq_send(sock, buf, len, 0) < 0) {
        snprintf(detail, detail_len, "cannot send to %s: %s", spec->socket_path,
                 zmq_strerror(errno));
        goto out;
    }
    zmq_pollitem_t item = {.socket = sock, .events = ZMQ_POLLIN};
    if (zmq_poll(&item, 1, spec->timeout_ms) <= 0) {
        snprintf(detail, detail_len, "no answer from the broker on %s within %d ms",
                 spec->socket_path, spec->timeout_ms);
        goto out;
    }
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, sock, 0) < 0) {
        zmq_msg_close(&m);
        snprintf(detail, detail_len, "receive failed: %s", zmq_strerror(errno));
        goto out;
    }
    Referral__V1__AdminReply *reply = NULL;
    char why[300];
    if (wire_decode_admin_reply(zmq_msg_data(&m), zmq_msg_size(&m), &reply, why,
                                sizeof why) != WIRE_OK) {
        zmq_msg_close(&m);
        snprintf(detail, detail_len, "unreadable answer from the broker: %s", why);
        goto out;
    }
    zmq_msg_close(&m);
    *code = reply->code;
    snprintf(detail, detail_len, "%s", reply->detail);
    *json = json_tokener_parse(reply->json);
    if (*json == NULL) {
        snprintf(detail, detail_len, "the broker's answer is not JSON");
        wire_free(reply);
        goto out;
    }
    wire_free(reply);
    rc = 0;
out:
    free(buf);
    if (sock != NULL)
        zmq_close(sock);
    if (ctx != NULL)
        zmq_ctx_term(ctx);
    return rc;
}
