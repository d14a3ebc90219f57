/* referral.h compiles on its own: it is the first and only include. */
#include "referral.h"

int main(void)
{
    return ref_strerror(REF_OK) != 0 ? 0 : 1;
}
