/*
 * zap: ZAP (RFC 27) handler for the broker's CURVE sockets (zap.h). It must
 * never answer 200 for a key that is not in the current directory, and
 * never let a malformed request through.
 */
#include "zap.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <zmq.h>

#include "digest.h"
#include "keys.h"
#include "log.h"

void zap_curve_key_id(const uint8_t curve_public[32], uint8_t key_id[16])
{
    uint8_t d[DIGEST_BYTES];
    digest_sha256(curve_public, 32, d);
    memcpy(key_id, d, 16);
}

void *zap_open(void *zctx)
{
    void *s = zmq_socket(zctx, ZMQ_REP);
    if (s == NULL)
        return NULL;
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(s, "inproc://zeromq.zap.01") != 0) {
        zmq_close(s);
        return NULL;
    }
    return s;
}

static void send_str(void *s, const char *text, int more)
{
    zmq_send(s, text, strlen(text), more);
}

/* Is frame i of the n there, and exactly text? */
static bool frame_is(const zap_frame *frames, size_t n, size_t i, const char *text)
{
    return i < n && frames[i].size == strlen(text) &&
           memcmp(frames[i].data, text, frames[i].size) == 0;
}

bool zap_is_still_valid(const directory *d, const char *agency, const uint8_t key_id[16])
{
    const Referral__V1__DirectoryAgency *a = directory_agency(d, agency);
    if (a == NULL || directory_is_revoked(d, key_id))
        return false;
    uint8_t current[16];
    zap_curve_key_id(a->curve_public.data, current);
    return memcmp(current, key_id, 16) == 0;
}

/* The address frame as text, cut to 63 bytes. */
static void address_of(const zap_frame *part, char addr[64])
{
    size_t alen = part->size < 63 ? part->size : 63;
    memcpy(addr, part->data, alen);
    addr[alen] = '\0';
}

/* Set out's answer: 200 "OK" for the identity already in out->user_id, or
 * 400 with text (static); no log line yet. */
static void answer(zap_decision *out, bool is_admitted, const char *text)
{
    out->status_code = is_admitted ? "200" : "400";
    out->status_text = is_admitted ? "OK" : text;
    if (!is_admitted)
        out->user_id[0] = '\0';
    out->note_level = is_admitted ? LOGL_INFO : LOGL_WARN;
    out->note[0] = '\0';
}

/* Set out's log line (printf format), at the level answer() chose. */
static void note(zap_decision *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void note(zap_decision *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->note, sizeof out->note, fmt, ap);
    va_end(ap);
}

/* The peer socket admits broker keys of the directory only, as identity
 * "broker:ID#KEYID": a namespace no agency id can enter (':' is not in the
 * id grammar), so a broker key never acts as an agency on the client
 * socket, and an agency key never opens a peer link. */
static void decide_peer(const zap_frame *frames, const directory *d, const uint8_t *key,
                        zap_decision *out)
{
    char z85[41], addr[64], hex[33];
    keys_to_z85(key, z85);
    address_of(&frames[3], addr);
    const Referral__V1__DirectoryBroker *br = directory_broker_by_curve(d, key);
    uint8_t kid[16];
    zap_curve_key_id(key, kid);
    if (br == NULL || directory_is_revoked(d, kid)) {
        answer(out, false, br == NULL ? "not a broker key" : "revoked key");
        note(out, "refused peer connection: %s CURVE key key=%s address=%s",
             br == NULL ? "not a broker's" : "revoked", z85, addr);
        return;
    }
    snprintf(out->user_id, sizeof out->user_id, "%s%s#%s", ZAP_BROKER_PREFIX, br->id,
             ids_hex(kid, 16, hex));
    answer(out, true, NULL);
    note(out, "admitted peer broker=%s address=%s", br->id, addr);
}

/* The client socket admits agency keys of the directory only, as identity
 * "AGENCY#KEYID". */
static void decide_agency(const zap_frame *frames, const directory *d, const uint8_t *key,
                          zap_decision *out)
{
    char z85[41], addr[64], hex[33];
    keys_to_z85(key, z85);
    address_of(&frames[3], addr);
    const Referral__V1__DirectoryAgency *a = directory_agency_by_curve(d, key);
    uint8_t kid[16];
    zap_curve_key_id(key, kid);
    if (a == NULL) {
        answer(out, false, "unknown key");
        note(out, "refused connection: unknown CURVE key key=%s address=%s", z85, addr);
        return;
    }
    if (directory_is_revoked(d, kid)) {
        answer(out, false, "revoked key");
        note(out, "refused connection: revoked CURVE key agency=%s key=%s address=%s", a->id,
             z85, addr);
        return;
    }
    snprintf(out->user_id, sizeof out->user_id, "%s#%s", a->id, ids_hex(kid, 16, hex));
    answer(out, true, NULL);
    note(out, "admitted connection agency=%s address=%s", a->id, addr);
}

/* The domain says which socket a request is for: ZAP_DOMAIN_ADMIN (the
 * NULL mechanism only), ZAP_DOMAIN_PEERS, or the client socket (any other,
 * "" included), which admits agency keys only. */
void zap_decide(const zap_frame *frames, size_t n, const directory *d, zap_decision *out)
{
    static const uint8_t no_bytes[1];
    /* REP must answer every request, even one it cannot read. */
    out->request_id = n >= 2 ? frames[1] : (zap_frame){.data = no_bytes, .size = 0};
    if (n < 2 || n > ZAP_MAX_FRAMES) {
        answer(out, false, "malformed request");
        return;
    }
    if (n == 6 && frame_is(frames, n, 0, "1.0") && frame_is(frames, n, 2, ZAP_DOMAIN_ADMIN) &&
        frame_is(frames, n, 5, "NULL")) {
        /* The operators' socket is ipc:// only: whoever the file's
         * permissions let connect is an operator (admin.h). */
        snprintf(out->user_id, sizeof out->user_id, "operator");
        answer(out, true, NULL);
        return;
    }
    if (frame_is(frames, n, 2, ZAP_DOMAIN_ADMIN)) {
        answer(out, false, "admin socket: local connections only");
        note(out, "refused connection to the admin socket: not the NULL mechanism");
        return;
    }
    if (n != 7 || !frame_is(frames, n, 0, "1.0") || !frame_is(frames, n, 5, "CURVE") ||
        frames[6].size != 32) {
        answer(out, false, "CURVE required");
        note(out, "refused connection: not a CURVE request parts=%zu", n);
        return;
    }
    if (frame_is(frames, n, 2, ZAP_DOMAIN_PEERS))
        decide_peer(frames, d, frames[6].data, out);
    else
        decide_agency(frames, d, frames[6].data, out);
}

/* Receive one request into parts: its first ZAP_MAX_FRAMES frames are kept
 * (the caller closes them), the rest read and dropped. Returns how many
 * frames it had; 0 when none was waiting. */
static size_t receive_request(void *zap, zmq_msg_t parts[ZAP_MAX_FRAMES])
{
    size_t n = 0;
    int more = 1;
    while (more) {
        zmq_msg_t tmp;
        zmq_msg_t *p = n < ZAP_MAX_FRAMES ? &parts[n] : &tmp;
        zmq_msg_init(p);
        if (zmq_msg_recv(p, zap, n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            zmq_msg_close(p);
            break;
        }
        more = zmq_msg_more(p);
        if (n >= ZAP_MAX_FRAMES)
            zmq_msg_close(p);
        n++;
    }
    return n;
}

/* Log a decision and send it as the ZAP reply (RFC 27). */
static void reply(void *zap, const zap_decision *dec)
{
    if (dec->note[0] != '\0')
        log_emit(dec->note_level, "zap", "%s", dec->note);
    send_str(zap, "1.0", ZMQ_SNDMORE);
    zmq_send(zap, dec->request_id.data, dec->request_id.size, ZMQ_SNDMORE);
    send_str(zap, dec->status_code, ZMQ_SNDMORE);
    send_str(zap, dec->status_text, ZMQ_SNDMORE);
    send_str(zap, dec->user_id, ZMQ_SNDMORE);
    zmq_send(zap, "", 0, 0);
}

int zap_handle(void *zap, const directory *d)
{
    int answered = 0;
    for (;;) {
        zmq_msg_t parts[ZAP_MAX_FRAMES];
        size_t n = receive_request(zap, parts);
        if (n == 0)
            return answered;
        size_t kept = n < ZAP_MAX_FRAMES ? n : ZAP_MAX_FRAMES;
        zap_frame frames[ZAP_MAX_FRAMES];
        for (size_t i = 0; i < kept; i++)
            frames[i] = (zap_frame){.data = zmq_msg_data(&parts[i]),
                                    .size = zmq_msg_size(&parts[i])};
        zap_decision dec;
        zap_decide(frames, n, d, &dec);
        reply(zap, &dec);
        for (size_t i = 0; i < kept; i++)
            zmq_msg_close(&parts[i]);
        answered++;
    }
}

bool zap_parse_user_id(const char *user_id, char agency[IDS_NAME_MAX + 1], uint8_t key_id[16])
{
    if (user_id == NULL)
        return false;
    const char *hash = strchr(user_id, '#');
    if (hash == NULL || (size_t)(hash - user_id) > IDS_NAME_MAX)
        return false;
    memcpy(agency, user_id, (size_t)(hash - user_id));
    agency[hash - user_id] = '\0';
    return ids_is_valid_name(agency) && ids_from_hex_len(hash + 1, key_id, 16);
}

bool zap_parse_peer_id(const char *user_id, char broker[IDS_NAME_MAX + 1], uint8_t key_id[16])
{
    size_t n = strlen(ZAP_BROKER_PREFIX);
    return user_id != NULL && strncmp(user_id, ZAP_BROKER_PREFIX, n) == 0 &&
           zap_parse_user_id(user_id + n, broker, key_id);
}

bool zap_is_peer_still_valid(const directory *d, const char *broker, const uint8_t key_id[16])
{
    const Referral__V1__DirectoryBroker *br = directory_broker(d, broker);
    if (br == NULL || directory_is_revoked(d, key_id))
        return false;
    uint8_t current[16];
    zap_curve_key_id(br->curve_public.data, current);
    return memcmp(current, key_id, 16) == 0;
}
