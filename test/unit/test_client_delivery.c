/*
 * test_client_delivery: libreferral's receiving side (client-lib/delivery.c)
 * through its seam, without a broker: a client built on its state
 * directory, keys and a directory signed by the same code as referralctl's,
 * fed Delivery messages as the pump hands them (on_envelope, on_copy,
 * on_notice), then committed as one batch. No socket: settles and receipts
 * that would leave are dropped, what is stored is checked.
 *
 *   escalation copies: accepted only by an agency the sender sealed the body
 *   for; handed as the referral with the original recipient and the reason;
 *   kept under the copy's own id (distinct from the original); handed again
 *   after a restart with the same fields; no receipt for DELIVERED (the
 *   broker's word); ref_acknowledge() answers under the sender's message
 *   id with the copy's attempt id, and refuses DELIVERED.
 *   alerts and stand-downs: signed by a broker of the directory, handed to
 *   an agency that never saw the referral, with their accessors; a forged
 *   one is refused.
 */
#define _XOPEN_SOURCE 700   /* nftw */

#include <errno.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "client_impl.h"
#include "clock.h"
#include "envelope.h"
#include "keys.h"
#include "sign.h"
#include "wire.h"

#define BROKER_ID "broker.test"
#define DESK "sh.12355.desk"
#define YOUTH "qd.youth-league"
#define SCHOOL "qd.school"         /* YOUTH's backup agency in the directory */
#define HOSPITAL "qd.hospital"     /* in the directory, no reader of YOUTH's referrals */

static char trust_dir[512], keydir[600], dir_path[600], root_path[700];

/* ---- the trust fixture -------------------------------------------------- */

/* A directory source as referralctl reads it: YOUTH's escalation chain is
 * SCHOOL; HOSPITAL is no reader of what is sent to YOUTH. */
static bool write_directory(void)
{
    char src[700];
    snprintf(src, sizeof src, "%s/directory.json", trust_dir);
    FILE *f = fopen(src, "w");
    if (f == NULL)
        return false;
    static const char *const agencies[] = {DESK, YOUTH, SCHOOL, HOSPITAL};
    fprintf(f, "{\"version\": 1, \"valid_days\": 30, \"agencies\": [");
    for (size_t i = 0; i < 4; i++)
        fprintf(f, "%s{\"id\": \"%s\", \"kind\": \"other\", \"region\": \"qingdao\", "
                "\"home_broker\": \"%s\", \"keys\": \"keys/%s.pub.json\"%s}", i ? ", " : "",
                agencies[i], BROKER_ID, agencies[i],
                strcmp(agencies[i], YOUTH) == 0 ? ", \"backup_agencies\": [\"" SCHOOL "\"]"
                                                : "");
    fprintf(f, "], \"brokers\": [{\"id\": \"%s\", \"endpoint\": \"tcp://127.0.0.1:0\", "
            "\"keys\": \"keys/%s.pub.json\"}], \"revoked_key_ids\": []}\n", BROKER_ID,
            BROKER_ID);
    return fclose(f) == 0;
}

static const char *referralctl;

static int run_referralctl_sign(void)
{
    char cmd[3000];
    snprintf(cmd, sizeof cmd, "'%s' directory sign --in '%s/directory.json' --root-key "
             "'%s/root.sign.pem' --out '%s' >/dev/null", referralctl, trust_dir, keydir,
             dir_path);
    return system(cmd);
}

static int make_trust(void **unused)
{
    (void)unused;
    const char *tmp = getenv("TMPDIR");
    snprintf(trust_dir, sizeof trust_dir, "%s/referral-cdel-XXXXXX", tmp ? tmp : "/tmp");
    if (mkdtemp(trust_dir) == NULL)
        return -1;
    snprintf(keydir, sizeof keydir, "%s/keys", trust_dir);
    snprintf(dir_path, sizeof dir_path, "%s/directory.signed", trust_dir);
    snprintf(root_path, sizeof root_path, "%s/root.pub.json", keydir);
    if (mkdir(keydir, 0700) != 0)
        return -1;
    static const char *const ids[] = {"root", BROKER_ID, DESK, YOUTH, SCHOOL, HOSPITAL};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        keys_identity k;
        char why[300];
        bool is_made = keys_generate(keydir, ids[i], false, &k, why, sizeof why);
        keys_wipe(&k);
        if (!is_made)
            return -1;
    }
    if (!write_directory() || run_referralctl_sign() != 0)
        return -1;
    return 0;
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) == 0 ? 0 : -1;
}

static void remove_tree(const char *dir)
{
    if (nftw(dir, remove_one, 16, FTW_DEPTH | FTW_PHYS) != 0)
        fprintf(stderr, "cannot remove %s: %s\n", dir, strerror(errno));
}

static int remove_trust(void **unused)
{
    (void)unused;
    remove_tree(trust_dir);
    return 0;
}

/* ---- clients without a socket -------------------------------------------- */

/* A client of agency id on state directory state_dir (made if missing), as
 * ref_client_new() builds it but never connected. */
static ref_client *client_as(const char *id, const char *state_dir)
{
    ref_client *c = calloc(1, sizeof *c);
    assert_non_null(c);
    char why[300] = "";
    uint8_t root[32];
    assert_true(keys_load(keydir, id, &c->keys, why, sizeof why));
    assert_true(keys_parse_sign_public(root_path, root, why, sizeof why));
    assert_int_equal(directory_load(dir_path, root, 0, clock_now_ms(), &c->dir, why, sizeof why),
                     DIRECTORY_OK);
    assert_int_equal(state_open(state_dir, &c->st, why, sizeof why), REF_OK);
    c->timeout_ms = 100;
    c->credit = 16;
    size_t unreadable = 0;
    state_inbox_each(c->st, reload_one, c, &unreadable);
    assert_int_equal(unreadable, 0);
    return c;
}

static char *state_dir_new(void)
{
    char path[700];
    snprintf(path, sizeof path, "%s/state-XXXXXX", trust_dir);
    assert_non_null(mkdtemp(path));
    return strdup(path);
}

/* A crisis referral from DESK to YOUTH, signed and sealed by libreferral's
 * composer (readers: YOUTH and its chain, SCHOOL). */
static Referral__V1__Envelope *referral_to_youth(uint8_t mid[16])
{
    keys_identity desk;
    char why[300] = "";
    uint8_t root[32], rid[16];
    directory *dir = NULL;
    assert_true(keys_load(keydir, DESK, &desk, why, sizeof why));
    assert_true(keys_parse_sign_public(root_path, root, why, sizeof why));
    assert_int_equal(directory_load(dir_path, root, 0, clock_now_ms(), &dir, why, sizeof why),
                     DIRECTORY_OK);
    Referral__V1__CaseFile cf = REFERRAL__V1__CASE_FILE__INIT;
    cf.narrative = "Caller, 17, has a plan for tonight";
    cf.requested_action = "call within 15 min";
    cf.category = REFERRAL__V1__CASE_CATEGORY__CASE_CATEGORY_PSYCHOLOGICAL_SUPPORT;
    Referral__V1__BodyPlaintext p = REFERRAL__V1__BODY_PLAINTEXT__INIT;
    p.body_case = REFERRAL__V1__BODY_PLAINTEXT__BODY_CASE_FILE;
    p.case_file = &cf;
    size_t plen, len;
    uint8_t *plain = wire_pack(&p, &plen), *packed = NULL;
    envelope_spec spec = {.kind = REFERRAL__V1__MESSAGE_KIND__MESSAGE_KIND_REFERRAL,
                          .to_agency = YOUTH,
                          .urgency = REFERRAL__V1__URGENCY__URGENCY_CRISIS,
                          .ttl_ms = 3600000,
                          .plaintext = plain,
                          .plaintext_len = plen};
    assert_int_equal(envelope_compose(&desk, dir, &spec, &packed, &len, mid, rid, why,
                                      sizeof why), REF_OK);
    Referral__V1__Envelope *env = NULL;
    assert_int_equal(wire_decode_envelope(packed, len, NULL, &env, why, sizeof why), WIRE_OK);
    free(plain);
    free(packed);
    directory_destroy(&dir);
    keys_wipe(&desk);
    return env;
}

/* Hand dl to the pump's handler for its payload and commit the batch. */
static void arrive(ref_client *c, const Referral__V1__Delivery *dl)
{
    batch b;
    memset(&b, 0, sizeof b);
    if (dl->payload_case == REFERRAL__V1__DELIVERY__PAYLOAD_ENVELOPE)
        on_envelope(c, &b, dl);
    else if (dl->payload_case == REFERRAL__V1__DELIVERY__PAYLOAD_COPY)
        on_copy(c, &b, dl);
    else
        on_notice(c, &b, dl);
    assert_int_equal(batch_finish(c, &b), REF_OK);
}

static const uint8_t COPY_ID[16] = {0xc0, 0x01}, ATTEMPT_ID[16] = {0xa7, 0x7e};

static void copy_delivery(Referral__V1__Delivery *dl, Referral__V1__AttemptCopy *cp,
                          Referral__V1__Envelope *env)
{
    referral__v1__attempt_copy__init(cp);
    cp->attempt_id = (ProtobufCBinaryData){16, (uint8_t *)(uintptr_t)ATTEMPT_ID};
    cp->envelope = env;
    cp->broker_id = BROKER_ID;
    cp->original_recipient = YOUTH;
    cp->step = 1;
    cp->round = 0;
    cp->reason = "qd.youth-league did not acknowledge within 10 minutes";
    referral__v1__delivery__init(dl);
    dl->message_id = (ProtobufCBinaryData){16, (uint8_t *)(uintptr_t)COPY_ID};
    dl->attempt = 1;
    dl->urgency = REFERRAL__V1__URGENCY__URGENCY_CRISIS;
    dl->payload_case = REFERRAL__V1__DELIVERY__PAYLOAD_COPY;
    dl->copy = cp;
}

/* Walks the outbox for receipts answering mid, each opened as DESK (their
 * reader): how many, and the last one's header and body (wire_free). */
typedef struct {
    const uint8_t *mid;
    int found;
    Referral__V1__BodyPlaintext *last;
    Referral__V1__RoutingHeader *header;
} receipt_search;

static void find_receipt(const uint8_t id[16], const uint8_t *bytes, size_t len, void *ctx)
{
    (void)id;
    receipt_search *rs = ctx;
    char why[300] = "";
    keys_identity desk;
    uint8_t root[32];
    directory *dir = NULL;
    assert_true(keys_load(keydir, DESK, &desk, why, sizeof why));
    assert_true(keys_parse_sign_public(root_path, root, why, sizeof why));
    assert_int_equal(directory_load(dir_path, root, 0, clock_now_ms(), &dir, why, sizeof why),
                     DIRECTORY_OK);
    Referral__V1__Envelope *env = NULL;
    Referral__V1__RoutingHeader *h = NULL;
    Referral__V1__BodyPlaintext *p = NULL;
    assert_int_equal(wire_decode_envelope(bytes, len, NULL, &env, why, sizeof why), WIRE_OK);
    assert_int_equal(envelope_open(&desk, dir, env, &h, &p, why, sizeof why), REF_OK);
    if (h->in_reply_to.len == 16 && memcmp(h->in_reply_to.data, rs->mid, 16) == 0) {
        rs->found++;
        wire_free(rs->last);
        wire_free(rs->header);
        rs->last = p;
        rs->header = h;
    } else {
        wire_free(p);
        wire_free(h);
    }
    wire_free(env);
    directory_destroy(&dir);
    keys_wipe(&desk);
}

/* ---- escalation copies ----------------------------------------------------- */

static void copy_for_a_reader_of_the_body_is_handed_as_the_referral(void **unused)
{
    (void)unused;
    char *sd = state_dir_new(), mid_hex[REF_ID_HEX_LEN + 1];
    uint8_t mid[16];
    Referral__V1__Envelope *env = referral_to_youth(mid);
    ids_hex(mid, 16, mid_hex);
    Referral__V1__Delivery dl;
    Referral__V1__AttemptCopy cp;
    copy_delivery(&dl, &cp, env);

    ref_client *c = client_as(SCHOOL, sd);
    arrive(c, &dl);
    assert_int_equal(c->n_ready, 1);
    const ref_delivery *d = c->ready[0];
    assert_int_equal(ref_delivery_kind_of(d), REF_DELIVERY_REFERRAL);
    assert_true(ref_delivery_is_copy(d));
    assert_string_equal(ref_delivery_original_recipient(d), YOUTH);
    assert_string_equal(ref_delivery_detail(d), cp.reason);
    assert_string_equal(ref_delivery_message_id(d), mid_hex);   /* the sender's id */
    assert_memory_equal(d->wire_id, COPY_ID, 16);                /* kept under the copy's */
    assert_string_equal(ref_delivery_from(d), DESK);
    assert_string_equal(ref_delivery_narrative(d), "Caller, 17, has a plan for tonight");
    assert_int_equal(ref_delivery_urgency(d), REF_URGENCY_CRISIS);
    assert_string_equal(ref_delivery_alert_kind(d), "");
    state_copy_ref ref;
    assert_int_equal(state_copy_ref_get(c->st, mid, &ref), REF_OK);
    assert_memory_equal(ref.copy_id, COPY_ID, 16);
    assert_memory_equal(ref.attempt_id, ATTEMPT_ID, 16);

    /* DELIVERED is the broker's word (its notice at the settle): the
     * library composes no receipt for it. */
    receipt_search rs = {.mid = mid};
    state_outbox_each(c->st, find_receipt, &rs);
    assert_int_equal(rs.found, 0);

    /* Delivered again: settled, not handed twice. */
    arrive(c, &dl);
    assert_int_equal(c->n_ready, 1);

    /* A restart hands it again, with the same fields. */
    ref_client_destroy(&c);
    c = client_as(SCHOOL, sd);
    assert_int_equal(c->n_ready, 1);
    d = c->ready[0];
    assert_true(ref_delivery_is_copy(d));
    assert_string_equal(ref_delivery_original_recipient(d), YOUTH);
    assert_string_equal(ref_delivery_detail(d), cp.reason);
    assert_string_equal(ref_delivery_message_id(d), mid_hex);
    assert_memory_equal(d->wire_id, COPY_ID, 16);

    /* An agency never asserts DELIVERED. */
    assert_int_equal(ref_acknowledge(c, mid_hex, REF_LEVEL_DELIVERED, "Wang Li", NULL),
                     REF_E_INVALID);
    /* Acknowledged by the sender's message id: the receipt is composed and
     * stored (no socket here, so it cannot leave); it answers the sender's
     * message, naming the copy's attempt. */
    assert_int_equal(ref_acknowledge(c, mid_hex, REF_LEVEL_ACCEPTED_BY_AGENCY, "Wang Li", NULL),
                     REF_E_TRANSPORT);
    memset(&rs, 0, sizeof rs);
    rs.mid = mid;
    state_outbox_each(c->st, find_receipt, &rs);
    assert_int_equal(rs.found, 1);
    assert_int_equal(rs.last->receipt->level,
                     REFERRAL__V1__ACK_LEVEL__ACK_LEVEL_ACCEPTED_BY_AGENCY);
    assert_memory_equal(rs.last->receipt->message_id.data, mid, 16);
    assert_int_equal(rs.last->receipt->attempt_id.len, 16);
    assert_memory_equal(rs.last->receipt->attempt_id.data, ATTEMPT_ID, 16);
    assert_string_equal(rs.header->to_agency, DESK);
    assert_string_equal(rs.header->from_agency, SCHOOL);
    wire_free(rs.last);
    wire_free(rs.header);
    ref_client_destroy(&c);
    wire_free(env);
    remove_tree(sd);
    free(sd);
}

static void copy_for_an_agency_the_sender_did_not_seal_for_is_refused(void **unused)
{
    (void)unused;
    char *sd = state_dir_new();
    uint8_t mid[16];
    Referral__V1__Envelope *env = referral_to_youth(mid);
    Referral__V1__Delivery dl;
    Referral__V1__AttemptCopy cp;
    copy_delivery(&dl, &cp, env);
    ref_client *c = client_as(HOSPITAL, sd);
    arrive(c, &dl);
    assert_int_equal(c->n_ready, 0);
    assert_int_equal(state_inbox_count(c->st), 0);
    assert_int_equal(state_outbox_count(c->st), 0);
    /* Nor does an envelope not addressed to it open without the copy. */
    dl.payload_case = REFERRAL__V1__DELIVERY__PAYLOAD_ENVELOPE;
    dl.envelope = env;
    ref_client_destroy(&c);
    c = client_as(SCHOOL, sd);
    arrive(c, &dl);
    assert_int_equal(c->n_ready, 0);
    ref_client_destroy(&c);
    wire_free(env);
    remove_tree(sd);
    free(sd);
}

static void original_and_copy_are_distinct_deliveries(void **unused)
{
    (void)unused;
    char *sd = state_dir_new();
    uint8_t mid[16];
    Referral__V1__Envelope *env = referral_to_youth(mid);
    Referral__V1__Delivery original = REFERRAL__V1__DELIVERY__INIT, dl;
    original.message_id = (ProtobufCBinaryData){16, mid};
    original.attempt = 1;
    original.urgency = REFERRAL__V1__URGENCY__URGENCY_CRISIS;
    original.payload_case = REFERRAL__V1__DELIVERY__PAYLOAD_ENVELOPE;
    original.envelope = env;
    Referral__V1__AttemptCopy cp;
    copy_delivery(&dl, &cp, env);
    ref_client *c = client_as(YOUTH, sd);
    arrive(c, &original);
    arrive(c, &dl);
    assert_int_equal(c->n_ready, 2);
    assert_false(ref_delivery_is_copy(c->ready[0]));
    assert_true(ref_delivery_is_copy(c->ready[1]));
    assert_string_equal(ref_delivery_message_id(c->ready[0]),
                        ref_delivery_message_id(c->ready[1]));
    assert_string_equal(ref_delivery_detail(c->ready[0]), "");
    assert_int_equal(state_inbox_count(c->st), 2);
    ref_client_destroy(&c);
    wire_free(env);
    remove_tree(sd);
    free(sd);
}

/* ---- alerts and stand-downs -------------------------------------------------- */

/* Notice n signed with signer's key into sn, carried by Delivery dl;
 * *packed (free()) holds the signed notice bytes, sig and kid the rest. */
static void signed_notice(const char *signer, const Referral__V1__Notice *n,
                          Referral__V1__SignedNotice *sn, Referral__V1__Delivery *dl,
                          uint8_t **packed, uint8_t sig[SIGN_BYTES], uint8_t kid[SIGN_KEY_ID_BYTES])
{
    keys_identity k;
    char why[300] = "";
    assert_true(keys_load(keydir, signer, &k, why, sizeof why));
    size_t len;
    *packed = wire_pack(n, &len);
    assert_true(sign_detached(k.sign_secret, "referral.v1 notice", *packed, len, sig));
    sign_key_id(k.sign_public, kid);
    keys_wipe(&k);
    referral__v1__signed_notice__init(sn);
    sn->notice = (ProtobufCBinaryData){len, *packed};
    sn->signature = (ProtobufCBinaryData){SIGN_BYTES, sig};
    sn->signer_key_id = (ProtobufCBinaryData){SIGN_KEY_ID_BYTES, kid};
    referral__v1__delivery__init(dl);
    dl->message_id = n->notice_id;
    dl->attempt = 1;
    dl->urgency = REFERRAL__V1__URGENCY__URGENCY_CRISIS;
    dl->payload_case = REFERRAL__V1__DELIVERY__PAYLOAD_NOTICE;
    dl->notice = sn;
}

static void alert_is_handed_to_an_agency_that_never_saw_the_referral(void **unused)
{
    (void)unused;
    char *sd = state_dir_new();
    uint8_t nid[16] = {0x0a, 1}, rid[16] = {0x7e, 2}, mid[16] = {0x3e, 3};
    Referral__V1__EmergencyContact c110 = REFERRAL__V1__EMERGENCY_CONTACT__INIT,
                                   duty = REFERRAL__V1__EMERGENCY_CONTACT__INIT;
    c110.label = "Qingdao 110";
    c110.phone = "110";
    duty.label = "duty supervisor";
    duty.phone = "0532-8000";
    Referral__V1__EmergencyContact *contacts[] = {&c110, &duty};
    char *copied[] = {SCHOOL, "qd.civil"};
    Referral__V1__Alert a = REFERRAL__V1__ALERT__INIT;
    a.referral_id = (ProtobufCBinaryData){16, rid};
    a.message_id = (ProtobufCBinaryData){16, mid};
    a.kind = REFERRAL__V1__ALERT_KIND__ALERT_KIND_NOT_RECEIVED;
    a.policy_id = "crisis";
    a.policy_version = 1;
    a.step = 1;
    a.round = 2;
    a.broker_id = BROKER_ID;
    a.detail = "nobody at qd.youth-league picked it up in 10 minutes";
    a.urgency = REFERRAL__V1__URGENCY__URGENCY_CRISIS;
    a.to_agency = YOUTH;
    a.n_emergency_contacts = 2;
    a.emergency_contacts = contacts;
    a.n_copied_to = 2;
    a.copied_to = copied;
    Referral__V1__Notice n = REFERRAL__V1__NOTICE__INIT;
    n.notice_id = (ProtobufCBinaryData){16, nid};
    n.kind = REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_ALERT;
    n.referral_id = (ProtobufCBinaryData){16, rid};
    n.message_id = (ProtobufCBinaryData){16, mid};
    n.broker_id = BROKER_ID;
    n.about_agency = YOUTH;
    n.detail = "";
    n.alert = &a;
    Referral__V1__SignedNotice sn;
    Referral__V1__Delivery dl;
    uint8_t *packed, sig[SIGN_BYTES], kid[SIGN_KEY_ID_BYTES];
    signed_notice(BROKER_ID, &n, &sn, &dl, &packed, sig, kid);

    ref_client *c = client_as(HOSPITAL, sd);
    arrive(c, &dl);
    assert_int_equal(c->n_ready, 1);
    const ref_delivery *d = c->ready[0];
    char hex[REF_ID_HEX_LEN + 1];
    assert_int_equal(ref_delivery_kind_of(d), REF_DELIVERY_ALERT);
    assert_string_equal(ref_delivery_alert_kind(d), "NOT_RECEIVED");
    assert_string_equal(ref_delivery_about_agency(d), YOUTH);
    assert_int_equal(ref_delivery_alert_step(d), 1);
    assert_int_equal(ref_delivery_alert_round(d), 2);
    assert_string_equal(ref_delivery_contacts(d), "Qingdao 110 110; duty supervisor 0532-8000");
    assert_string_equal(ref_delivery_copied_to(d), "qd.school, qd.civil");
    assert_string_equal(ref_delivery_detail(d), a.detail);   /* the notice's is empty */
    assert_string_equal(ref_delivery_referral_id(d), ids_hex(rid, 16, hex));
    assert_string_equal(ref_delivery_message_id(d), ids_hex(mid, 16, hex));
    assert_string_equal(ref_delivery_from(d), BROKER_ID);
    assert_false(ref_delivery_is_copy(d));
    free(packed);

    /* A stand-down: another agency accepted it. */
    uint8_t nid2[16] = {0x0b, 1};
    Referral__V1__Notice s = REFERRAL__V1__NOTICE__INIT;
    s.notice_id = (ProtobufCBinaryData){16, nid2};
    s.kind = REFERRAL__V1__NOTICE_KIND__NOTICE_KIND_STAND_DOWN;
    s.referral_id = (ProtobufCBinaryData){16, rid};
    s.message_id = (ProtobufCBinaryData){16, mid};
    s.broker_id = BROKER_ID;
    s.about_agency = SCHOOL;
    s.detail = "qd.school accepted the referral";
    signed_notice(BROKER_ID, &s, &sn, &dl, &packed, sig, kid);
    arrive(c, &dl);
    assert_int_equal(c->n_ready, 2);
    d = c->ready[1];
    assert_int_equal(ref_delivery_kind_of(d), REF_DELIVERY_STAND_DOWN);
    assert_string_equal(ref_delivery_about_agency(d), SCHOOL);
    assert_string_equal(ref_delivery_alert_kind(d), "");
    assert_string_equal(ref_delivery_contacts(d), "");
    assert_string_equal(ref_delivery_detail(d), s.detail);
    free(packed);

    /* Both are handed again after a restart, from the inbox. */
    ref_client_destroy(&c);
    c = client_as(HOSPITAL, sd);
    assert_int_equal(c->n_ready, 2);
    assert_int_equal(ref_delivery_kind_of(c->ready[0]), REF_DELIVERY_ALERT);
    assert_string_equal(ref_delivery_contacts(c->ready[0]),
                        "Qingdao 110 110; duty supervisor 0532-8000");
    assert_int_equal(ref_delivery_kind_of(c->ready[1]), REF_DELIVERY_STAND_DOWN);

    /* An alert signed by an agency, not a broker, is refused. */
    uint8_t nid3[16] = {0x0c, 1};
    n.notice_id = (ProtobufCBinaryData){16, nid3};
    signed_notice(DESK, &n, &sn, &dl, &packed, sig, kid);
    arrive(c, &dl);
    assert_int_equal(c->n_ready, 2);
    free(packed);
    ref_client_destroy(&c);
    remove_tree(sd);
    free(sd);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_client_delivery REFERRALCTL\n");
        return 2;
    }
    referralctl = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(copy_for_a_reader_of_the_body_is_handed_as_the_referral),
        cmocka_unit_test(copy_for_an_agency_the_sender_did_not_seal_for_is_refused),
        cmocka_unit_test(original_and_copy_are_distinct_deliveries),
        cmocka_unit_test(alert_is_handed_to_an_agency_that_never_saw_the_referral),
    };
    return cmocka_run_group_tests(tests, make_trust, remove_trust);
}
