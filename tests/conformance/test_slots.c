/*
 * Slot and token management: C_GetSlotList, C_GetSlotInfo, C_GetTokenInfo, C_GetMechanismList,
 * C_GetMechanismInfo, C_WaitForSlotEvent.
 */
#include <string.h>

#include "common.h"

#define BAD_SLOT ((CK_SLOT_ID)0x7ffff123UL)

static bool blank_padded(const CK_UTF8CHAR *s, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (s[i] < 0x20 || s[i] == 0x7f)
      return false;
  return true;
}

static void test_slot_list(void)
{
  CK_ULONG n = 0, all = 0;
  CK_SLOT_ID slots[64];
  CHECK_RV(P11->C_GetSlotList(CK_TRUE, NULL, NULL), CKR_ARGUMENTS_BAD);
  if (!CHECK_RV(P11->C_GetSlotList(CK_TRUE, NULL, &n), CKR_OK))
    return;
  CHECK(n >= 1 && n <= 64, "C_GetSlotList: %lu slots with a token", (unsigned long)n);
  CHECK_RV(P11->C_GetSlotList(CK_FALSE, NULL, &all), CKR_OK);
  CHECK(all >= n, "%lu slots in all but %lu with a token", (unsigned long)all, (unsigned long)n);
  if (n < 1 || n > 64)
    return;

  /* Too small: CKR_BUFFER_TOO_SMALL and the needed count. */
  CK_ULONG small = n - 1;
  CHECK_RV(P11->C_GetSlotList(CK_TRUE, slots, &small), CKR_BUFFER_TOO_SMALL);
  CHECK(small == n, "after CKR_BUFFER_TOO_SMALL count is %lu, expected %lu", (unsigned long)small,
        (unsigned long)n);

  CK_ULONG got = KVPT_ARRAY_LEN(slots);
  if (!CHECK_RV(P11->C_GetSlotList(CK_TRUE, slots, &got), CKR_OK))
    return;
  CHECK(got == n, "C_GetSlotList gave %lu slots, size query said %lu", (unsigned long)got,
        (unsigned long)n);
  bool found = false;
  for (CK_ULONG i = 0; i < got && i < 64; i++) {
    found |= slots[i] == KVPT_SLOT;
    for (CK_ULONG j = 0; j < i; j++)
      CHECK(slots[i] != slots[j], "slot %lu listed twice", (unsigned long)slots[i]);
  }
  CHECK(found, "slot of token \"%s\" not in the list", KVPT.token);
}

static void test_slot_info(void)
{
  CK_SLOT_INFO si;
  CHECK_RV(P11->C_GetSlotInfo(BAD_SLOT, &si), CKR_SLOT_ID_INVALID);
  CHECK_RV(P11->C_GetSlotInfo(KVPT_SLOT, NULL), CKR_ARGUMENTS_BAD);
  memset(&si, 0, sizeof si);
  if (!CHECK_RV(P11->C_GetSlotInfo(KVPT_SLOT, &si), CKR_OK))
    return;
  CHECK(si.flags & CKF_TOKEN_PRESENT, "slot flags 0x%lx lack CKF_TOKEN_PRESENT",
        (unsigned long)si.flags);
  CHECK(blank_padded(si.slotDescription, sizeof si.slotDescription),
        "slotDescription not blank-padded");
  CHECK(blank_padded(si.manufacturerID, sizeof si.manufacturerID),
        "manufacturerID not blank-padded");
}

static void test_token_info(void)
{
  CK_TOKEN_INFO ti;
  CHECK_RV(P11->C_GetTokenInfo(BAD_SLOT, &ti), CKR_SLOT_ID_INVALID);
  CHECK_RV(P11->C_GetTokenInfo(KVPT_SLOT, NULL), CKR_ARGUMENTS_BAD);
  memset(&ti, 0, sizeof ti);
  if (!CHECK_RV(P11->C_GetTokenInfo(KVPT_SLOT, &ti), CKR_OK))
    return;
  size_t want = strlen(KVPT.token);
  CHECK(want <= sizeof ti.label && memcmp(ti.label, KVPT.token, want) == 0,
        "token label does not start with \"%s\"", KVPT.token);
  CHECK(blank_padded(ti.label, sizeof ti.label), "label not blank-padded");
  for (size_t i = want; i < sizeof ti.label; i++)
    if (!CHECK(ti.label[i] == ' ', "label byte %zu is 0x%02x, expected blank padding", i,
               ti.label[i]))
      break;
  CHECK(blank_padded(ti.manufacturerID, sizeof ti.manufacturerID),
        "manufacturerID not blank-padded");
  CHECK(blank_padded(ti.model, sizeof ti.model), "model not blank-padded");
  CHECK(blank_padded(ti.serialNumber, sizeof ti.serialNumber), "serialNumber not blank-padded");
  CHECK(ti.flags & CKF_TOKEN_INITIALIZED, "token flags 0x%lx lack CKF_TOKEN_INITIALIZED",
        (unsigned long)ti.flags);
  CHECK(ti.ulMaxSessionCount == CK_UNAVAILABLE_INFORMATION ||
            ti.ulMaxSessionCount == CK_EFFECTIVELY_INFINITE ||
            ti.ulSessionCount == CK_UNAVAILABLE_INFORMATION ||
            ti.ulSessionCount <= ti.ulMaxSessionCount,
        "ulSessionCount %lu > ulMaxSessionCount %lu", (unsigned long)ti.ulSessionCount,
        (unsigned long)ti.ulMaxSessionCount);
  CHECK(ti.ulMinPinLen <= ti.ulMaxPinLen, "ulMinPinLen %lu > ulMaxPinLen %lu",
        (unsigned long)ti.ulMinPinLen, (unsigned long)ti.ulMaxPinLen);
}

/* Mechanisms the issue requires when keys of that type exist, with the flags they must carry
 * (verify and encrypt are done by the module from the public key, so they are listed too). */
static const struct {
  CK_MECHANISM_TYPE mech;
  const char *name;
  bool rsa;
  CK_FLAGS flags;
} required[] = {
    {CKM_RSA_PKCS, "CKM_RSA_PKCS", true, CKF_SIGN | CKF_VERIFY | CKF_ENCRYPT | CKF_DECRYPT},
    {CKM_SHA256_RSA_PKCS, "CKM_SHA256_RSA_PKCS", true, CKF_SIGN | CKF_VERIFY},
    {CKM_SHA384_RSA_PKCS, "CKM_SHA384_RSA_PKCS", true, CKF_SIGN | CKF_VERIFY},
    {CKM_SHA512_RSA_PKCS, "CKM_SHA512_RSA_PKCS", true, CKF_SIGN | CKF_VERIFY},
    {CKM_RSA_PKCS_PSS, "CKM_RSA_PKCS_PSS", true, CKF_SIGN | CKF_VERIFY},
    {CKM_SHA256_RSA_PKCS_PSS, "CKM_SHA256_RSA_PKCS_PSS", true, CKF_SIGN | CKF_VERIFY},
    {CKM_SHA384_RSA_PKCS_PSS, "CKM_SHA384_RSA_PKCS_PSS", true, CKF_SIGN | CKF_VERIFY},
    {CKM_SHA512_RSA_PKCS_PSS, "CKM_SHA512_RSA_PKCS_PSS", true, CKF_SIGN | CKF_VERIFY},
    {CKM_RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP", true, CKF_ENCRYPT | CKF_DECRYPT},
    {CKM_ECDSA, "CKM_ECDSA", false, CKF_SIGN | CKF_VERIFY},
    {CKM_ECDSA_SHA256, "CKM_ECDSA_SHA256", false, CKF_SIGN | CKF_VERIFY},
    {CKM_ECDSA_SHA384, "CKM_ECDSA_SHA384", false, CKF_SIGN | CKF_VERIFY},
    {CKM_ECDSA_SHA512, "CKM_ECDSA_SHA512", false, CKF_SIGN | CKF_VERIFY},
};

static void test_mechanism_list(void)
{
  CK_ULONG n = 0;
  CK_MECHANISM_TYPE mechs[256];
  CHECK_RV(P11->C_GetMechanismList(BAD_SLOT, NULL, &n), CKR_SLOT_ID_INVALID);
  CHECK_RV(P11->C_GetMechanismList(KVPT_SLOT, NULL, NULL), CKR_ARGUMENTS_BAD);
  if (!CHECK_RV(P11->C_GetMechanismList(KVPT_SLOT, NULL, &n), CKR_OK))
    return;
  if (!CHECK(n >= 1 && n <= 256, "%lu mechanisms", (unsigned long)n))
    return;
  CK_ULONG small = n - 1;
  CHECK_RV(P11->C_GetMechanismList(KVPT_SLOT, mechs, &small), CKR_BUFFER_TOO_SMALL);
  CHECK(small == n, "after CKR_BUFFER_TOO_SMALL count is %lu, expected %lu", (unsigned long)small,
        (unsigned long)n);
  CK_ULONG got = KVPT_ARRAY_LEN(mechs);
  if (!CHECK_RV(P11->C_GetMechanismList(KVPT_SLOT, mechs, &got), CKR_OK))
    return;
  CHECK(got == n, "mechanism list has %lu entries, size query said %lu", (unsigned long)got,
        (unsigned long)n);
  for (CK_ULONG i = 0; i < got; i++)
    for (CK_ULONG j = 0; j < i; j++)
      CHECK(mechs[i] != mechs[j], "mechanism 0x%lx listed twice", (unsigned long)mechs[i]);

  bool have_rsa = kvpt_first_rsa(0) != NULL, have_ec = kvpt_first_ec(0) != NULL;
  for (size_t r = 0; r < KVPT_ARRAY_LEN(required); r++) {
    if (required[r].rsa ? !have_rsa : !have_ec)
      continue;
    bool listed = false;
    for (CK_ULONG i = 0; i < got; i++)
      listed |= mechs[i] == required[r].mech;
    CHECK(listed, "%s not listed although %s keys exist", required[r].name,
          required[r].rsa ? "RSA" : "EC");
  }
}

static void test_mechanism_info(void)
{
  CK_MECHANISM_INFO mi;
  CK_ULONG n = 0;
  CK_MECHANISM_TYPE mechs[256];
  CHECK_RV(P11->C_GetMechanismInfo(KVPT_SLOT, CKM_VENDOR_DEFINED | 0x4b5650UL, &mi),
           CKR_MECHANISM_INVALID);
  CHECK_RV(P11->C_GetMechanismInfo(BAD_SLOT, CKM_RSA_PKCS, &mi), CKR_SLOT_ID_INVALID);
  CHECK_RV(P11->C_GetMechanismInfo(KVPT_SLOT, CKM_RSA_PKCS, NULL), CKR_ARGUMENTS_BAD);

  /* Every listed mechanism has info with sane flags and key sizes. */
  n = KVPT_ARRAY_LEN(mechs);
  if (!CHECK_RV(P11->C_GetMechanismList(KVPT_SLOT, mechs, &n), CKR_OK))
    return;
  for (CK_ULONG i = 0; i < n; i++) {
    memset(&mi, 0, sizeof mi);
    if (!CHECK_RV(P11->C_GetMechanismInfo(KVPT_SLOT, mechs[i], &mi), CKR_OK))
      continue;
    CHECK(mi.flags != 0, "mechanism 0x%lx has no flags", (unsigned long)mechs[i]);
    CHECK(mi.ulMinKeySize <= mi.ulMaxKeySize,
          "mechanism 0x%lx: ulMinKeySize %lu > ulMaxKeySize %lu", (unsigned long)mechs[i],
          (unsigned long)mi.ulMinKeySize, (unsigned long)mi.ulMaxKeySize);
  }

  /* The required mechanisms carry the needed flags and cover every key of their type. */
  for (size_t r = 0; r < KVPT_ARRAY_LEN(required); r++) {
    bool rsa = required[r].rsa;
    if (rsa ? !kvpt_first_rsa(0) : !kvpt_first_ec(0))
      continue;
    memset(&mi, 0, sizeof mi);
    if (!CHECK_RV(P11->C_GetMechanismInfo(KVPT_SLOT, required[r].mech, &mi), CKR_OK))
      continue;
    CHECK((mi.flags & required[r].flags) == required[r].flags, "%s flags 0x%lx lack 0x%lx",
          required[r].name, (unsigned long)mi.flags, (unsigned long)required[r].flags);
    for (size_t i = 0; i < KVPT_NCERTS; i++) {
      const kvpt_cert *c = &KVPT_CERTS[i];
      if (!c->is_private || (rsa ? !c->is_rsa : !c->is_ec))
        continue;
      CHECK((CK_ULONG)c->bits >= mi.ulMinKeySize && (CK_ULONG)c->bits <= mi.ulMaxKeySize,
            "%s key sizes %lu..%lu exclude %s (%d bits)", required[r].name,
            (unsigned long)mi.ulMinKeySize, (unsigned long)mi.ulMaxKeySize, c->name, c->bits);
    }
  }
}

static void test_wait_for_slot_event(void)
{
  CK_SLOT_ID slot = 0;
  CHECK_RV_IN(P11->C_WaitForSlotEvent(CKF_DONT_BLOCK, &slot, NULL), CKR_NO_EVENT,
              CKR_FUNCTION_NOT_SUPPORTED);
}

void kvpt_add_slot_tests(void)
{
  static const kvpt_test tests[] = {
      {"C_GetSlotList", test_slot_list},
      {"C_GetSlotInfo", test_slot_info},
      {"C_GetTokenInfo", test_token_info},
      {"C_GetMechanismList", test_mechanism_list},
      {"C_GetMechanismInfo", test_mechanism_info},
      {"C_WaitForSlotEvent(CKF_DONT_BLOCK)", test_wait_for_slot_event},
  };
  kvpt_add_suite("slots", kvpt_suite_init, kvpt_suite_cleanup, tests, KVPT_ARRAY_LEN(tests));
}
