// libFuzzer target: a control message from the network is decoded, size-checked and converted
// exactly as the server and client do; any input must end in a Status, never a crash.

#include <cstdint>

#include "netloader/src/wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  netloader::Result<netloader::wire::Envelope> envelope =
      netloader::Decode(data, size, netloader::kMaxClientMessageBytes);
  if (!envelope.ok()) return 0;
  if (envelope->has_accept()) {
    netloader::Result<netloader::Manifest> manifest =
        netloader::FromWire(envelope->accept().manifest());
    (void)manifest;
  }
  if (envelope->has_register_()) {
    netloader::Fingerprint fingerprint = netloader::FromWire(envelope->register_().fingerprint());
    (void)netloader::CompareFingerprints(fingerprint, fingerprint);
  }
  return 0;
}
