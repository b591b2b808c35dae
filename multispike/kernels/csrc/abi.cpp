// Version and record sizes of the call ABI (multispike.kernels._build checks both before using the library).
#include "ms_common.h"

extern "C" {

int ms_abi_version() { return MS_ABI_VERSION; }

// sizeof of the argument records: 0 MsIO, 1 LifArgs, 2 MlifArgs, 3 LmhtArgs, 4 QuantArgs; -1 for another index.
int64_t ms_args_size(int which) {
  switch (which) {
    case 0: return (int64_t)sizeof(MsIO);
    case 1: return (int64_t)sizeof(LifArgs);
    case 2: return (int64_t)sizeof(MlifArgs);
    case 3: return (int64_t)sizeof(LmhtArgs);
    case 4: return (int64_t)sizeof(QuantArgs);
    default: return -1;
  }
}

}  // extern "C"
