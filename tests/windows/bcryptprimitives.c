/* bcryptprimitives.dll for Wine 8 (Debian bookworm), which lacks it. Rust's standard library
 * (1.78+) imports ProcessPrng from it for its random keys, so no Rust program starts under that
 * Wine without this. ProcessPrng is answered from RtlGenRandom (advapi32's SystemFunction036),
 * which Wine has. Built by tests/windows.sh with x86_64-w64-mingw32-gcc; used only under Wine. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
