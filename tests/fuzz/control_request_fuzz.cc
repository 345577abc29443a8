// Fuzzes the control socket's request parsing (server/control/control_socket.h): the input is
// what a client writes, cut into lines by TakeLines as ControlSocket::Receive cuts it, each
// line answered by HandleControlLine with a handler that reads requests the way
// LiveControl::Handle does (dispatch on "request", a snapshot's "name", a commit's optional
// "layer"). Invariants: every reply is one line of JSON, an object with a boolean "ok" and,
// when false, a string "error".
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "server/control/control_socket.h"

namespace strata {
namespace {

using json = nlohmann::json;

absl::Status Handle(const json& request, json* reply) {
  const std::string what = request.value("request", std::string());
  if (what == "snapshot" || what == "revert" || what == "delete-snapshot") {
    if (!request.contains("name") || !request["name"].is_string() ||
        request["name"].get<std::string>().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": \"name\" is required"));
    }
    (*reply)["name"] = request["name"];
    (*reply)["export"] = "@" + request["name"].get<std::string>();
    return absl::OkStatus();
  }
  if (what == "commit") {
    if (request.contains("layer") && !request["layer"].is_string()) {
      return absl::InvalidArgumentError("commit: \"layer\" must be a string");
    }
    (*reply)["layer"] = request.value("layer", std::string());
    return absl::OkStatus();
  }
  if (what == "list" || what == "stats" || what == "info" || what == "cancel" || what == "job") {
    (*reply)["request"] = what;
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown request \"", what, "\""));
}

void CheckReply(const std::string& reply) {
  if (reply.empty() || reply.back() != '\n' || reply.find('\n') != reply.size() - 1) abort();
  const json r = json::parse(reply, nullptr, /*allow_exceptions=*/false);
  if (r.is_discarded() || !r.is_object() || !r.contains("ok") || !r["ok"].is_boolean()) abort();
  if (!r["ok"].get<bool>() && (!r.contains("error") || !r["error"].is_string())) abort();
}

}  // namespace
}  // namespace strata

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string in(reinterpret_cast<const char*>(data), size);
  strata::TakeLines(&in, [](const std::string& line) {
    strata::CheckReply(strata::HandleControlLine(line, strata::Handle));
    return true;
  });
  return 0;
}
