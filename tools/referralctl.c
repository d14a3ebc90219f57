/*
 * referralctl: keys, the signed directory, and a running broker's
 * operators' socket (referralctl_admin.h), for operators.
 *
 *   referralctl keygen --id ID [--dir DIR] [--force]
 *   referralctl directory sign --in SOURCE.json --root-key ROOT.sign.pem --out FILE
 *   referralctl directory verify --file FILE --root ROOT
 *   referralctl directory show --file FILE --root ROOT [--json]
 *   referralctl [--socket PATH | --config FILE] [--json] status | queues | ... (admin)
 *
 * The directory source is JSON (docs/operations.md, "The directory"); the
 * signed file is a SignedDirectory (referral.proto). This tool never prints
 * a secret key.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <openssl/crypto.h>

#include "clock.h"
#include "directory.h"
#include "directory_source.h"
#include "ids.h"
#include "keys.h"
#include "referralctl_admin.h"
#include "ref_version.h"
#include "sign.h"
#include "wire.h"

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

static void usage(FILE *f)
{
    fprintf(f,
        "Usage:\n"
        "  referralctl keygen --id ID [--dir DIR] [--force]\n"
        "  referralctl directory sign --in SOURCE.json --root-key ROOT.sign.pem --out FILE\n"
        "                            [--force]\n"
        "  referralctl directory verify --file FILE --root ROOT [--min-version N]\n"
        "  referralctl directory show --file FILE --root ROOT [--json]\n"
        "  referralctl --help | --version\n");
    ctl_admin_usage(f);
    fprintf(f,
        "\n"
        "keygen      writes ID.sign.pem (Ed25519), ID.seal.pem (X25519) and ID.curve\n"
        "            (CURVE transport pair), all mode 0600, and ID.pub.json (public\n"
        "            parts) into DIR (default .), then prints the public parts.\n"
        "            Existing files are kept unless --force.\n"
        "directory sign    reads the JSON source, checks every entry, signs it with the\n"
        "            trust-root key and writes the signed directory. Refuses a version\n"
        "            not above the one already in FILE (brokers refuse a second\n"
        "            directory under a version they used) unless --force.\n"
        "directory verify  checks a signed directory against the pinned root: ROOT is\n"
        "            64 hex digits or a .pub.json file. Refuses unsigned, wrongly\n"
        "            signed, older (--min-version) or expired directories.\n"
        "directory show    verifies, then lists agencies and brokers; --json prints every\n"
        "            field with every public key (agencies: sign_public, sign_key_id,\n"
        "            seal_public, curve_public, escalation chain; brokers: endpoint,\n"
        "            sign_public, sign_key_id, curve_public) and revoked_key_ids.\n"
        "\n"
        "On a running broker (its operators' socket, docs/operations.md \"The admin\n"
        "socket\"; --socket PATH, or --config referrald.ini for its [admin] socket or\n"
        "admin.sock in its [broker] data_dir; --operator NAME, default the login name;\n"
        "--json prints the broker's JSON answer as it came):\n"
        "status      the broker's id, version, sessions and store use.\n"
        "queues      what waits, per recipient (agency or peer broker) and urgency, by\n"
        "            age since creation: <1m 1-5m 5-60m 1-24h >1d; held and in flight.\n"
        "oldest      the oldest crisis messages not yet settled (queued, held or in\n"
        "            flight), --limit N (default 20).\n"
        "peers       each federation link: up, connected, stalled or down; in flight,\n"
        "            queued for it, when last heard from.\n"
        "undeliverable  messages that ended UNDELIVERABLE, most recent first.\n"
        "expired     messages whose expires_at passed before delivery, latest first.\n"
        "show ID     one message's routing metadata and state (never its body), its\n"
        "            referral's sender and addressees, whether an escalation runs.\n"
        "hold ID     keep a queued (or a client's in-flight) message from delivery; it\n"
        "            stays stored, survives restarts and still expires at expires_at.\n"
        "release ID  put a held message back in its queue.\n"
        "requeue ID  return an in-flight delivery to its queue now (or release a held\n"
        "            one).\n"
        "expire ID   end a queued or in-flight message UNDELIVERABLE now; its sender is\n"
        "            told, as at a natural expiry, and an escalation re-routes.\n"
        "            Every action needs --reason TEXT; it is recorded in the referral's\n"
        "            trace with the operator's name, and logged.\n"
        "\n"
        "Examples:\n"
        "  referralctl keygen --id root --dir keys\n"
        "  referralctl keygen --id qd.police.shibei --dir keys\n"
        "  referralctl directory sign --in etc/directory.example.json \\\n"
        "      --root-key keys/root.sign.pem --out directory.signed\n"
        "  referralctl directory verify --file directory.signed --root keys/root.pub.json\n"
        "  referralctl --config /etc/referral/referrald.ini queues\n"
        "  referralctl --socket /var/lib/referral/admin.sock hold 0190c3... \\\n"
        "      --reason \"recipient asked us to pause during their migration\"\n"
        "\n"
        "Exit status: 0 success, 1 the operation failed or the broker refused it (the\n"
        "message says why), 2 bad usage, 3 the broker's admin socket cannot be reached\n"
        "(missing, no permission, or no answer).\n");
}

/* ---- keygen --------------------------------------------------------------- */

static int cmd_keygen(int argc, char **argv)
{
    static const struct option opts[] = {
        {"id", required_argument, NULL, 'i'}, {"dir", required_argument, NULL, 'd'},
        {"force", no_argument, NULL, 'f'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    const char *id = NULL, *dir = ".";
    bool force = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "i:d:fh", opts, NULL)) != -1) {
        switch (c) {
        case 'i': id = optarg; break;
        case 'd': dir = optarg; break;
        case 'f': force = true; break;
        case 'h': usage(stdout); return EXIT_OK;
        default: return EXIT_USAGE;
        }
    }
    if (id == NULL) {
        fprintf(stderr, "referralctl keygen: --id is required\n");
        return EXIT_USAGE;
    }
    keys_identity k;
    char why[512];
    if (!keys_generate(dir, id, force, &k, why, sizeof why)) {
        fprintf(stderr, "referralctl keygen: %s\n", why);
        keys_wipe(&k);
        return EXIT_FAIL;
    }
    uint8_t key_id[SIGN_KEY_ID_BYTES];
    char hex[65], z85[41], kid[33];
    sign_key_id(k.sign_public, key_id);
    printf("id            %s\n", k.id);
    printf("sign_public   %s\n", ids_hex(k.sign_public, 32, hex));
    printf("sign_key_id   %s\n", ids_hex(key_id, 16, kid));
    printf("seal_public   %s\n", ids_hex(k.seal_public, 32, hex));
    keys_to_z85(k.curve_public, z85);
    printf("curve_public  %s\n", z85);
    printf("files         %s/%s.{sign.pem,seal.pem,curve} (0600), %s/%s.pub.json\n", dir, id,
           dir, id);
    keys_wipe(&k);
    return EXIT_OK;
}

/* ---- directory sign ------------------------------------------------------- */

/* The version of the directory already in path, or 0 when there is none
 * (or it cannot be read as one). The signature is not checked here. */
static uint64_t version_in_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return 0;
    size_t cap = 16u << 20, n = 0;
    uint8_t *buf = malloc(cap);
    if (buf != NULL)
        n = fread(buf, 1, cap, f);
    fclose(f);
    Referral__V1__SignedDirectory *sd = NULL;
    Referral__V1__Directory *d = NULL;
    uint64_t version = 0;
    if (buf != NULL && n < cap &&
        wire_decode_signed_directory(buf, n, NULL, &sd, NULL, 0) == WIRE_OK &&
        wire_decode_directory(sd->directory.data, sd->directory.len, NULL, &d, NULL, 0) ==
            WIRE_OK)
        version = d->version;
    wire_free(d);
    wire_free(sd);
    free(buf);
    return version;
}

static int cmd_directory_sign(const char *in, const char *root_key, const char *out,
                              bool is_forced)
{
    char why[600];
    json_object *root = json_object_from_file(in);
    if (root == NULL || !json_object_is_type(root, json_type_object)) {
        fprintf(stderr, "referralctl directory sign: %s is not a JSON object: %s\n", in,
                json_util_get_last_err() ? json_util_get_last_err() : "");
        json_object_put(root);
        return EXIT_FAIL;
    }
    char *in_copy = strdup(in);
    Referral__V1__Directory *d = directory_source_build(root, dirname(in_copy), why, sizeof why);
    free(in_copy);
    json_object_put(root);
    if (d == NULL) {
        fprintf(stderr, "referralctl directory sign: %s: %s\n", in, why);
        return EXIT_FAIL;
    }
    size_t dlen;
    uint8_t *dbytes = wire_pack(d, &dlen);
    directory_source_free(d);
    /* Check it exactly as a broker will before signing it. */
    Referral__V1__Directory *check = NULL;
    if (wire_decode_directory(dbytes, dlen, NULL, &check, why, sizeof why) != WIRE_OK) {
        fprintf(stderr, "referralctl directory sign: %s: %s\n", in, why);
        free(dbytes);
        return EXIT_FAIL;
    }
    uint64_t version = check->version;
    size_t na = check->n_agencies, nb = check->n_brokers;
    wire_free(check);
    uint64_t existing = version_in_file(out);
    if (existing >= version && !is_forced) {
        fprintf(stderr, "referralctl directory sign: %s already holds version %" PRIu64 "; a "
                "changed directory needs a higher version (set \"version\" above %" PRIu64
                " in %s). Brokers that loaded version %" PRIu64 " refuse another directory "
                "under it; --force writes it anyway\n", out, existing, existing, in, existing);
        free(dbytes);
        return EXIT_FAIL;
    }
    uint8_t sec[32], pub[32], sig[64], kid[16];
    if (!sign_secret_load_pem(root_key, sec, pub, why, sizeof why)) {
        fprintf(stderr, "referralctl directory sign: %s\n", why);
        free(dbytes);
        return EXIT_FAIL;
    }
    bool ok = sign_detached(sec, "referral.v1 directory", dbytes, dlen, sig);
    OPENSSL_cleanse(sec, sizeof sec);
    sign_key_id(pub, kid);
    Referral__V1__SignedDirectory sd = REFERRAL__V1__SIGNED_DIRECTORY__INIT;
    sd.directory.data = dbytes;
    sd.directory.len = dlen;
    sd.signature.data = sig;
    sd.signature.len = 64;
    sd.signer_key_id.data = kid;
    sd.signer_key_id.len = 16;
    size_t slen;
    uint8_t *sbytes = ok ? wire_pack(&sd, &slen) : NULL;
    free(dbytes);
    FILE *f = sbytes != NULL ? fopen(out, "wb") : NULL;
    ok = f != NULL && fwrite(sbytes, 1, slen, f) == slen;
    ok = (f != NULL && fclose(f) == 0) && ok;
    free(sbytes);
    if (!ok) {
        fprintf(stderr, "referralctl directory sign: cannot write %s: %s\n", out,
                strerror(errno));
        return EXIT_FAIL;
    }
    char hex[33];
    printf("signed directory version %" PRIu64 ": %zu agencies, %zu brokers, root key id %s -> %s\n",
           version, na, nb, ids_hex(kid, 16, hex), out);
    return EXIT_OK;
}

/* ---- directory verify / show ---------------------------------------------- */

static void show_text(const Referral__V1__Directory *d)
{
    printf("version %" PRIu64 ", issued %" PRIu64 ", expires %" PRIu64 " (ms since epoch)\n",
           d->version, d->issued_at_ms, d->expires_at_ms);
    for (size_t i = 0; i < d->n_agencies; i++) {
        const Referral__V1__DirectoryAgency *a = d->agencies[i];
        printf("agency  %-28s %-18s region=%s home=%s backups=%zu\n", a->id,
               directory_source_kind_name(a->kind), a->region, a->home_broker,
               a->n_backup_agencies);
    }
    for (size_t i = 0; i < d->n_brokers; i++)
        printf("broker  %-28s %s\n", d->brokers[i]->id, d->brokers[i]->endpoint);
    printf("revoked keys: %zu\n", d->n_revoked_key_ids);
}

/* "sign_public" (hex) and "sign_key_id" (hex, what envelopes, notices and
 * revoked_key_ids name) of a 32-byte Ed25519 key. */
static void add_sign_keys(json_object *o, const ProtobufCBinaryData *sign_public)
{
    char hex[65];
    uint8_t kid[SIGN_KEY_ID_BYTES];
    sign_key_id(sign_public->data, kid);
    json_object_object_add(o, "sign_public",
                           json_object_new_string(ids_hex(sign_public->data, 32, hex)));
    json_object_object_add(o, "sign_key_id",
                           json_object_new_string(ids_hex(kid, SIGN_KEY_ID_BYTES, hex)));
}

/* Everything in the directory but nothing secret: every public key, so
 * that an integrator can take a broker's CURVE key from here. */
static void show_json(const Referral__V1__Directory *d)
{
    char hex[65], z85[41];
    json_object *root = json_object_new_object();
    json_object_object_add(root, "version", json_object_new_int64((int64_t)d->version));
    json_object_object_add(root, "issued_at_ms", json_object_new_int64((int64_t)d->issued_at_ms));
    json_object_object_add(root, "expires_at_ms",
                           json_object_new_int64((int64_t)d->expires_at_ms));
    json_object *agencies = json_object_new_array();
    for (size_t i = 0; i < d->n_agencies; i++) {
        const Referral__V1__DirectoryAgency *a = d->agencies[i];
        json_object *o = json_object_new_object();
        json_object_object_add(o, "id", json_object_new_string(a->id));
        json_object_object_add(o, "kind", json_object_new_string(directory_source_kind_name(a->kind)));
        json_object_object_add(o, "region", json_object_new_string(a->region));
        json_object_object_add(o, "name", json_object_new_string(a->name));
        json_object_object_add(o, "home_broker", json_object_new_string(a->home_broker));
        add_sign_keys(o, &a->sign_public);
        json_object_object_add(o, "seal_public", json_object_new_string(ids_hex(a->seal_public.data, 32, hex)));
        keys_to_z85(a->curve_public.data, z85);
        json_object_object_add(o, "curve_public", json_object_new_string(z85));
        json_object *b = json_object_new_array();
        for (size_t j = 0; j < a->n_backup_agencies; j++)
            json_object_array_add(b, json_object_new_string(a->backup_agencies[j]));
        json_object_object_add(o, "backup_agencies", b);
        json_object_object_add(o, "supervisor_desk", json_object_new_string(a->supervisor_desk));
        json_object_object_add(o, "regional_centre", json_object_new_string(a->regional_centre));
        json_object *ec = json_object_new_array();
        for (size_t j = 0; j < a->n_emergency_contacts; j++) {
            json_object *c = json_object_new_object();
            json_object_object_add(c, "label", json_object_new_string(a->emergency_contacts[j]->label));
            json_object_object_add(c, "phone", json_object_new_string(a->emergency_contacts[j]->phone));
            json_object_array_add(ec, c);
        }
        json_object_object_add(o, "emergency_contacts", ec);
        json_object_array_add(agencies, o);
    }
    json_object_object_add(root, "agencies", agencies);
    json_object *brokers = json_object_new_array();
    for (size_t i = 0; i < d->n_brokers; i++) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "id", json_object_new_string(d->brokers[i]->id));
        json_object_object_add(o, "endpoint", json_object_new_string(d->brokers[i]->endpoint));
        add_sign_keys(o, &d->brokers[i]->sign_public);
        keys_to_z85(d->brokers[i]->curve_public.data, z85);
        json_object_object_add(o, "curve_public", json_object_new_string(z85));
        json_object_array_add(brokers, o);
    }
    json_object_object_add(root, "brokers", brokers);
    json_object *revoked = json_object_new_array();
    for (size_t i = 0; i < d->n_revoked_key_ids; i++)
        json_object_array_add(revoked, json_object_new_string(
                                           ids_hex(d->revoked_key_ids[i].data, 16, hex)));
    json_object_object_add(root, "revoked_key_ids", revoked);
    printf("%s\n", json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY |
                                                        JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(root);
}

static int cmd_directory_check(const char *file, const char *root, uint64_t min_version,
                               bool is_show, bool is_json)
{
    uint8_t pub[32];
    char why[700];
    if (!keys_parse_sign_public(root, pub, why, sizeof why)) {
        fprintf(stderr, "referralctl directory: --root: %s\n", why);
        return EXIT_FAIL;
    }
    directory *d = NULL;
    if (directory_load(file, pub, min_version, clock_now_ms(), &d, why, sizeof why) !=
        DIRECTORY_OK) {
        fprintf(stderr, "referralctl directory: %s\n", why);
        return EXIT_FAIL;
    }
    const Referral__V1__Directory *x = directory_get(d);
    if (!is_show)
        printf("valid: directory version %" PRIu64 ", %zu agencies, %zu brokers, expires in "
               "%" PRIu64 " h\n", x->version, x->n_agencies, x->n_brokers,
               (x->expires_at_ms - clock_now_ms()) / 3600000u);
    else if (is_json)
        show_json(x);
    else
        show_text(x);
    directory_destroy(&d);
    return EXIT_OK;
}

static int cmd_directory(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "referralctl directory: say sign, verify or show\n");
        return EXIT_USAGE;
    }
    const char *verb = argv[1];
    static const struct option opts[] = {
        {"in", required_argument, NULL, 'i'}, {"out", required_argument, NULL, 'o'},
        {"root-key", required_argument, NULL, 'k'}, {"file", required_argument, NULL, 'f'},
        {"root", required_argument, NULL, 'r'}, {"min-version", required_argument, NULL, 'm'},
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'},
        {"force", no_argument, NULL, 'F'}, {NULL, 0, NULL, 0}};
    const char *in = NULL, *out = NULL, *root_key = NULL, *file = NULL, *root = NULL;
    uint64_t min_version = 0;
    bool is_json = false, is_forced = false;
    int c;
    optind = 2;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'i': in = optarg; break;
        case 'o': out = optarg; break;
        case 'k': root_key = optarg; break;
        case 'f': file = optarg; break;
        case 'r': root = optarg; break;
        case 'm': min_version = strtoull(optarg, NULL, 10); break;
        case 'j': is_json = true; break;
        case 'F': is_forced = true; break;
        case 'h': usage(stdout); return EXIT_OK;
        default: return EXIT_USAGE;
        }
    }
    if (strcmp(verb, "sign") == 0) {
        if (in == NULL || out == NULL || root_key == NULL) {
            fprintf(stderr, "referralctl directory sign: --in, --root-key and --out are required\n");
            return EXIT_USAGE;
        }
        return cmd_directory_sign(in, root_key, out, is_forced);
    }
    if (strcmp(verb, "verify") == 0 || strcmp(verb, "show") == 0) {
        if (file == NULL || root == NULL) {
            fprintf(stderr, "referralctl directory %s: --file and --root are required\n", verb);
            return EXIT_USAGE;
        }
        return cmd_directory_check(file, root, min_version, strcmp(verb, "show") == 0, is_json);
    }
    fprintf(stderr, "referralctl directory: unknown command %s (sign, verify, show)\n", verb);
    return EXIT_USAGE;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return EXIT_OK;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("referralctl %s (protocol version 1)\n", REF_VERSION);
        return EXIT_OK;
    }
    if (strcmp(argv[1], "keygen") == 0)
        return cmd_keygen(argc - 1, argv + 1);
    if (strcmp(argv[1], "directory") == 0)
        return cmd_directory(argc - 1, argv + 1);
    if (ctl_admin_is_command(argv[1]))
        return ctl_admin_main(argc, argv);
    fprintf(stderr, "referralctl: unknown command %s\n\n", argv[1]);
    usage(stderr);
    return EXIT_USAGE;
}
