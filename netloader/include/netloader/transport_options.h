#pragma once

#include <chrono>
#include <string>

namespace netloader {

// How the MPI data plane is reached. See README "How the MPI connection is made".
struct TransportOptions {
  // The Open MPI rendezvous (an `ompi-server` URI, or "file:PATH" of the file it wrote) that
  // every peer of this process must share. Empty: a server starts a private ompi-server and
  // hands its URI to clients in the Accept reply; a client adopts the URI its source sends.
  // Fixed for the life of the process once MPI is initialised.
  std::string rendezvous_uri;
  // Network interface MPI and the private rendezvous use ("lo" for one host).
  std::string interface = "lo";
  // The ompi-server executable used for a private rendezvous.
  std::string ompi_server = "ompi-server";
  // Deadline for a private rendezvous to start and for MPI to initialise.
  std::chrono::milliseconds startup_timeout{20000};
};

}  // namespace netloader
