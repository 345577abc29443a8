// ServerTest: the gtest fixture for "a started server and a connected libnbd handle", the
// setup nearly every integration test begins with. A suite derives from it and passes, in its
// constructor, how far SetUp goes (chain only, serving, or serving with h_ connected) and the
// chain, serve and connect options; a suite about strata's own promises names the reason peers
// skip. Tests that each need another disk set the suite up to Stage::kNone and call
// SetUpServer() themselves.
//
//   class CommandsTest : public ServerTest {};            // default chain, served, h_ connected
//   class LimitsTest : public ServerTest {
//    protected:
//     LimitsTest() : ServerTest({.connect = {.strict = false}}) {}
//   };
//
// A parameterised suite derives from ServerTest and ::testing::WithParamInterface<T>.
#ifndef STRATA_TESTS_SERVER_FIXTURE_H_
#define STRATA_TESTS_SERVER_FIXTURE_H_

#include <gtest/gtest.h>

#include "nbd_test_server.h"

namespace strata_test {

// How far the setup goes, in order: each stage includes the ones before it.
enum class Stage { kNone, kChain, kServing, kConnected };

struct ServerSetup {
  Stage up_to = Stage::kConnected;
  ChainOptions chain;
  ServeOptions serve;
  ConnectOptions connect;  // of h_
};

class ServerTest : public ::testing::Test {
 protected:
  // `strata_only`: non-null for a suite of strata's own promises; peers skip with it as reason.
  explicit ServerTest(ServerSetup setup = {}, const char* strata_only = nullptr)
      : setup_(std::move(setup)), strata_only_(strata_only) {}

  // Skips when the server cannot run here (or is a peer and the suite strata's), then
  // SetUpServer(setup).
  void SetUp() override;

  // Builds the chain, starts the server and connects h_, as far as setup.up_to says. False
  // (after a test failure naming the step) when a step fails, so a test writes
  // ASSERT_TRUE(SetUpServer({...})).
  bool SetUpServer(const ServerSetup& setup);

  NbdTestServer server_;
  NbdHandle h_;  // declared after server_: closed before the server is stopped

 private:
  const ServerSetup setup_;
  const char* const strata_only_;
};

}  // namespace strata_test

#endif  // STRATA_TESTS_SERVER_FIXTURE_H_
