// For server/ unit tests: a Server in this process, serving a fresh chain in a temporary
// directory as one export, with clients on socketpairs. The end-to-end versions (the strata
// binary on a unix socket) are in tests/.
#ifndef STRATA_SERVER_ENGINE_TEST_CHAIN_SERVER_H_
#define STRATA_SERVER_ENGINE_TEST_CHAIN_SERVER_H_

#include <stdlib.h>
#include <sys/socket.h>

#include <filesystem>
#include <memory>
#include <string>

#include "blockstore/chain.h"
#include "gtest/gtest.h"
#include "server/engine/chain_storage.h"
#include "server/nbd/export.h"
#include "server/server.h"

namespace strata {

struct TestChainServer {
  std::string dir, path;  // path: the disk's top layer
  std::unique_ptr<ChainStorage> storage;
  ExportTable exports;
  std::unique_ptr<Server> server;
  Env* env = nullptr;  // the chain's file layer (set before Start; nullptr: the real one)
  ServerOptions options{.workers = 2};  // what Start serves with (set before it)

  // Creates a `size`-byte disk and serves it as `export_name` with `options`. Returns false
  // (with a failure or a skip recorded) when that is impossible; callers return at once.
  bool Start(uint64_t size, const std::string& export_name) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "strata-server-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp failed";
      return false;
    }
    dir = tmpl;
    path = dir + "/disk.strata";
    CreateOptions create;
    create.size = size;
    if (auto h = CreateLayer(path, create); !h.ok()) {
      ADD_FAILURE() << h.status();
      return false;
    }
    auto chain = Chain::Open(path, {.env = env});
    if (!chain.ok()) {
      ADD_FAILURE() << chain.status();
      return false;
    }
    storage = std::make_unique<ChainStorage>(std::move(*chain));
    exports.Add(NewExport(export_name, storage.get()));
    server = std::make_unique<Server>(&exports, options);
    if (absl::Status st = server->Start(); !st.ok()) {
      GTEST_MESSAGE_AT_(__FILE__, __LINE__, "io_uring unavailable",
                        ::testing::TestPartResult::kSkip);
      return false;
    }
    return true;
  }

  // A connected socket whose other end the server serves.
  int Connect() {
    int sv[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    server->AddConnection(sv[0], "socketpair");
    return sv[1];
  }

  ~TestChainServer() {
    if (server) server->Shutdown();
    server.reset();
    storage.reset();
    if (!dir.empty()) std::filesystem::remove_all(dir);
  }
};

}  // namespace strata

#endif  // STRATA_SERVER_ENGINE_TEST_CHAIN_SERVER_H_
