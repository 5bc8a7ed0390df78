// libFuzzer target: a control message from the network is decoded, size-checked and converted
// exactly as the server and client do; any input must end in a Status, never a crash.

#include <cstdint>

#include "netloader/src/model/selection.h"
#include "netloader/src/protocol/wire.h"

namespace {

// Names a partial load's patterns are matched against, wildcards and backslashes among them.
const netloader::ModelView& Names() {
  static const netloader::ModelView model = [] {
    netloader::ModelView m;
    for (const char* name : {"model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight",
                             "model.layers.10.self_attn.q_proj.weight", "odd*name?", "back\\slash",
                             "lm_head.weight"}) {
      m.tensors.push_back({name, netloader::DType::kU8, {0}, nullptr, 0});
    }
    return m;
  }();
  return model;
}

}  // namespace

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
    const netloader::wire::Register& request = envelope->register_();
    if (netloader::ValidateRegister(request).ok() && request.tensors_size() > 0) {
      (void)netloader::MatchTensors(Names(), {request.tensors().begin(), request.tensors().end()});
    }
  }
  return 0;
}
