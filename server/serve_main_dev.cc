// strata-serve-dev: runs the serve command without the strata CLI (for server development).
// With STRATA_DEV_RAW=1 in the environment, LAYER is served as a raw file (RawFileStorage), so the
// server can be exercised and benchmarked without a layer chain.
#include <cstdlib>
#include <cstring>

#include "server/serve_command.h"

int main(int argc, char** argv) {
  const char* raw = getenv("STRATA_DEV_RAW");
  if (raw != nullptr && strcmp(raw, "1") == 0) {
    return strata::ServeMainWith(argc - 1, argv + 1, strata::OpenRawFileStorage);
  }
  return strata::ServeMain(argc - 1, argv + 1);
}
