/*
 * wire_samples: valid encoded frames of every kind (see wire_samples.h).
 *
 * Every builder fills protobuf-c structs on the stack that point at static
 * data, packs them with wire_pack() and returns the bytes; nothing here is
 * freed except the intermediate buffers (a header or notice packed to sit
 * in a bytes field). The samples must stay valid: test_wire.c checks that
 * each one decodes.
 */
#include "wire_samples.h"

#include <stdlib.h>
#include <string.h>

#define V1 REFERRAL__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1
#define SUITE_1 REFERRAL__V1__CIPHER_SUITE__CIPHER_SUITE_ED25519_X25519_AES256GCM
#define RESULT_OK REFERRAL__V1__RESULT_CODE__RESULT_OK

#define NOW_MS 1767225600000u   /* 2026-01-01T00:00:00Z */
#define DAY_MS 86400000u

static uint8_t message_id[16] = {0x01, 0x9b, 0x75, 0x3a, 0x98, 0x00, 0x70, 0x11, 0x82, 0x22,
                                 0x33, 0x44, 0x55, 0x66, 0x77, 0x88};
static uint8_t referral_id[16] = {0x01, 0x9b, 0x75, 0x3a, 0x98, 0x00, 0x70, 0x22, 0x83, 0x33,
                                  0x44, 0x55, 0x66, 0x77, 0x88, 0x99};
static uint8_t attempt_id[16] = {0x01, 0x9b, 0x75, 0x3a, 0x98, 0x00, 0x70, 0x33, 0x84, 0x44,
                                 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa};
static uint8_t notice_id[16] = {0x01, 0x9b, 0x75, 0x3a, 0x98, 0x01, 0x70, 0x44, 0x85, 0x55,
                                0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb};
static uint8_t key_id[16] = {0x7f, 0x3a, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,
                             0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee};
static uint8_t signature[64] = {0x5a, 0x5b, 0x5c, 0x5d, [63] = 0x5e};
static uint8_t sealed_body[SAMPLE_BODY_BYTES] = {0xc1, 0xc2, 0xc3, [SAMPLE_BODY_BYTES - 1] = 0xcf};
static uint8_t padding[24] = {0};
static uint8_t attachment[8] = {'%', 'P', 'D', 'F', '-', '1', '.', '7'};
static uint8_t sha256[32] = {0xe3, 0xb0, 0xc4, 0x42, [31] = 0x55};

static ProtobufCBinaryData bin(uint8_t *data, size_t len)
{
    return (ProtobufCBinaryData){.len = len, .data = data};
}

static char *str(const char *s)
{
    return (char *)s;   /* protobuf-c fields are char *; packing only reads them */
}

/* ---- envelope parts -------------------------------------------------------- */

static uint8_t *pack_header(size_t *len)
{
    static char *backups[] = {"qd.police", "qd.education.shibei"};
    Referral__V1__RoutingHeader h = REFERRAL__V1__ROUTING_HEADER__INIT;
    h.header_version = 1;
    h.message_id = bin(message_id, sizeof message_id);
    h.referral_id = bin(referral_id, sizeof referral_id);
    h.attempt_id = bin(attempt_id, sizeof attempt_id);
    h.kind = REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_REFERRAL;
    h.from_agency = str("qd.hotline.12355");
    h.to_agency = str("qd.police.shibei");
    h.n_backup_recipients = 2;
    h.backup_recipients = backups;
    h.urgency = REFERRAL__V1__URGENCY__URGENCY_CRISIS;
    h.escalation_policy_id = str("crisis-default");
    h.escalation_policy_version = 3;
    h.created_at_ms = NOW_MS;
    h.expires_at_ms = NOW_MS + DAY_MS;
    h.hop_limit = 8;
    h.suite = SUITE_1;
    h.padded_size = SAMPLE_BODY_BYTES;
    return wire_pack(&h, len);
}

/* Fill env around header (borrowed). With hops, as a relaying broker sends
 * it; without, as the origin stores it (the suite is then the last field). */
static void fill_envelope(Referral__V1__Envelope *env, uint8_t *header, size_t header_len,
                          bool has_hops)
{
    static char *hops[] = {"qd.broker.a", "sd.broker.central"};
    referral__v1__envelope__init(env);
    env->header = bin(header, header_len);
    env->sealed_body = bin(sealed_body, sizeof sealed_body);
    env->signature = bin(signature, sizeof signature);
    env->signer_key_id = bin(key_id, sizeof key_id);
    env->suite = SUITE_1;
    if (has_hops) {
        env->n_hops = 2;
        env->hops = hops;
    }
}

static uint8_t *pack_envelope_with(bool has_hops, size_t *len)
{
    size_t header_len;
    uint8_t *header = pack_header(&header_len);
    if (header == NULL)
        return NULL;
    Referral__V1__Envelope env;
    fill_envelope(&env, header, header_len, has_hops);
    uint8_t *out = wire_pack(&env, len);
    free(header);
    return out;
}

static uint8_t *pack_envelope(size_t *len)
{
    return pack_envelope_with(false, len);
}

static uint8_t *pack_envelope_relayed(size_t *len)
{
    return pack_envelope_with(true, len);
}

/* ---- notices -------------------------------------------------------------- */

static void fill_alert(Referral__V1__Alert *a)
{
    static Referral__V1__EmergencyContact police = REFERRAL__V1__EMERGENCY_CONTACT__INIT;
    static Referral__V1__EmergencyContact supervisor = REFERRAL__V1__EMERGENCY_CONTACT__INIT;
    static Referral__V1__EmergencyContact *contacts[] = {&police, &supervisor};
    police.label = str("Qingdao 110");
    police.phone = str("110");
    supervisor.label = str("duty supervisor");
    supervisor.phone = str("+86 532 0000 0000");
    referral__v1__alert__init(a);
    a->referral_id = bin(referral_id, sizeof referral_id);
    a->message_id = bin(message_id, sizeof message_id);
    a->kind = REFERRAL__V1__ALERT_KIND__ALERT_KIND_NOT_RECEIVED;
    a->policy_id = str("crisis-default");
    a->policy_version = 3;
    a->step = 1;
    a->round = 0;
    a->broker_id = str("qd.broker.a");
    a->at_ms = NOW_MS + 600000;
    a->detail = str("nobody at qd.police.shibei picked the referral up within 10 minutes");
    a->n_emergency_contacts = 2;
    a->emergency_contacts = contacts;
    a->urgency = REFERRAL__V1__URGENCY__URGENCY_CRISIS;
    a->to_agency = str("qd.police.shibei");
}

/* The fields a notice must carry; broker_id (the last of them) is encoded
 * last, so every prefix lacks something required. */
static void fill_minimal_notice(Referral__V1__Notice *n)
{
    referral__v1__notice__init(n);
    n->notice_id = bin(notice_id, sizeof notice_id);
    n->kind = REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_UNDELIVERABLE;
    n->message_id = bin(message_id, sizeof message_id);
    n->broker_id = str("qd.broker.a");
}

static uint8_t *pack_notice_minimal(size_t *len)
{
    Referral__V1__Notice n;
    fill_minimal_notice(&n);
    return wire_pack(&n, len);
}

static uint8_t *pack_notice_ack_level(size_t *len)
{
    Referral__V1__Notice n;
    fill_minimal_notice(&n);
    n.kind = REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_ACK_LEVEL;
    n.referral_id = bin(referral_id, sizeof referral_id);
    n.about_agency = str("qd.police.shibei");
    n.at_ms = NOW_MS + 1000;
    n.level = REFERRAL__V1__ACK_LEVEL__ACK_LEVEL_RELAYED;
    n.code = RESULT_OK;
    n.detail = str("stored by sd.broker.central");
    return wire_pack(&n, len);
}

static uint8_t *pack_notice_alert(size_t *len)
{
    Referral__V1__Notice n;
    Referral__V1__Alert alert;
    fill_minimal_notice(&n);
    fill_alert(&alert);
    n.kind = REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_ALERT;
    n.referral_id = bin(referral_id, sizeof referral_id);
    n.about_agency = str("qd.police.shibei");
    n.at_ms = NOW_MS + 600000;
    n.alert = &alert;
    return wire_pack(&n, len);
}

/* A SignedNotice around a packed notice; *notice_bytes is the buffer the
 * caller frees after packing the frame that holds sn. */
static bool fill_signed_notice(Referral__V1__SignedNotice *sn, uint8_t **notice_bytes)
{
    size_t len;
    *notice_bytes = pack_notice_ack_level(&len);
    if (*notice_bytes == NULL)
        return false;
    referral__v1__signed_notice__init(sn);
    sn->notice = bin(*notice_bytes, len);
    sn->signature = bin(signature, sizeof signature);
    sn->signer_key_id = bin(key_id, sizeof key_id);
    return true;
}

/* ---- trace ---------------------------------------------------------------- */

static void fill_trace_reply(Referral__V1__TraceReply *r)
{
    static Referral__V1__TraceEvent submitted = REFERRAL__V1__TRACE_EVENT__INIT;
    static Referral__V1__TraceEvent accepted = REFERRAL__V1__TRACE_EVENT__INIT;
    static Referral__V1__TraceEvent *events[] = {&submitted, &accepted};
    submitted.referral_id = bin(referral_id, sizeof referral_id);
    submitted.message_id = bin(message_id, sizeof message_id);
    submitted.kind = REFERRAL__V1__TRACE_EVENT_KIND__TRACE_EVENT_KIND_SUBMITTED;
    submitted.broker_id = str("qd.broker.a");
    submitted.agency_id = str("qd.hotline.12355");
    submitted.at_ms = NOW_MS;
    accepted = submitted;
    accepted.kind = REFERRAL__V1__TRACE_EVENT_KIND__TRACE_EVENT_KIND_ACCEPTED;
    accepted.at_ms = NOW_MS + 3;
    accepted.level = REFERRAL__V1__ACK_LEVEL__ACK_LEVEL_ACCEPTED;
    accepted.code = RESULT_OK;
    accepted.attempt = 1;
    accepted.detail = str("stored durably");
    referral__v1__trace_reply__init(r);
    r->request_id = 77;
    r->code = RESULT_OK;
    r->n_events = 2;
    r->events = events;
}

/* ---- client frames -------------------------------------------------------- */

static void init_client(Referral__V1__ClientFrame *f, Referral__V1__ClientFrame__BodyCase body)
{
    referral__v1__client_frame__init(f);
    f->version = V1;
    f->body_case = body;
}

static uint8_t *pack_client_hello(size_t *len)
{
    Referral__V1__Hello hello = REFERRAL__V1__HELLO__INIT;
    hello.agency_id = str("qd.hotline.12355");
    hello.client_name = str("desk-console");
    hello.client_version = str("0.1.0");
    Referral__V1__ClientFrame f;
    init_client(&f, REFERRAL__V1__CLIENT_FRAME__BODY_HELLO);
    f.hello = &hello;
    return wire_pack(&f, len);
}

static uint8_t *pack_client_submit(size_t *len)
{
    size_t header_len;
    uint8_t *header = pack_header(&header_len);
    if (header == NULL)
        return NULL;
    Referral__V1__Envelope env;
    fill_envelope(&env, header, header_len, false);
    Referral__V1__Submit submit = REFERRAL__V1__SUBMIT__INIT;
    submit.request_id = 42;
    submit.envelope = &env;
    Referral__V1__ClientFrame f;
    init_client(&f, REFERRAL__V1__CLIENT_FRAME__BODY_SUBMIT);
    f.submit = &submit;
    uint8_t *out = wire_pack(&f, len);
    free(header);
    return out;
}

static uint8_t *pack_client_credit(size_t *len)
{
    Referral__V1__Credit credit = REFERRAL__V1__CREDIT__INIT;
    credit.grant = 16;
    Referral__V1__ClientFrame f;
    init_client(&f, REFERRAL__V1__CLIENT_FRAME__BODY_CREDIT);
    f.credit = &credit;
    return wire_pack(&f, len);
}

static uint8_t *pack_client_settle(size_t *len)
{
    Referral__V1__Settle settle = REFERRAL__V1__SETTLE__INIT;
    settle.message_id = bin(message_id, sizeof message_id);
    settle.verb = REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_REJECT;
    settle.reason = str("not our jurisdiction");
    settle.attempt = 1;
    Referral__V1__ClientFrame f;
    init_client(&f, REFERRAL__V1__CLIENT_FRAME__BODY_SETTLE);
    f.settle = &settle;
    return wire_pack(&f, len);
}

static uint8_t *pack_client_status(size_t *len)
{
    Referral__V1__StatusQuery status = REFERRAL__V1__STATUS_QUERY__INIT;
    status.request_id = 43;
    status.message_id = bin(message_id, sizeof message_id);
    Referral__V1__ClientFrame f;
    init_client(&f, REFERRAL__V1__CLIENT_FRAME__BODY_STATUS);
    f.status = &status;
    return wire_pack(&f, len);
}

static uint8_t *pack_client_trace(size_t *len)
{
    Referral__V1__TraceQuery trace = REFERRAL__V1__TRACE_QUERY__INIT;
    trace.request_id = 44;
    trace.referral_id = bin(referral_id, sizeof referral_id);
    Referral__V1__ClientFrame f;
    init_client(&f, REFERRAL__V1__CLIENT_FRAME__BODY_TRACE);
    f.trace = &trace;
    return wire_pack(&f, len);
}

static uint8_t *pack_client_ping(size_t *len)
{
    Referral__V1__Ping ping = REFERRAL__V1__PING__INIT;
    ping.nonce = 0x1234567890abcdefu;
    Referral__V1__ClientFrame f;
    init_client(&f, REFERRAL__V1__CLIENT_FRAME__BODY_PING);
    f.ping = &ping;
    return wire_pack(&f, len);
}

/* ---- broker frames -------------------------------------------------------- */

static void init_broker(Referral__V1__BrokerFrame *f, Referral__V1__BrokerFrame__BodyCase body)
{
    referral__v1__broker_frame__init(f);
    f->version = V1;
    f->body_case = body;
}

static uint8_t *pack_broker_welcome(size_t *len)
{
    Referral__V1__Welcome welcome = REFERRAL__V1__WELCOME__INIT;
    welcome.broker_id = str("qd.broker.a");
    welcome.agency_id = str("qd.hotline.12355");
    welcome.max_frame_bytes = 1u << 20;
    welcome.max_credit = 64;
    welcome.ack_timeout_ms = 30000;
    welcome.clock_skew_ms = 300000;
    welcome.now_ms = NOW_MS;
    welcome.max_body_bytes = 800u << 10;
    welcome.max_ttl_ms = 30ull * 24 * 3600 * 1000;
    Referral__V1__BrokerFrame f;
    init_broker(&f, REFERRAL__V1__BROKER_FRAME__BODY_WELCOME);
    f.welcome = &welcome;
    return wire_pack(&f, len);
}

static uint8_t *pack_broker_submit_reply(size_t *len)
{
    Referral__V1__SubmitReply reply = REFERRAL__V1__SUBMIT_REPLY__INIT;
    reply.request_id = 42;
    reply.message_id = bin(message_id, sizeof message_id);
    reply.code = RESULT_OK;
    reply.detail = str("stored");
    reply.is_duplicate = true;
    Referral__V1__BrokerFrame f;
    init_broker(&f, REFERRAL__V1__BROKER_FRAME__BODY_SUBMIT_REPLY);
    f.submit_reply = &reply;
    return wire_pack(&f, len);
}

static uint8_t *pack_broker_delivery_envelope(size_t *len)
{
    size_t header_len;
    uint8_t *header = pack_header(&header_len);
    if (header == NULL)
        return NULL;
    Referral__V1__Envelope env;
    fill_envelope(&env, header, header_len, true);
    Referral__V1__Delivery delivery = REFERRAL__V1__DELIVERY__INIT;
    delivery.message_id = bin(message_id, sizeof message_id);
    delivery.attempt = 1;
    delivery.urgency = REFERRAL__V1__URGENCY__URGENCY_CRISIS;
    delivery.payload_case = REFERRAL__V1__DELIVERY__PAYLOAD_ENVELOPE;
    delivery.envelope = &env;
    Referral__V1__BrokerFrame f;
    init_broker(&f, REFERRAL__V1__BROKER_FRAME__BODY_DELIVERY);
    f.delivery = &delivery;
    uint8_t *out = wire_pack(&f, len);
    free(header);
    return out;
}

static uint8_t *pack_broker_delivery_notice(size_t *len)
{
    uint8_t *notice;
    Referral__V1__SignedNotice sn;
    if (!fill_signed_notice(&sn, &notice))
        return NULL;
    Referral__V1__Delivery delivery = REFERRAL__V1__DELIVERY__INIT;
    delivery.message_id = bin(notice_id, sizeof notice_id);
    delivery.attempt = 2;
    delivery.urgency = REFERRAL__V1__URGENCY__URGENCY_ROUTINE;
    delivery.payload_case = REFERRAL__V1__DELIVERY__PAYLOAD_NOTICE;
    delivery.notice = &sn;
    Referral__V1__BrokerFrame f;
    init_broker(&f, REFERRAL__V1__BROKER_FRAME__BODY_DELIVERY);
    f.delivery = &delivery;
    uint8_t *out = wire_pack(&f, len);
    free(notice);
    return out;
}

static uint8_t *pack_broker_delivery_copy(size_t *len)
{
    size_t header_len;
    uint8_t *header = pack_header(&header_len);
    if (header == NULL)
        return NULL;
    Referral__V1__Envelope env;
    fill_envelope(&env, header, header_len, true);
    Referral__V1__AttemptCopy copy = REFERRAL__V1__ATTEMPT_COPY__INIT;
    copy.attempt_id = bin(notice_id, sizeof notice_id);
    copy.envelope = &env;
    copy.broker_id = "broker.qingdao";
    copy.original_recipient = "qd.youth-league";
    copy.step = 1;
    copy.reason = "crisis v1 step 1: qd.youth-league did not receive it within 300 s";
    Referral__V1__Delivery delivery = REFERRAL__V1__DELIVERY__INIT;
    delivery.message_id = bin(message_id, sizeof message_id);
    delivery.attempt = 1;
    delivery.urgency = REFERRAL__V1__URGENCY__URGENCY_CRISIS;
    delivery.payload_case = REFERRAL__V1__DELIVERY__PAYLOAD_COPY;
    delivery.copy = &copy;
    Referral__V1__BrokerFrame f;
    init_broker(&f, REFERRAL__V1__BROKER_FRAME__BODY_DELIVERY);
    f.delivery = &delivery;
    uint8_t *out = wire_pack(&f, len);
    free(header);
    return out;
}

static uint8_t *pack_broker_settle_reply(size_t *len)
{
    Referral__V1__SettleReply reply = REFERRAL__V1__SETTLE_REPLY__INIT;
    reply.message_id = bin(message_id, sizeof message_id);
    reply.verb = REFERRAL__V1__SETTLE_VERB__SETTLE_VERB_ACK;
    reply.code = RESULT_OK;
    reply.detail = str("settled");
    Referral__V1__BrokerFrame f;
    init_broker(&f, REFERRAL__V1__BROKER_FRAME__BODY_SETTLE_REPLY);
    f.settle_reply = &reply;
    return wire_pack(&f, len);
}

static uint8_t *pack_broker_status(size_t *len)
{
    Referral__V1__StatusReply reply = REFERRAL__V1__STATUS_REPLY__INIT;
    reply.request_id = 43;
    reply.message_id = bin(message_id, sizeof message_id);
    reply.code = RESULT_OK;
    reply.state = REFERRAL__V1__MESSAGE_STATE__MESSAGE_STATE_DELIVERED;
    reply.attempts = 1;
    reply.updated_at_ms = NOW_MS + 5000;
    reply.detail = str("settled by qd.police.shibei");
    Referral__V1__BrokerFrame f;
    init_broker(&f, REFERRAL__V1__BROKER_FRAME__BODY_STATUS);
    f.status = &reply;
    return wire_pack(&f, len);
}

static uint8_t *pack_broker_trace(size_t *len)
{
    Referral__V1__TraceReply reply;
    fill_trace_reply(&reply);
    Referral__V1__BrokerFrame f;
    init_broker(&f, REFERRAL__V1__BROKER_FRAME__BODY_TRACE);
    f.trace = &reply;
    return wire_pack(&f, len);
}

static uint8_t *pack_broker_pong(size_t *len)
{
    Referral__V1__Pong pong = REFERRAL__V1__PONG__INIT;
    pong.nonce = 0x1234567890abcdefu;
    pong.now_ms = NOW_MS;
    Referral__V1__BrokerFrame f;
    init_broker(&f, REFERRAL__V1__BROKER_FRAME__BODY_PONG);
    f.pong = &pong;
    return wire_pack(&f, len);
}

static uint8_t *pack_broker_error(size_t *len)
{
    Referral__V1__ErrorReply error = REFERRAL__V1__ERROR_REPLY__INIT;
    error.code = REFERRAL__V1__RESULT_CODE__RESULT_NOT_IDENTIFIED;
    error.detail = str("send Hello first");
    Referral__V1__BrokerFrame f;
    init_broker(&f, REFERRAL__V1__BROKER_FRAME__BODY_ERROR);
    f.error = &error;
    return wire_pack(&f, len);
}

/* ---- peer frames ---------------------------------------------------------- */

static void init_peer(Referral__V1__PeerFrame *f, Referral__V1__PeerFrame__BodyCase body)
{
    referral__v1__peer_frame__init(f);
    f->version = V1;
    f->body_case = body;
}

static uint8_t *pack_peer_hello(size_t *len)
{
    Referral__V1__PeerHello hello = REFERRAL__V1__PEER_HELLO__INIT;
    hello.broker_id = str("qd.broker.a");
    hello.directory_version = 7;
    Referral__V1__PeerFrame f;
    init_peer(&f, REFERRAL__V1__PEER_FRAME__BODY_HELLO);
    f.hello = &hello;
    return wire_pack(&f, len);
}

static uint8_t *pack_peer_forward(size_t *len)
{
    size_t header_len;
    uint8_t *header = pack_header(&header_len);
    if (header == NULL)
        return NULL;
    Referral__V1__Envelope env;
    fill_envelope(&env, header, header_len, true);
    Referral__V1__Forward forward = REFERRAL__V1__FORWARD__INIT;
    forward.sequence = 9;
    forward.envelope = &env;
    Referral__V1__PeerFrame f;
    init_peer(&f, REFERRAL__V1__PEER_FRAME__BODY_FORWARD);
    f.forward = &forward;
    uint8_t *out = wire_pack(&f, len);
    free(header);
    return out;
}

static uint8_t *pack_peer_hop_ack(size_t *len)
{
    Referral__V1__HopAck ack = REFERRAL__V1__HOP_ACK__INIT;
    ack.sequence = 9;
    ack.message_id = bin(message_id, sizeof message_id);
    ack.code = RESULT_OK;
    ack.detail = str("stored");
    Referral__V1__PeerFrame f;
    init_peer(&f, REFERRAL__V1__PEER_FRAME__BODY_HOP_ACK);
    f.hop_ack = &ack;
    return wire_pack(&f, len);
}

static uint8_t *pack_peer_heartbeat(size_t *len)
{
    Referral__V1__Heartbeat beat = REFERRAL__V1__HEARTBEAT__INIT;
    beat.now_ms = NOW_MS;
    beat.queued = 3;
    Referral__V1__PeerFrame f;
    init_peer(&f, REFERRAL__V1__PEER_FRAME__BODY_HEARTBEAT);
    f.heartbeat = &beat;
    return wire_pack(&f, len);
}

static uint8_t *pack_peer_trace_query(size_t *len)
{
    Referral__V1__TraceQuery query = REFERRAL__V1__TRACE_QUERY__INIT;
    query.request_id = 45;
    query.referral_id = bin(referral_id, sizeof referral_id);
    Referral__V1__PeerFrame f;
    init_peer(&f, REFERRAL__V1__PEER_FRAME__BODY_TRACE_QUERY);
    f.trace_query = &query;
    return wire_pack(&f, len);
}

static uint8_t *pack_peer_trace_reply(size_t *len)
{
    Referral__V1__TraceReply reply;
    fill_trace_reply(&reply);
    reply.is_truncated = true;
    Referral__V1__PeerFrame f;
    init_peer(&f, REFERRAL__V1__PEER_FRAME__BODY_TRACE_REPLY);
    f.trace_reply = &reply;
    return wire_pack(&f, len);
}

static uint8_t *pack_peer_notice(size_t *len)
{
    uint8_t *notice;
    Referral__V1__SignedNotice sn;
    if (!fill_signed_notice(&sn, &notice))
        return NULL;
    Referral__V1__PeerFrame f;
    init_peer(&f, REFERRAL__V1__PEER_FRAME__BODY_NOTICE);
    f.notice = &sn;
    uint8_t *out = wire_pack(&f, len);
    free(notice);
    return out;
}

static uint8_t *pack_peer_error(size_t *len)
{
    Referral__V1__ErrorReply error = REFERRAL__V1__ERROR_REPLY__INIT;
    error.code = REFERRAL__V1__RESULT_CODE__RESULT_VERSION_MISMATCH;
    error.detail = str("protocol version 2 is not spoken here");
    Referral__V1__PeerFrame f;
    init_peer(&f, REFERRAL__V1__PEER_FRAME__BODY_ERROR);
    f.error = &error;
    return wire_pack(&f, len);
}

/* ---- sealed-body plaintexts ----------------------------------------------- */

static uint8_t *pack_plaintext_case_file(size_t *len)
{
    Referral__V1__SafeContactRule via_school = REFERRAL__V1__SAFE_CONTACT_RULE__INIT;
    via_school.channel = str("school counsellor");
    via_school.detail = str("Ms Wang, weekdays");
    Referral__V1__SafeContactRule not_father = REFERRAL__V1__SAFE_CONTACT_RULE__INIT;
    not_father.channel = str("phone");
    not_father.detail = str("father's mobile");
    not_father.is_forbidden = true;
    Referral__V1__SafeContactRule *rules[] = {&via_school, &not_father};
    Referral__V1__Subject subject = REFERRAL__V1__SUBJECT__INIT;
    subject.pseudonym = str("child-A7");
    subject.age_years = 13;
    subject.gender = str("f");
    subject.location = str("Qingdao, Shibei district");
    subject.school = str("No. 9 middle school");
    subject.n_safe_contact = 2;
    subject.safe_contact = rules;

    Referral__V1__Guardian mother = REFERRAL__V1__GUARDIAN__INIT;
    mother.relation = str("mother");
    mother.name = str("Li");
    mother.phone = str("+86 532 1111 2222");
    mother.is_safe_contact = true;
    Referral__V1__Guardian *guardians[] = {&mother};

    char *factors[] = {"suicidal ideation", "access to means"};
    Referral__V1__RiskAssessment risk = REFERRAL__V1__RISK_ASSESSMENT__INIT;
    risk.level = REFERRAL__V1__RISK_LEVEL__RISK_LEVEL_HIGH;
    risk.n_factors = 2;
    risk.factors = factors;
    risk.assessed_by = str("desk worker 14");
    risk.assessed_at_ms = NOW_MS - 60000;

    Referral__V1__LegalBasis legal = REFERRAL__V1__LEGAL_BASIS__INIT;
    legal.basis = str("Minors Protection Law, art. 11");
    legal.consent = REFERRAL__V1__CONSENT__CONSENT_NOT_REQUIRED;

    char *allowed[] = {"qd.education.shibei"};
    Referral__V1__SharingLimits sharing = REFERRAL__V1__SHARING_LIMITS__INIT;
    sharing.is_onward_sharing_forbidden = true;
    sharing.n_allowed_agencies = 1;
    sharing.allowed_agencies = allowed;

    Referral__V1__Attachment note = REFERRAL__V1__ATTACHMENT__INIT;
    note.name = str("call-notes.pdf");
    note.media_type = str("application/pdf");
    note.content = bin(attachment, sizeof attachment);
    note.sha256 = bin(sha256, sizeof sha256);
    Referral__V1__Attachment *attachments[] = {&note};

    Referral__V1__CaseFile file = REFERRAL__V1__CASE_FILE__INIT;
    file.category = REFERRAL__V1__CASE_CATEGORY__CASE_CATEGORY_PSYCHOLOGICAL_SUPPORT;
    file.subject = &subject;
    file.n_guardians = 1;
    file.guardians = guardians;
    file.risk = &risk;
    file.narrative = str("caller describes a plan; safety plan agreed for tonight");
    file.requested_action = str("welfare check within the hour");
    file.legal = &legal;
    file.sharing = &sharing;
    file.n_attachments = 1;
    file.attachments = attachments;
    file.desk_case_number = str("12355-2026-000042");

    /* No padding: the body is the only field, so every prefix is refused. */
    Referral__V1__BodyPlaintext p = REFERRAL__V1__BODY_PLAINTEXT__INIT;
    p.body_case = REFERRAL__V1__BODY_PLAINTEXT__BODY_CASE_FILE;
    p.case_file = &file;
    return wire_pack(&p, len);
}

static uint8_t *pack_plaintext_receipt(size_t *len)
{
    Referral__V1__Receipt receipt = REFERRAL__V1__RECEIPT__INIT;
    receipt.referral_id = bin(referral_id, sizeof referral_id);
    receipt.message_id = bin(message_id, sizeof message_id);
    receipt.attempt_id = bin(attempt_id, sizeof attempt_id);
    receipt.level = REFERRAL__V1__ACK_LEVEL__ACK_LEVEL_ACCEPTED_BY_AGENCY;
    receipt.at_ms = NOW_MS + 900000;
    receipt.agency_id = str("qd.police.shibei");
    receipt.person = str("officer Zhang");
    Referral__V1__BodyPlaintext p = REFERRAL__V1__BODY_PLAINTEXT__INIT;
    p.body_case = REFERRAL__V1__BODY_PLAINTEXT__BODY_RECEIPT;
    p.receipt = &receipt;
    p.padding = bin(padding, sizeof padding);
    return wire_pack(&p, len);
}

static uint8_t *pack_plaintext_update(size_t *len)
{
    Referral__V1__CaseUpdate update = REFERRAL__V1__CASE_UPDATE__INIT;
    update.narrative = str("the child called again; now at a friend's home");
    Referral__V1__BodyPlaintext p = REFERRAL__V1__BODY_PLAINTEXT__INIT;
    p.body_case = REFERRAL__V1__BODY_PLAINTEXT__BODY_UPDATE;
    p.update = &update;
    p.padding = bin(padding, sizeof padding);
    return wire_pack(&p, len);
}

static uint8_t *pack_plaintext_alert(size_t *len)
{
    Referral__V1__Alert alert;
    fill_alert(&alert);
    Referral__V1__BodyPlaintext p = REFERRAL__V1__BODY_PLAINTEXT__INIT;
    p.body_case = REFERRAL__V1__BODY_PLAINTEXT__BODY_ALERT;
    p.alert = &alert;
    p.padding = bin(padding, sizeof padding);
    return wire_pack(&p, len);
}

/* ---- the admin socket ------------------------------------------------------ */

static uint8_t *pack_admin_request_status(size_t *len)
{
    Referral__V1__AdminRequest r = REFERRAL__V1__ADMIN_REQUEST__INIT;
    r.version = REFERRAL__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    r.request_id = 41;
    r.operator_name = str("ops.alice");
    r.command = str("status");
    return wire_pack(&r, len);
}

static uint8_t *pack_admin_request_hold(size_t *len)
{
    Referral__V1__AdminRequest r = REFERRAL__V1__ADMIN_REQUEST__INIT;
    r.version = REFERRAL__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    r.request_id = 42;
    r.operator_name = str("ops.alice");
    r.command = str("hold");
    r.id = bin(message_id, sizeof message_id);
    r.limit = 20;
    r.reason = str("the recipient asked for a pause");
    return wire_pack(&r, len);
}

static uint8_t *pack_admin_reply_ok(size_t *len)
{
    Referral__V1__AdminReply r = REFERRAL__V1__ADMIN_REPLY__INIT;
    r.version = REFERRAL__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    r.request_id = 41;
    r.code = REFERRAL__V1__RESULT_CODE__RESULT_OK;
    r.json = str("{\"broker\":\"broker.test\",\"sessions\":2}");
    return wire_pack(&r, len);
}

static uint8_t *pack_admin_reply_refused(size_t *len)
{
    Referral__V1__AdminReply r = REFERRAL__V1__ADMIN_REPLY__INIT;
    r.version = REFERRAL__V1__PROTOCOL_VERSION__PROTOCOL_VERSION_1;
    r.request_id = 42;
    r.code = REFERRAL__V1__RESULT_CODE__RESULT_UNKNOWN_MESSAGE;
    r.detail = str("message 019b753a98007011 is already final (delivered)");
    r.json = str("{}");
    return wire_pack(&r, len);
}

/* ---- the table ------------------------------------------------------------ */

const sample samples[] = {
    {"client-hello", SAMPLE_CLIENT_FRAME, true, pack_client_hello},
    {"client-submit", SAMPLE_CLIENT_FRAME, true, pack_client_submit},
    {"client-credit", SAMPLE_CLIENT_FRAME, true, pack_client_credit},
    {"client-settle", SAMPLE_CLIENT_FRAME, true, pack_client_settle},
    {"client-status", SAMPLE_CLIENT_FRAME, true, pack_client_status},
    {"client-trace", SAMPLE_CLIENT_FRAME, true, pack_client_trace},
    {"client-ping", SAMPLE_CLIENT_FRAME, true, pack_client_ping},
    {"broker-welcome", SAMPLE_BROKER_FRAME, true, pack_broker_welcome},
    {"broker-submit-reply", SAMPLE_BROKER_FRAME, true, pack_broker_submit_reply},
    {"broker-delivery-envelope", SAMPLE_BROKER_FRAME, true, pack_broker_delivery_envelope},
    {"broker-delivery-notice", SAMPLE_BROKER_FRAME, true, pack_broker_delivery_notice},
    {"broker-delivery-copy", SAMPLE_BROKER_FRAME, false, pack_broker_delivery_copy},
    {"broker-settle-reply", SAMPLE_BROKER_FRAME, true, pack_broker_settle_reply},
    {"broker-status", SAMPLE_BROKER_FRAME, true, pack_broker_status},
    {"broker-trace", SAMPLE_BROKER_FRAME, true, pack_broker_trace},
    {"broker-pong", SAMPLE_BROKER_FRAME, true, pack_broker_pong},
    {"broker-error", SAMPLE_BROKER_FRAME, true, pack_broker_error},
    {"peer-hello", SAMPLE_PEER_FRAME, true, pack_peer_hello},
    {"peer-forward", SAMPLE_PEER_FRAME, true, pack_peer_forward},
    {"peer-hop-ack", SAMPLE_PEER_FRAME, true, pack_peer_hop_ack},
    {"peer-heartbeat", SAMPLE_PEER_FRAME, true, pack_peer_heartbeat},
    {"peer-trace-query", SAMPLE_PEER_FRAME, true, pack_peer_trace_query},
    {"peer-trace-reply", SAMPLE_PEER_FRAME, true, pack_peer_trace_reply},
    {"peer-notice", SAMPLE_PEER_FRAME, true, pack_peer_notice},
    {"peer-error", SAMPLE_PEER_FRAME, true, pack_peer_error},
    {"envelope", SAMPLE_ENVELOPE, true, pack_envelope},
    {"envelope-relayed", SAMPLE_ENVELOPE, false, pack_envelope_relayed},
    {"notice-minimal", SAMPLE_NOTICE, true, pack_notice_minimal},
    {"notice-ack-level", SAMPLE_NOTICE, false, pack_notice_ack_level},
    {"notice-alert", SAMPLE_NOTICE, false, pack_notice_alert},
    {"plaintext-case-file", SAMPLE_PLAINTEXT, true, pack_plaintext_case_file},
    {"plaintext-receipt", SAMPLE_PLAINTEXT, false, pack_plaintext_receipt},
    {"plaintext-update", SAMPLE_PLAINTEXT, false, pack_plaintext_update},
    {"plaintext-alert", SAMPLE_PLAINTEXT, false, pack_plaintext_alert},
    {"admin-request-status", SAMPLE_ADMIN_REQUEST, true, pack_admin_request_status},
    {"admin-request-hold", SAMPLE_ADMIN_REQUEST, false, pack_admin_request_hold},
    {"admin-reply-ok", SAMPLE_ADMIN_REPLY, false, pack_admin_reply_ok},
    {"admin-reply-refused", SAMPLE_ADMIN_REPLY, false, pack_admin_reply_refused},
};
const size_t samples_count = sizeof samples / sizeof samples[0];

const char *sample_decoder_name(sample_decoder d)
{
    switch (d) {
    case SAMPLE_CLIENT_FRAME: return "client-frame";
    case SAMPLE_BROKER_FRAME: return "broker-frame";
    case SAMPLE_PEER_FRAME: return "peer-frame";
    case SAMPLE_ENVELOPE: return "envelope";
    case SAMPLE_NOTICE: return "notice";
    case SAMPLE_PLAINTEXT: return "plaintext";
    case SAMPLE_ADMIN_REQUEST: return "admin-request";
    case SAMPLE_ADMIN_REPLY: return "admin-reply";
    case SAMPLE_DECODER_COUNT: break;
    }
    return "unknown";
}

const ProtobufCMessageDescriptor *sample_decoder_descriptor(sample_decoder d)
{
    switch (d) {
    case SAMPLE_CLIENT_FRAME: return &referral__v1__client_frame__descriptor;
    case SAMPLE_BROKER_FRAME: return &referral__v1__broker_frame__descriptor;
    case SAMPLE_PEER_FRAME: return &referral__v1__peer_frame__descriptor;
    case SAMPLE_ENVELOPE: return &referral__v1__envelope__descriptor;
    case SAMPLE_NOTICE: return &referral__v1__notice__descriptor;
    case SAMPLE_PLAINTEXT: return &referral__v1__body_plaintext__descriptor;
    case SAMPLE_ADMIN_REQUEST: return &referral__v1__admin_request__descriptor;
    case SAMPLE_ADMIN_REPLY: return &referral__v1__admin_reply__descriptor;
    case SAMPLE_DECODER_COUNT: break;
    }
    return NULL;
}

const sample *sample_find(const char *name)
{
    for (size_t i = 0; i < samples_count; i++) {
        if (strcmp(samples[i].name, name) == 0)
            return &samples[i];
    }
    return NULL;
}
