#include "server_fixture.h"

namespace strata_test {

void ServerTest::SetUp() {
  STRATA_SKIP_IF_NO_SERVER();
  if (strata_only_ != nullptr) STRATA_SKIP_IF_PEER(strata_only_);
  ASSERT_TRUE(SetUpServer(setup_));
}

bool ServerTest::SetUpServer(const ServerSetup& setup) {
  // Each step reports its own failure (with the server's log); this only stops at the first.
  if (setup.up_to < Stage::kChain) return true;
  if (!server_.CreateChain(setup.chain)) return false;
  if (setup.up_to < Stage::kServing) return true;
  if (!server_.Start(setup.serve)) return false;
  if (setup.up_to < Stage::kConnected) return true;
  h_ = server_.Connect(setup.connect);
  return h_ != nullptr;
}

}  // namespace strata_test
