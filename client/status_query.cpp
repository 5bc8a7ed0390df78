// QueryStatus (netloader/client.h): one StatusRequest over a control channel of its own.

#include "client/control_channel.h"
#include "netloader/client.h"
#include "netloader/secret.h"

namespace netloader {

using internal::ControlChannel;

Result<SourceStatus> QueryStatus(const std::string& endpoint, const std::string& secret,
                                 std::chrono::milliseconds timeout) {
  Status valid = ValidateSecret(secret);
  if (!valid.ok()) return valid.WithContext("QueryStatus secret");
  ControlChannel control(endpoint, secret);
  Status status = control.Connect();
  wire::Envelope request;
  request.mutable_status_request();
  if (status.ok()) status = control.Send(request);
  if (!status.ok()) return status.WithContext(endpoint);
  Result<wire::Envelope> reply = control.Receive(timeout);
  if (!reply.ok()) return reply.status().WithContext(endpoint);
  if (reply->has_reject()) {
    return Status(FromRejectCode(reply->reject().code()),
                  endpoint + " refused: " + reply->reject().reason());
  }
  if (!reply->has_status()) {
    return Status(StatusCode::kProtocolMismatch,
                  endpoint + " answered StatusRequest with " + BodyName(*reply));
  }
  const wire::ServerStatus& in = reply->status();
  SourceStatus out;
  switch (in.state()) {
    case wire::ServerStatus::WAITING:
      out.state = "waiting";
      break;
    case wire::ServerStatus::LOADING:
      out.state = "loading";
      break;
    case wire::ServerStatus::SERVING:
      out.state = "serving";
      break;
    case wire::ServerStatus::FAILED:
      out.state = "failed";
      break;
    case wire::ServerStatus::UNAVAILABLE:
      out.state = "unavailable";
      break;
    default:
      out.state = "unknown";
  }
  out.failure = in.failure();
  wire::Fingerprint fingerprint;
  fingerprint.set_model_id(in.model_id());
  fingerprint.set_table_digest(in.table_digest());
  *fingerprint.mutable_partition() = in.partition();
  const Fingerprint decoded = FromWire(fingerprint);
  out.model_id = decoded.model_id;
  out.partition = decoded.partition;
  out.table_digest = decoded.table_digest;
  out.bytes_total = in.bytes_total();
  out.bytes_held = in.bytes_held();
  out.sessions = static_cast<int>(in.sessions());
  out.max_sessions = static_cast<int>(in.max_sessions());
  out.fanout = static_cast<int>(in.fanout());
  out.children.assign(in.children().begin(), in.children().end());
  out.bytes_sent = in.bytes_sent();
  out.clients_served = in.clients_served();
  out.clients_failed = in.clients_failed();
  out.redirected = in.redirected();
  return out;
}

}  // namespace netloader
