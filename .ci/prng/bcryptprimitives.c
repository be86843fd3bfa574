/*
 * Minimal bcryptprimitives.dll for Wine 8 (Debian bookworm), which lacks it.
 *
 * Rust's std (>= 1.78) on Windows imports ProcessPrng from
 * bcryptprimitives.dll to fill HashMap keys etc.; without this DLL every
 * Rust .exe fails to start under Wine 8.  This shim forwards to
 * RtlGenRandom (advapi32!SystemFunction036), which Wine does implement.
 *
 * Build (done by .ci/setup-cross.sh):
 *   x86_64-w64-mingw32-gcc -O2 -shared -s -o bcryptprimitives.dll \
 *       bcryptprimitives.c bcryptprimitives.def -ladvapi32
 * and copy it to $WINEPREFIX/drive_c/windows/system32/.
 */
#include <windows.h>

/* RtlGenRandom; declared here to avoid ntsecapi.h quirks. */
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE pbData, SIZE_T cbData)
{
    /* RtlGenRandom takes a ULONG length: feed it in chunks. */
    while (cbData > 0) {
        ULONG chunk = cbData > 0x40000000u ? 0x40000000u : (ULONG)cbData;
        if (!SystemFunction036(pbData, chunk))
            return FALSE;
        pbData += chunk;
        cbData -= chunk;
    }
    /* The real ProcessPrng is documented to always return TRUE. */
    return TRUE;
}

BOOL WINAPI DllMain(HINSTANCE inst, DWORD reason, LPVOID reserved)
{
    (void)inst; (void)reason; (void)reserved;
    return TRUE;
}
