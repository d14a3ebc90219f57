/*
 * referral.h: libreferral, the client library of the referral federation.
 *
 * Desk and agency software links this library to send case referrals to
 * other agencies and to receive, acknowledge and answer them. It speaks
 * the wire protocol of docs/protocol.md to the agency's home broker over
 * CURVE, signs every envelope with the agency's Ed25519 key, seals every
 * case file so that only its readers can open it, and verifies and opens
 * what it receives. It keeps a small LMDB state directory of its own: an
 * outbox (a referral handed to ref_send() survives a crash of the process
 * and is sent again until the broker answers), an inbox (every delivery,
 * stored whole before the broker is told it arrived, until the application
 * confirms it with ref_delivery_done()) and the ids already received.
 *
 * What an application may assume at each step of a hand-over:
 *   1. A delivery arrives: the library verifies and opens it, then stores
 *      it in the inbox (fsync). A crash before this point: the broker
 *      still holds it unsettled and delivers it again.
 *   2. Stored: the library settles it with the broker, which records the
 *      referral DELIVERED and tells its sender with a notice the broker
 *      signs (no receipt from this agency for that level). From here the
 *      library holds it.
 *   3. ref_receive() hands it to the application. A crash of the process
 *      at any time before step 4: the next ref_client_new() on the same
 *      state directory hands it again, with the same message id.
 *   4. The application has taken it (written it to its own store, shown
 *      it to a person, or whatever "taken" means to it) and calls
 *      ref_delivery_done(). The library forgets the delivery; it is never
 *      handed again, even if the broker delivers it again.
 * So a delivery can reach the application more than once (after a crash
 * between 3 and 4): deduplicate by ref_delivery_message_id(). It is never
 * lost. (An escalation copy of a referral is a delivery of its own, handed
 * even when the referral itself was handed here before; it carries the
 * referral's message id, so that deduplication shows it once.)
 *
 * The session keeps itself alive: call ref_receive() or ref_pump() at
 * least once a second (or whenever ref_client_fd() is readable and at
 * least every second) and the library pings the broker while idle, and
 * says Hello again by itself after a reconnect or a broker restart
 * (credit granted again, every unanswered outbox entry sent again).
 *
 * The broker never replaces an emergency call: when a life is at risk,
 * phone the emergency services first.
 *
 * Threads: a ref_client is not thread-safe. Use it from one thread at a
 * time (or one client per thread). ref_strerror() and ref_version() are
 * safe from any thread.
 *
 * Ownership: strings passed in are borrowed for the duration of the call.
 * Objects returned through out-parameters belong to the caller and are
 * freed with their own destroy function, which accepts NULL and sets the
 * pointer to NULL. Strings returned by accessors are borrowed from their
 * object and live as long as it does.
 *
 * Errors: every function returns a ref_err; REF_OK is 0. Results go through
 * out-parameters. The library never writes to stderr: it reports through
 * the log callback in ref_config.
 */
#ifndef REFERRAL_H
#define REFERRAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(REF_BUILDING_LIBRARY)
#define REF_API __attribute__((visibility("default")))
#else
#define REF_API
#endif

/* Hex length of a message or referral id (16 bytes), without the NUL. */
#define REF_ID_HEX_LEN 32

typedef enum {
    REF_OK = 0,
    REF_E_INVALID = 1,        /* a NULL, empty or out-of-range argument; a bad id */
    REF_E_NO_MEMORY = 2,
    REF_E_CLOSED = 3,         /* the client is not connected */
    REF_E_TIMEOUT = 4,        /* no answer in time; a sent referral stays in the outbox */
    REF_E_KEYS = 5,           /* the agency's key files are missing or unreadable */
    REF_E_DIRECTORY = 6,      /* the directory is missing, unsigned, wrongly signed or expired */
    REF_E_UNKNOWN_AGENCY = 7, /* an agency named is not in the directory */
    REF_E_TOO_LARGE = 8,      /* a field or the case file is over its limit */
    REF_E_REFUSED = 9,        /* the broker refused; ref_client_last_detail() says why */
    REF_E_TRANSPORT = 10,     /* the connection to the broker cannot be made */
    REF_E_STATE = 11,         /* the local state directory (outbox) failed */
    REF_E_AGAIN = 12,         /* nothing to receive yet */
    REF_E_PROTOCOL = 13,      /* the broker sent something this version cannot read */
} ref_err;

/* A stable, human sentence for an error. Never NULL. */
REF_API const char *ref_strerror(ref_err err);

/* The library's version, e.g. "0.1.0". */
REF_API const char *ref_version(void);

typedef enum {
    REF_URGENCY_ROUTINE = 1,
    REF_URGENCY_PRIORITY = 2,
    REF_URGENCY_URGENT = 3,
    REF_URGENCY_CRISIS = 4,
} ref_urgency;

typedef enum {
    REF_CATEGORY_PROTECTION = 1,
    REF_CATEGORY_FAMILY_DYSFUNCTION = 2,
    REF_CATEGORY_PSYCHOLOGICAL_SUPPORT = 3,
    REF_CATEGORY_GROWTH_DIFFICULTY = 4,
    REF_CATEGORY_LEGAL_AID = 5,
    REF_CATEGORY_OTHER = 6,
} ref_category;

/* Acknowledgement levels (DESIGN.md). DELIVERED is asserted by the
 * recipient's home broker when the recipient's library settles a stored
 * delivery; the sender sees it as a REF_DELIVERY_NOTICE of that level.
 * An agency asserts RECEIVED and above with ref_acknowledge(). */
typedef enum {
    REF_LEVEL_DELIVERED = 3,           /* the broker's word: never passed to ref_acknowledge() */
    REF_LEVEL_RECEIVED = 4,            /* a named person picked it up */
    REF_LEVEL_ACCEPTED_BY_AGENCY = 5,
    REF_LEVEL_REJECTED = 6,            /* with a reason */
    REF_LEVEL_ACTION_TAKEN = 7,
    REF_LEVEL_CLOSED = 8,              /* with an outcome */
} ref_level;

typedef enum {
    REF_LOG_ERROR = 0,
    REF_LOG_WARN = 1,
    REF_LOG_INFO = 2,
    REF_LOG_DEBUG = 3,
} ref_log_level;

/* The log callback: one line of key=value text, without a newline. */
typedef void (*ref_log_fn)(ref_log_level level, const char *line, void *ctx);

/*
 * How to connect. All strings are borrowed during ref_client_new() only.
 *   agency_id       this agency's id ("qd.police.shibei")
 *   key_dir         holds agency_id.sign.pem, .seal.pem, .curve (referralctl keygen)
 *   directory       the signed directory file
 *   trust_root      the pinned root key: 64 hex digits or a .pub.json path
 *   broker_id       the home broker's id; its endpoint and CURVE key come
 *                   from the directory unless endpoint is set
 *   endpoint        optional: ZeroMQ endpoint overriding the directory's
 *   state_dir       this client's own directory (outbox, received ids);
 *                   created if missing
 *   timeout_ms      how long blocking calls wait (default 10000 when 0)
 *   credit          deliveries the broker may send ahead (default 16 when 0)
 *   log, log_ctx    optional log callback
 */
typedef struct {
    const char *agency_id;
    const char *key_dir;
    const char *directory;
    const char *trust_root;
    const char *broker_id;
    const char *endpoint;
    const char *state_dir;
    uint32_t timeout_ms;
    uint32_t credit;
    ref_log_fn log;
    void *log_ctx;
} ref_config;

typedef struct ref_client ref_client;

/*
 * Load keys and directory, open the state directory, connect to the broker
 * and say Hello. On REF_OK *out is a connected client (free with
 * ref_client_destroy). Referrals left in the outbox by an earlier process
 * are sent again. Errors: REF_E_INVALID, REF_E_KEYS, REF_E_DIRECTORY,
 * REF_E_STATE, REF_E_TRANSPORT, REF_E_TIMEOUT (no Welcome), REF_E_REFUSED.
 * On error *out is NULL and, when a detail buffer is given, detail (size
 * detail_len) holds a sentence naming the problem and the fix.
 */
REF_API ref_err ref_client_new(const ref_config *cfg, ref_client **out, char *detail,
                               size_t detail_len);

/* Close the connection and the state directory; frees *client and sets it
 * to NULL. NULL or *client NULL is fine. Frames already queued (settles,
 * receipts) get up to 2 seconds (at most timeout_ms) to leave; unsent
 * referrals and receipts stay in the outbox for the next start, and
 * confirmations are committed. */
REF_API void ref_client_destroy(ref_client **client);

/* The last refusal's sentence (from the broker or the library), or "". */
REF_API const char *ref_client_last_detail(const ref_client *client);

/*
 * A file descriptor that becomes readable when the client may have work:
 * put it in your poll()/epoll loop and call ref_receive() with timeout 0
 * (and ref_pump()) when it fires. It is edge-triggered (ZeroMQ's ZMQ_FD):
 * drain with ref_receive() until REF_E_AGAIN. -1 if not connected.
 */
REF_API int ref_client_fd(const ref_client *client);

/* A referral to compose. Strings are borrowed during the call. */
typedef struct {
    const char *to_agency;          /* required */
    const char *const *backups;     /* optional agencies that may be copied on escalation */
    size_t n_backups;               /* at most 16. The body is sealed for to_agency, these
                                       and to_agency's escalation chain in the directory
                                       (backup agencies, supervisor desk, regional centre),
                                       at most 32 agencies: REF_E_INVALID beyond */
    ref_urgency urgency;            /* required */
    ref_category category;          /* required */
    uint32_t ttl_s;                 /* expiry after creation; default 7 days when 0 */
    const char *subject_pseudonym;  /* the desk's label for the child */
    uint32_t subject_age;
    const char *subject_location;
    const char *narrative;          /* what happened */
    const char *requested_action;
    const char *desk_case_number;
    /* Added in 0.2 (zero-initialise the struct: ref_referral r = {0}): the
     * escalation policy to pin in the header (docs/escalation.md). NULL or
     * "": the recipient's home broker runs its default for the urgency.
     * A policy that broker does not have is replaced by the same id's
     * highest version, else the default, and the trace says so: a
     * referral is never refused for its policy. */
    const char *escalation_policy_id;
    uint32_t escalation_policy_version;
} ref_referral;

/*
 * Sign, seal and send a referral, then wait up to timeout_ms for the
 * broker's ACCEPTED (stored durably). The referral is first written to the
 * outbox: if the process dies before ACCEPTED, the next ref_client_new()
 * sends it again (the broker deduplicates). message_id_hex and
 * referral_id_hex (each REF_ID_HEX_LEN + 1 bytes, may be NULL) get the ids.
 * While the broker answers "later" (store full, busy, stopping), the
 * library sends it again every second until timeout_ms.
 * Errors: REF_E_INVALID, REF_E_UNKNOWN_AGENCY, REF_E_TOO_LARGE,
 * REF_E_REFUSED (for good; the broker's reason in ref_client_last_detail()),
 * REF_E_TIMEOUT (still in the outbox: it will be sent again), REF_E_STATE.
 */
REF_API ref_err ref_send(ref_client *client, const ref_referral *referral,
                         char *message_id_hex, char *referral_id_hex);

/*
 * As ref_send() but does not wait for the broker's answer. When no earlier
 * submission awaits an answer, the referral is written to the outbox and
 * put on the wire before the call returns, as with ref_send(). In a burst
 * (answers awaited) it is sealed, signed and queued in the library (at
 * most 256; the 257th commits the queue first), and the next call that
 * pumps (ref_pump(), ref_receive(), ref_send(), ref_acknowledge(),
 * ref_status(); the awaited answers make ref_client_fd() readable) or
 * ref_client_destroy() writes every queued referral to the outbox in one
 * commit (one fsync for the burst), then puts them on the wire. A queued
 * referral lives only in this process until that pump: call ref_pump()
 * after a burst when it must be on disk now. The broker's answer, ACCEPTED
 * or a refusal, comes through ref_client_set_outcome_fn(); show the
 * referral as pending until then.
 */
REF_API ref_err ref_send_async(ref_client *client, const ref_referral *referral,
                               char *message_id_hex, char *referral_id_hex);

/* Process whatever the broker sent (answers, deliveries) without blocking;
 * deliveries are kept for ref_receive(). */
REF_API ref_err ref_pump(ref_client *client);

/*
 * The outcome of each message handed to the broker (a referral, with
 * ref_send_async() or ref_send(), or a receipt): fn is called when the
 * broker's answer arrives, with the message id (hex), REF_OK (ACCEPTED:
 * stored durably by the broker), or the refusal (REF_E_REFUSED,
 * REF_E_TOO_LARGE, REF_E_UNKNOWN_AGENCY) with the broker's sentence in
 * detail. A message not answered yet is pending: it stays in the outbox and
 * is sent again after any reconnect or restart; answers that only say
 * "later" (store full, busy) are not outcomes and are retried. After a
 * crash the same message may be reported twice (the broker answers a
 * resend as a duplicate, REF_OK): key your display by message id. fn runs
 * inside ref_pump(), ref_receive(), ref_send() or ref_send_async(); it must
 * not call the library. NULL fn turns it off. A desk pipelines with
 * ref_send_async() and shows each referral's state from these calls.
 */
typedef void (*ref_outcome_fn)(const char *message_id_hex, ref_err outcome, const char *detail,
                               void *ctx);
REF_API void ref_client_set_outcome_fn(ref_client *client, ref_outcome_fn fn, void *ctx);

/* What a delivery is. */
typedef enum {
    REF_DELIVERY_REFERRAL = 1,   /* a referral addressed to this agency, or an escalation
                                    copy of one (ref_delivery_is_copy()) */
    REF_DELIVERY_RECEIPT = 2,    /* an agency's receipt for a referral this agency sent */
    REF_DELIVERY_NOTICE = 3,     /* the broker's notice about a referral this agency sent, or
                                    (from "libreferral") a referral sent from the outbox or
                                    with ref_send_async() that the broker refused for good */
    REF_DELIVERY_ALERT = 4,      /* a broker's escalation alert: an agency did not answer a
                                    referral in time (see "Alerts and stand-downs") */
    REF_DELIVERY_STAND_DOWN = 5, /* another agency accepted a referral this agency received
                                    (stand down), or the end of a partition alert */
} ref_delivery_kind;

/*
 * Escalation copies. When the recipient of a referral does not acknowledge
 * it in time, the broker copies the sender's envelope, unchanged, to an
 * agency of the recipient's escalation chain (its backup agencies,
 * supervisor desk, regional centre). The library accepts such a copy only
 * when the sender's signature verifies against the directory and the
 * sender sealed the body for this agency (the signature covers the list of
 * readers: it is the sender's own authorisation); the broker's labels do
 * not decide it. A copy is handed as REF_DELIVERY_REFERRAL with
 *   ref_delivery_is_copy()              true
 *   ref_delivery_original_recipient()   the agency the sender addressed
 *   ref_delivery_detail()               the broker's reason, a sentence
 *   ref_delivery_message_id()           the referral's message id (the
 *                                       sender's), as for the referral
 *                                       itself: pass it to ref_acknowledge()
 * and every other accessor as for a referral. The library keeps the copy
 * under the broker's own id for it and settles it under that id (the
 * broker tells the sender it was DELIVERED); ref_acknowledge() with the message id
 * answers the sender for this agency, naming the copy's attempt.
 *
 * Alerts and stand-downs. A broker of the directory signs them; the
 * library verifies that signature and hands them to any agency they are
 * delivered to (a supervisor desk or regional centre may never have seen
 * the referral). Accessors, besides the common ones:
 *   ref_delivery_referral_id()   the referral concerned
 *   ref_delivery_message_id()    the message concerned (also
 *                                ref_delivery_in_reply_to())
 *   ref_delivery_from()          the broker that made it
 *   ref_delivery_detail()        the broker's sentence
 *   ref_delivery_alert_kind()    what happened ("NOT_RECEIVED", ...)
 *   ref_delivery_about_agency()  an alert: the agency that did not
 *                                respond; a stand-down: the agency that
 *                                accepted the referral
 *   ref_delivery_alert_step(), ref_delivery_alert_round()
 *   ref_delivery_contacts()      whom to phone: "label phone; label phone"
 *   ref_delivery_copied_to()     agencies this step copied the referral to
 * An alert means a person should act now: phone the numbers in
 * ref_delivery_contacts(). The library never replaces that call.
 */

typedef struct ref_delivery ref_delivery;

/*
 * Receive the next delivery, waiting up to timeout_ms (0: do not wait);
 * the most urgent first. Every delivery was verified (signature against
 * the sender's key in the directory) and opened, stored in the inbox and
 * settled with the broker before it gets here (see the steps at the top);
 * one that fails verification is refused at the broker and never
 * returned. Deliveries not confirmed by an earlier process come first
 * after a start. Within one process each message is returned once, even
 * if the broker delivers it again. On REF_OK *out belongs to the caller
 * (ref_delivery_destroy); confirm it with ref_delivery_done() once taken.
 * Errors: REF_E_AGAIN (nothing yet), REF_E_CLOSED, REF_E_STATE (the inbox
 * could not be written: the deliveries of that batch come again).
 */
REF_API ref_err ref_receive(ref_client *client, uint32_t timeout_ms, ref_delivery **out);

/*
 * Confirm that the application has taken delivery d (step 4 at the top):
 * the library drops it from its inbox and never hands it again. The drop
 * is committed with the library's next write (the next ref_receive() or
 * ref_pump() that has anything to commit, at the latest the next one, or
 * ref_client_destroy()): one fsync for many confirmations. A crash before
 * then hands d again at the next start, which deduplication by message id
 * absorbs. Call it after the application has made the delivery safe on its
 * side; without it, d is handed again after the next start. d stays the
 * caller's (borrowed). While 512 deliveries wait unconfirmed, the library
 * takes no new ones from the broker (they wait there, safely).
 * Errors: REF_E_INVALID (NULL), REF_E_STATE (confirmations could not be
 * recorded: they may be handed again).
 */
REF_API ref_err ref_delivery_done(ref_client *client, const ref_delivery *d);

REF_API void ref_delivery_destroy(ref_delivery **delivery);

/* Accessors (borrowed strings, living as long as d; "" when absent). Every
 * accessor accepts d NULL and then returns "", 0 or false
 * (ref_delivery_kind_of: 0, no kind). */
REF_API ref_delivery_kind ref_delivery_kind_of(const ref_delivery *d);
/* The message id (REF_ID_HEX_LEN hex digits): of a referral or receipt,
 * its own; of an escalation copy, the referral's (the sender's), not the
 * broker's id for the copy; of a notice, alert or stand-down, the message
 * it is about. */
REF_API const char *ref_delivery_message_id(const ref_delivery *d);
REF_API const char *ref_delivery_referral_id(const ref_delivery *d);
REF_API const char *ref_delivery_from(const ref_delivery *d);
REF_API ref_urgency ref_delivery_urgency(const ref_delivery *d);
REF_API const char *ref_delivery_narrative(const ref_delivery *d);
REF_API const char *ref_delivery_requested_action(const ref_delivery *d);
REF_API const char *ref_delivery_subject_pseudonym(const ref_delivery *d);
REF_API uint32_t ref_delivery_subject_age(const ref_delivery *d);
/* For receipts and notices: the level reached (0 if none) and the text. */
REF_API int ref_delivery_level(const ref_delivery *d);
/* The broker's attempt number of this delivery (1 for the first; 0 for a
 * notice made by the library). */
REF_API uint32_t ref_delivery_attempt(const ref_delivery *d);
/* For a receipt: the message id of the referral it acknowledges ("" for
 * others). A receipt is only returned when its signer is an agency that
 * referral's body was sealed for (recipient, backup, or an agency of the
 * recipient's escalation chain, which may have received it as a copy) and
 * its body agrees with its signed header; any other is refused at the
 * broker and never shown. */
REF_API const char *ref_delivery_in_reply_to(const ref_delivery *d);
/* A sentence: for a receipt what the agency said, for a notice what the
 * broker said, for an alert or stand-down the broker's detail, for an
 * escalation copy the broker's reason for copying it here; "" for a
 * referral. */
REF_API const char *ref_delivery_detail(const ref_delivery *d);

/* true when d is a referral delivered as an escalation copy (see
 * "Escalation copies" above), false otherwise. */
REF_API bool ref_delivery_is_copy(const ref_delivery *d);
/* For an escalation copy: the agency the sender addressed the referral to,
 * as the sender signed it; "" for anything else. */
REF_API const char *ref_delivery_original_recipient(const ref_delivery *d);

/* For an alert (and a stand-down that ends a partition alert): the alert's
 * kind, a static string: "NOT_DELIVERED" (a delivery deadline passed),
 * "NOT_RECEIVED" (nobody picked it up in time), "NOT_ACCEPTED",
 * "REJECTED", "FATAL_ERROR", "PARTITION" (the sending side lost sight of
 * the referral), "UNDELIVERABLE" or "REROUTED" (a rejection or fatal error
 * moved the referral on); "" for other deliveries. */
REF_API const char *ref_delivery_alert_kind(const ref_delivery *d);
/* For an alert: the agency that did not respond; for a stand-down: the
 * agency that accepted the referral (or, ending a partition alert, the
 * agency it was about); for a notice: the agency whose message it is
 * about (a DELIVERED notice: the agency whose client stored the referral
 * or its escalation copy); "" for referrals and receipts. */
REF_API const char *ref_delivery_about_agency(const ref_delivery *d);
/* For an alert: the escalation policy's step that fired (0-based) and the
 * repetition of the chain (0 for the first); 0 otherwise. */
REF_API uint32_t ref_delivery_alert_step(const ref_delivery *d);
REF_API uint32_t ref_delivery_alert_round(const ref_delivery *d);
/* For an alert: the emergency contacts from the directory, one string
 * "label phone; label phone" (e.g. "Qingdao 110 110; duty supervisor
 * 0532-8000"); "" when none. */
REF_API const char *ref_delivery_contacts(const ref_delivery *d);
/* For an alert: the agencies this step copied the referral to, "a, b";
 * "" when none. */
REF_API const char *ref_delivery_copied_to(const ref_delivery *d);

/*
 * Acknowledge a referral this agency received, at a level from RECEIVED
 * to CLOSED (DELIVERED is the broker's, never an agency's: REF_E_INVALID):
 * a receipt signed by this agency and sealed for the sender,
 * who sees it as a REF_DELIVERY_RECEIPT (level and text).
 * referral_message_id_hex: ref_delivery_message_id() of the referral; for
 * an escalation copy that is the sender's message id, and the receipt
 * answers it (in_reply_to) naming the copy's attempt, so the sender and
 * the brokers see this agency's answer to the referral itself. person: who
 * (required). reason: free text, required for REJECTED
 * (why; the sender re-routes), for CLOSED the outcome, for ACTION_TAKEN
 * what was done; may be NULL otherwise. Waits for the broker's ACCEPTED of
 * the receipt. Errors: REF_E_INVALID (bad id, missing person or reason, or
 * no such referral received here), REF_E_TOO_LARGE, REF_E_REFUSED,
 * REF_E_TIMEOUT.
 */
REF_API ref_err ref_acknowledge(ref_client *client, const char *referral_message_id_hex,
                                ref_level level, const char *person, const char *reason);

/*
 * Ask the broker the state of a message this agency sent or received.
 * *state_name (a static string) gets QUEUED, IN_FLIGHT, DELIVERED,
 * REJECTED, UNDELIVERABLE, QUARANTINED or UNKNOWN (never seen, forgotten
 * after retention, or not this agency's to see). Errors: REF_E_INVALID,
 * REF_E_TIMEOUT.
 */
REF_API ref_err ref_status(ref_client *client, const char *message_id_hex,
                           const char **state_name);

#ifdef __cplusplus
}
#endif

#endif
