// A program built against an installed netloader, as a user's would be (tests/package): reads a
// checkpoint's layout through the public API and prints its tensor count and table digest.

#include <netloader/fingerprint.h>
#include <netloader/safetensors.h>

#include <cstdio>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  netloader::Result<netloader::CheckpointLayout> layout = netloader::ReadCheckpointLayout(argv[1]);
  if (!layout.ok()) {
    std::fprintf(stderr, "%s\n", layout.status().ToString().c_str());
    return 1;
  }
  netloader::Result<netloader::HostModel> model = netloader::HostModel::Load(*layout);
  if (!model.ok()) return 1;
  std::printf("%zu tensors, table digest %s\n", model->view().tensors.size(),
              netloader::TableDigest(model->view()).c_str());
  return 0;
}
