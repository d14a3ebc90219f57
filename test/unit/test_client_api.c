/*
 * test_client_api: libreferral's public API refuses misuse with an error,
 * never a crash: NULL arguments, missing configuration, bad ids, a client
 * that could not connect, destroy of NULL, accessors of a NULL delivery.
 * (Behaviour against a real broker
 * is in test/integration/test_library.py.)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "referral.h"

static void null_arguments_are_refused(void **state)
{
    (void)state;
    ref_client *c = (ref_client *)0x1;
    char detail[128] = "";
    assert_int_equal(ref_client_new(NULL, &c, detail, sizeof detail), REF_E_INVALID);
    assert_null(c);
    assert_int_equal(ref_client_new(NULL, NULL, NULL, 0), REF_E_INVALID);
    ref_config cfg = {0};
    assert_int_equal(ref_client_new(&cfg, &c, detail, sizeof detail), REF_E_INVALID);
    assert_true(strlen(detail) > 0);
    assert_int_equal(ref_send(NULL, NULL, NULL, NULL), REF_E_INVALID);
    assert_int_equal(ref_send_async(NULL, NULL, NULL, NULL), REF_E_INVALID);
    assert_int_equal(ref_receive(NULL, 0, NULL), REF_E_INVALID);
    assert_int_equal(ref_acknowledge(NULL, NULL, REF_LEVEL_RECEIVED, "x", NULL), REF_E_INVALID);
    const char *st;
    assert_int_equal(ref_status(NULL, "00", &st), REF_E_INVALID);
    assert_int_equal(ref_pump(NULL), REF_E_INVALID);
    assert_int_equal(ref_client_fd(NULL), -1);
    assert_string_equal(ref_client_last_detail(NULL), "");
}

static void bad_configuration_is_named(void **state)
{
    (void)state;
    ref_client *c = NULL;
    char detail[512] = "";
    ref_config cfg = {.agency_id = "Bad..Id", .key_dir = "/nonexistent", .directory = "x",
                      .trust_root = "x", .broker_id = "broker.x", .state_dir = "/tmp/x"};
    assert_int_equal(ref_client_new(&cfg, &c, detail, sizeof detail), REF_E_INVALID);
    assert_null(c);
    cfg.agency_id = "qd.police";
    assert_int_equal(ref_client_new(&cfg, &c, detail, sizeof detail), REF_E_KEYS);
    assert_non_null(strstr(detail, "/nonexistent"));
    assert_null(c);
}

static void destroy_accepts_null_and_strerror_is_total(void **state)
{
    (void)state;
    ref_client *c = NULL;
    ref_client_destroy(&c);
    ref_client_destroy(NULL);
    ref_delivery *d = NULL;
    ref_delivery_destroy(&d);
    ref_delivery_destroy(NULL);
    for (int e = 0; e <= 20; e++)
        assert_non_null(ref_strerror((ref_err)e));
    assert_string_equal(ref_strerror((ref_err)999), "unknown error");
    assert_non_null(ref_version());
}

static void delivery_accessors_take_null(void **state)
{
    (void)state;
    const ref_delivery *d = NULL;
    assert_int_equal(ref_delivery_kind_of(d), 0);
    assert_string_equal(ref_delivery_message_id(d), "");
    assert_string_equal(ref_delivery_referral_id(d), "");
    assert_string_equal(ref_delivery_from(d), "");
    assert_string_equal(ref_delivery_detail(d), "");
    assert_string_equal(ref_delivery_in_reply_to(d), "");
    assert_int_equal(ref_delivery_level(d), 0);
    assert_int_equal(ref_delivery_attempt(d), 0);
    assert_false(ref_delivery_is_copy(d));
    assert_string_equal(ref_delivery_original_recipient(d), "");
    assert_string_equal(ref_delivery_alert_kind(d), "");
    assert_string_equal(ref_delivery_about_agency(d), "");
    assert_int_equal(ref_delivery_alert_step(d), 0);
    assert_int_equal(ref_delivery_alert_round(d), 0);
    assert_string_equal(ref_delivery_contacts(d), "");
    assert_string_equal(ref_delivery_copied_to(d), "");
}

/* The kinds are ABI: applications compiled against 0.1.0 keep their values. */
static void delivery_kinds_keep_their_values(void **state)
{
    (void)state;
    assert_int_equal(REF_DELIVERY_REFERRAL, 1);
    assert_int_equal(REF_DELIVERY_RECEIPT, 2);
    assert_int_equal(REF_DELIVERY_NOTICE, 3);
    assert_int_equal(REF_DELIVERY_ALERT, 4);
    assert_int_equal(REF_DELIVERY_STAND_DOWN, 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(null_arguments_are_refused),
        cmocka_unit_test(bad_configuration_is_named),
        cmocka_unit_test(destroy_accepts_null_and_strerror_is_total),
        cmocka_unit_test(delivery_accessors_take_null),
        cmocka_unit_test(delivery_kinds_keep_their_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
