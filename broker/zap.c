/*
 * zap: ZAP (RFC 27) handler for the broker's CURVE sockets (zap.h). It must
 * never answer 200 for a key that is not in the current directory, and
 * never let a malformed request through.
 */
#include "zap.h"

#include <string.h>

#include <zmq.h>

#include "digest.h"
#include "keys.h"
#include "log.h"

#define MAX_PARTS 8

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

static void reply(void *zap, const zmq_msg_t *request_id, const char *code, const char *text,
                  const char *user_id)
{
    send_str(zap, "1.0", ZMQ_SNDMORE);
    zmq_send(zap, zmq_msg_data((zmq_msg_t *)request_id), zmq_msg_size((zmq_msg_t *)request_id),
             ZMQ_SNDMORE);
    send_str(zap, code, ZMQ_SNDMORE);
    send_str(zap, text, ZMQ_SNDMORE);
    send_str(zap, user_id, ZMQ_SNDMORE);
    zmq_send(zap, "", 0, 0);
}

static bool part_is(zmq_msg_t *m, const char *text)
{
    return zmq_msg_size(m) == strlen(text) && memcmp(zmq_msg_data(m), text, strlen(text)) == 0;
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

static void address_of(zmq_msg_t *part, char addr[64])
{
    size_t alen = zmq_msg_size(part) < 63 ? zmq_msg_size(part) : 63;
    memcpy(addr, zmq_msg_data(part), alen);
    addr[alen] = '\0';
}

/* The peer socket admits broker keys of the directory only, as identity
 * "broker:ID#KEYID": a namespace no agency id can enter (':' is not in the
 * id grammar), so a broker key never acts as an agency on the client
 * socket, and an agency key never opens a peer link. */
static void decide_peer(void *zap, zmq_msg_t *parts, const directory *d, const uint8_t *key)
{
    char z85[41], addr[64], hex[33], user_id[ZAP_USER_ID_MAX];
    keys_to_z85(key, z85);
    address_of(&parts[3], addr);
    const Referral__V1__DirectoryBroker *br = directory_broker_by_curve(d, key);
    uint8_t kid[16];
    zap_curve_key_id(key, kid);
    if (br == NULL || directory_is_revoked(d, kid)) {
        log_warn("zap", "refused peer connection: %s CURVE key key=%s address=%s",
                 br == NULL ? "not a broker's" : "revoked", z85, addr);
        reply(zap, &parts[1], "400", br == NULL ? "not a broker key" : "revoked key", "");
        return;
    }
    snprintf(user_id, sizeof user_id, "%s%s#%s", ZAP_BROKER_PREFIX, br->id,
             ids_hex(kid, 16, hex));
    log_info("zap", "admitted peer broker=%s address=%s", br->id, addr);
    reply(zap, &parts[1], "200", "OK", user_id);
}

/* Decide one request: parts are version, request id, domain, address,
 * routing id, mechanism, then the mechanism's credentials. The domain says
 * which socket it is for: ZAP_DOMAIN_PEERS, or the client socket (any
 * other, "" included), which admits agency keys only. */
static void decide(void *zap, zmq_msg_t *parts, size_t n, const directory *d)
{
    if (n < 2) {   /* REP must answer every request, even one it cannot read */
        zmq_msg_t empty;
        zmq_msg_init(&empty);
        reply(zap, &empty, "400", "malformed request", "");
        zmq_msg_close(&empty);
        return;
    }
    if (n == 6 && part_is(&parts[0], "1.0") && part_is(&parts[2], ZAP_DOMAIN_ADMIN) &&
        part_is(&parts[5], "NULL")) {
        /* The operators' socket is ipc:// only: whoever the file's
         * permissions let connect is an operator (admin.h). */
        reply(zap, &parts[1], "200", "OK", "operator");
        return;
    }
    if (part_is(&parts[2], ZAP_DOMAIN_ADMIN)) {
        log_warn("zap", "refused connection to the admin socket: not the NULL mechanism");
        reply(zap, &parts[1], "400", "admin socket: local connections only", "");
        return;
    }
    if (n != 7 || !part_is(&parts[0], "1.0") || !part_is(&parts[5], "CURVE") ||
        zmq_msg_size(&parts[6]) != 32) {
        log_warn("zap", "refused connection: not a CURVE request parts=%zu", n);
        reply(zap, &parts[1], "400", "CURVE required", "");
        return;
    }
    const uint8_t *key = zmq_msg_data(&parts[6]);
    if (part_is(&parts[2], ZAP_DOMAIN_PEERS)) {
        decide_peer(zap, parts, d, key);
        return;
    }
    char z85[41], addr[64];
    keys_to_z85(key, z85);
    size_t alen = zmq_msg_size(&parts[3]) < sizeof addr - 1 ? zmq_msg_size(&parts[3])
                                                            : sizeof addr - 1;
    memcpy(addr, zmq_msg_data(&parts[3]), alen);
    addr[alen] = '\0';
    const Referral__V1__DirectoryAgency *a = directory_agency_by_curve(d, key);
    uint8_t kid[16];
    zap_curve_key_id(key, kid);
    if (a == NULL) {
        log_warn("zap", "refused connection: unknown CURVE key key=%s address=%s", z85, addr);
        reply(zap, &parts[1], "400", "unknown key", "");
        return;
    }
    if (directory_is_revoked(d, kid)) {
        log_warn("zap", "refused connection: revoked CURVE key agency=%s key=%s address=%s",
                 a->id, z85, addr);
        reply(zap, &parts[1], "400", "revoked key", "");
        return;
    }
    char user_id[ZAP_USER_ID_MAX], hex[33];
    snprintf(user_id, sizeof user_id, "%s#%s", a->id, ids_hex(kid, 16, hex));
    log_info("zap", "admitted connection agency=%s address=%s", a->id, addr);
    reply(zap, &parts[1], "200", "OK", user_id);
}

int zap_handle(void *zap, const directory *d)
{
    int answered = 0;
    for (;;) {
        zmq_msg_t parts[MAX_PARTS];
        size_t n = 0;
        int more = 1;
        while (more) {
            zmq_msg_t tmp;
            zmq_msg_t *p = n < MAX_PARTS ? &parts[n] : &tmp;
            zmq_msg_init(p);
            if (zmq_msg_recv(p, zap, n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
                zmq_msg_close(p);
                if (n == 0)
                    return answered;
                break;
            }
            more = zmq_msg_more(p);
            if (n >= MAX_PARTS)
                zmq_msg_close(p);
            n++;
        }
        size_t kept = n < MAX_PARTS ? n : MAX_PARTS;
        if (n <= MAX_PARTS)
            decide(zap, parts, n, d);
        else if (n > MAX_PARTS)
            reply(zap, &parts[1], "400", "malformed request", "");
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
