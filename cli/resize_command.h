// `strata resize LAYER [+]SIZE`: grows the disk whose active layer is LAYER, offline, as
// `qemu-img resize` grows an overlay (blockstore/resize.h).
#ifndef STRATA_CLI_RESIZE_COMMAND_H_
#define STRATA_CLI_RESIZE_COMMAND_H_

namespace strata::cli {

int ResizeCommand(int argc, char** argv);

}  // namespace strata::cli

#endif  // STRATA_CLI_RESIZE_COMMAND_H_
