#pragma once

// The shared secret that authenticates servers and clients to each other (README, "Failure
// behaviour and security"). A secret is a CURVE secret key in Z85 text (40 characters). Both
// sides derive the same key pair from it: the server proves it holds the secret by completing
// the CURVE handshake under that key, the client by presenting the matching public key, which
// the server checks. Holding the secret is therefore required to talk to a server at all, and
// the control plane (registration, manifest, heartbeats, Done) is encrypted. The MPI data plane
// is not: see the README.

#include <string>

#include "netloader/export.h"
#include "netloader/status.h"

namespace netloader {

// $NETLOADER_SECRET_FILE if set, else $HOME/.config/netloader/secret.
NETLOADER_EXPORT std::string DefaultSecretPath();

// Reads the secret at `path`, or, when no file is there, creates one with a fresh random key
// (mode 0600, parent directories 0700). Concurrent callers on one host end up with the same
// secret. The file holds the 40 characters of the key, optionally followed by exactly one line
// ending, "\n" or "\r\n" (what editors write), and nothing else (PROTOCOL.md, section 3): an
// empty file, a second line ending, a lone "\r", or anything else after the key is refused, not
// trimmed. Errors: PermissionDenied (group or others may read the file), InvalidArgument (not a
// regular file, or not exactly that; the message says what is wrong without quoting the file),
// Unavailable (cannot read or create it); each names the path.
NETLOADER_EXPORT Result<std::string> LoadOrCreateSecret(const std::string& path);

// OK when `secret` is empty (no authentication) or a valid secret; InvalidArgument otherwise.
NETLOADER_EXPORT Status ValidateSecret(const std::string& secret);

}  // namespace netloader
