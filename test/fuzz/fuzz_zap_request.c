/* Fuzz target: zap_decide (broker/zap.c), the ZAP handler's decision on a
 * multipart ZAP request, whose CURVE key (and, through libzmq, more) comes
 * from whoever connects.
 *
 * Input: frames, each a length byte L then L bytes (the last one takes
 * whatever is left if fewer remain), so any number of frames of up to 255
 * bytes can be expressed. Each kept frame is copied into a buffer of its
 * exact size (malloc(0) for an empty one), so that a read past a frame is
 * caught by AddressSanitizer.
 *
 * Context: a small fixed directory, signed at the first call: agency
 * qd.police (CURVE key 32 x 0xA1), agency qd.school (32 x 0xA2, revoked),
 * broker broker.qingdao (32 x 0xB1), broker broker.old (32 x 0xB2,
 * revoked). make_zap_seeds.py writes the seeds with these keys.
 *
 * The decision must be exactly what RFC 27 and zap.h say, which this file
 * states again independently (expected_user_id): 200 as "operator" for
 * the NULL mechanism in the admin domain; 200 as the agency for qd.police's
 * key in any other domain but the peers'; 200 as "broker:..." for
 * broker.qingdao's key in the peers' domain; 400 with no identity for
 * everything else. The request id is echoed. Anything else aborts.
 */
#include "fuzz_target.h"

#include "ids.h"
#include "sign.h"
#include "zap.h"

#define CURVE_POLICE 0xA1
#define CURVE_SCHOOL 0xA2   /* revoked */
#define CURVE_BROKER 0xB1
#define CURVE_OLD_BROKER 0xB2   /* revoked */

typedef struct {
    directory *dir;
    char police_id[ZAP_USER_ID_MAX];   /* "qd.police#KEYID" */
    char broker_id[ZAP_USER_ID_MAX];   /* "broker:broker.qingdao#KEYID" */
} context;

static ProtobufCBinaryData filled(uint8_t *buf, uint8_t byte)
{
    memset(buf, byte, 32);
    return (ProtobufCBinaryData){.len = 32, .data = buf};
}

/* Sign dir_bytes with a new root key and load it as a broker would;
 * aborts on any failure (the target would test nothing). */
static directory *load_signed(uint8_t *dir_bytes, size_t len)
{
    uint8_t pub[SIGN_PUBLIC_BYTES], sec[SIGN_SECRET_BYTES], sig[SIGN_BYTES];
    uint8_t signer[SIGN_KEY_ID_BYTES];
    if (!sign_keypair(pub, sec) ||
        !sign_detached(sec, "referral.v1 directory", dir_bytes, len, sig))
        abort();
    sign_key_id(pub, signer);
    Referral__V1__SignedDirectory sd = REFERRAL__V1__SIGNED_DIRECTORY__INIT;
    sd.directory = (ProtobufCBinaryData){.len = len, .data = dir_bytes};
    sd.signature = (ProtobufCBinaryData){.len = sizeof sig, .data = sig};
    sd.signer_key_id = (ProtobufCBinaryData){.len = sizeof signer, .data = signer};
    uint8_t *buf = malloc(referral__v1__signed_directory__get_packed_size(&sd));
    if (buf == NULL)
        abort();
    size_t n = referral__v1__signed_directory__pack(&sd, buf);
    directory *d = NULL;
    char why[FUZZ_WHY_BYTES] = "";
    if (directory_parse(buf, n, pub, 0, 0, &d, why, sizeof why) != DIRECTORY_OK) {
        fprintf(stderr, "fuzz-zap-request: the fixed directory does not load: %s\n", why);
        abort();
    }
    free(buf);
    return d;
}

/* The fixed directory of the file's header comment. */
static directory *make_directory(void)
{
    static uint8_t keys[12][32];
    Referral__V1__DirectoryAgency ag[2] = {REFERRAL__V1__DIRECTORY_AGENCY__INIT,
                                           REFERRAL__V1__DIRECTORY_AGENCY__INIT};
    Referral__V1__DirectoryBroker br[2] = {REFERRAL__V1__DIRECTORY_BROKER__INIT,
                                           REFERRAL__V1__DIRECTORY_BROKER__INIT};
    static const char *agency_ids[2] = {"qd.police", "qd.school"};
    static const char *broker_ids[2] = {"broker.qingdao", "broker.old"};
    const uint8_t agency_curve[2] = {CURVE_POLICE, CURVE_SCHOOL};
    const uint8_t broker_curve[2] = {CURVE_BROKER, CURVE_OLD_BROKER};
    for (size_t i = 0; i < 2; i++) {
        ag[i].id = (char *)agency_ids[i];
        ag[i].kind = REFERRAL__V1__AGENCY_KIND__AGENCY_KIND_POLICE;
        ag[i].home_broker = (char *)broker_ids[0];
        ag[i].sign_public = filled(keys[i * 3], (uint8_t)(0x10 + i));
        ag[i].seal_public = filled(keys[i * 3 + 1], (uint8_t)(0x20 + i));
        ag[i].curve_public = filled(keys[i * 3 + 2], agency_curve[i]);
        br[i].id = (char *)broker_ids[i];
        br[i].endpoint = "tcp://127.0.0.1:7400";
        br[i].sign_public = filled(keys[6 + i * 3], (uint8_t)(0x30 + i));
        br[i].curve_public = filled(keys[6 + i * 3 + 1], broker_curve[i]);
    }
    static uint8_t revoked_ids[2][16];
    zap_curve_key_id(ag[1].curve_public.data, revoked_ids[0]);
    zap_curve_key_id(br[1].curve_public.data, revoked_ids[1]);
    ProtobufCBinaryData revoked[2] = {{.len = 16, .data = revoked_ids[0]},
                                      {.len = 16, .data = revoked_ids[1]}};
    Referral__V1__DirectoryAgency *agp[2] = {&ag[0], &ag[1]};
    Referral__V1__DirectoryBroker *brp[2] = {&br[0], &br[1]};
    Referral__V1__Directory dir = REFERRAL__V1__DIRECTORY__INIT;
    dir.version = 1;
    dir.issued_at_ms = 1;
    dir.expires_at_ms = 2;   /* loaded with now_ms 0: never expired here */
    dir.n_agencies = 2;
    dir.agencies = agp;
    dir.n_brokers = 2;
    dir.brokers = brp;
    dir.n_revoked_key_ids = 2;
    dir.revoked_key_ids = revoked;
    uint8_t *bytes = malloc(referral__v1__directory__get_packed_size(&dir));
    if (bytes == NULL)
        abort();
    directory *d = load_signed(bytes, referral__v1__directory__pack(&dir, bytes));
    free(bytes);
    return d;
}

/* The identity ZAP admits with curve key byte b, as the broker writes it. */
static void user_id_of(uint8_t b, const char *prefix, const char *id, char out[ZAP_USER_ID_MAX])
{
    uint8_t key[32], kid[16];
    char hex[33];
    memset(key, b, sizeof key);
    zap_curve_key_id(key, kid);
    snprintf(out, ZAP_USER_ID_MAX, "%s%s#%s", prefix, id, ids_hex(kid, 16, hex));
}

static const context *the_context(void)
{
    static context c;
    if (c.dir == NULL) {
        c.dir = make_directory();
        user_id_of(CURVE_POLICE, "", "qd.police", c.police_id);
        user_id_of(CURVE_BROKER, ZAP_BROKER_PREFIX, "broker.qingdao", c.broker_id);
    }
    return &c;
}

static bool is(const zap_frame *f, const char *text)
{
    return f->size == strlen(text) && memcmp(f->data, text, f->size) == 0;
}

static bool is_key(const zap_frame *f, uint8_t b)
{
    if (f->size != 32)
        return false;
    for (size_t i = 0; i < f->size; i++) {
        if (f->data[i] != b)
            return false;
    }
    return true;
}

/* Who must be admitted for these n frames (frames holds them all here):
 * the identity, or NULL when the request must be refused. */
static const char *expected_user_id(const context *c, const zap_frame *f, size_t n)
{
    if (n < 6 || n > 7 || !is(&f[0], "1.0"))
        return NULL;
    bool is_admin = is(&f[2], ZAP_DOMAIN_ADMIN), is_peers = is(&f[2], ZAP_DOMAIN_PEERS);
    if (n == 6)
        return is_admin && is(&f[5], "NULL") ? "operator" : NULL;
    if (is_admin || !is(&f[5], "CURVE"))
        return NULL;
    if (is_peers)
        return is_key(&f[6], CURVE_BROKER) ? c->broker_id : NULL;
    return is_key(&f[6], CURVE_POLICE) ? c->police_id : NULL;
}

/* Abort unless dec is the decision for the n frames (the first
 * ZAP_MAX_FRAMES of them in f). */
static void check_decision(const context *c, const zap_frame *f, size_t n,
                           const zap_decision *dec)
{
    const char *want = expected_user_id(c, f, n);
    bool is_admitted = strcmp(dec->status_code, "200") == 0;
    if (!is_admitted && strcmp(dec->status_code, "400") != 0)
        abort();
    if (is_admitted != (want != NULL) || (is_admitted && strcmp(dec->user_id, want) != 0) ||
        (!is_admitted && dec->user_id[0] != '\0')) {
        fprintf(stderr, "zap_decide: %s \"%s\" for %zu frames, wanted %s\n", dec->status_code,
                dec->user_id, n, want != NULL ? want : "a refusal");
        abort();
    }
    if (dec->status_text[0] == '\0' || is_admitted != (strcmp(dec->status_text, "OK") == 0))
        abort();
    if (n >= 2 ? dec->request_id.data != f[1].data || dec->request_id.size != f[1].size
               : dec->request_id.size != 0)
        abort();
    if (memchr(dec->note, '\0', sizeof dec->note) == NULL)
        abort();
}

/* Split data into frames: keep the first ZAP_MAX_FRAMES, each in a new
 * buffer of its exact size (owned[i], freed by the caller), and count them
 * all. */
static size_t split_frames(const uint8_t *data, size_t size, zap_frame frames[ZAP_MAX_FRAMES],
                           uint8_t *owned[ZAP_MAX_FRAMES])
{
    static const uint8_t empty[1];
    size_t n = 0, at = 0;
    while (at < size) {   /* each frame takes at least its length byte */
        size_t len = data[at++];
        if (len > size - at)
            len = size - at;
        if (n < ZAP_MAX_FRAMES) {
            owned[n] = malloc(len);   /* even of 0 bytes: any read of it is caught */
            if (len > 0 && owned[n] == NULL)
                abort();
            if (len > 0)
                memcpy(owned[n], data + at, len);
            frames[n] = (zap_frame){.data = owned[n] != NULL ? owned[n] : empty, .size = len};
        }
        at += len;
        n++;
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const context *c = the_context();
    zap_frame frames[ZAP_MAX_FRAMES];
    uint8_t *owned[ZAP_MAX_FRAMES];
    size_t n = split_frames(data, size, frames, owned);
    zap_decision dec;
    zap_decide(frames, n, c->dir, &dec);
    check_decision(c, frames, n, &dec);
    for (size_t i = 0; i < n && i < ZAP_MAX_FRAMES; i++)
        free(owned[i]);
    return 0;
}
