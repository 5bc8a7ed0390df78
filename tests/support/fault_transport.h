#pragma once

#include <memory>

#include "transfer/transport.h"

namespace netloader::transfer {

// What goes wrong, and where: on the receiving side of every channel the wrapper hands out.
struct FaultSpec {
  enum class Kind {
    kNone,
    kCorrupt,  // flip one byte of chunk `chunk` after it arrives (as a bad wire or NIC would)
    kFail,     // fail the stream at chunk `chunk` with TransferFailed (as a dead peer would)
  };
  Kind kind = Kind::kNone;
  size_t chunk = 0;
};

// Wraps `inner` so that channels it connects misbehave as `fault` says. For tests only.
std::shared_ptr<Transport> MakeFaultyTransport(std::shared_ptr<Transport> inner, FaultSpec fault);

}  // namespace netloader::transfer
