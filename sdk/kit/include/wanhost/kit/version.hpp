// The kit's own version (libwanhost_kit): code plugins may link (safetensors, AdamW, the default
// layers, fused operators, collation, the parallelism base). It is versioned apart from the SDK
// contract (wanhost/abi.hpp): a kit addition moves the kit's minor, never the ABI; the soname
// carries the kit's major.
#pragma once

#define WANHOST_KIT_VERSION_MAJOR 1
#define WANHOST_KIT_VERSION_MINOR 11
