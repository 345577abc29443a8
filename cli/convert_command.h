// `strata convert`: disks in and out of strata, with qemu-img as the converter. Import
// (SRC DST.strata) serves a new layer privately and has qemu-img write SRC into it over NBD;
// export (-O FMT LAYER OUT) serves LAYER read-only privately and has qemu-img read it out.
// Zeros and holes stay sparse both ways: qemu-img skips them into a target known to read
// zeros, and reads strata's block status to keep them out of the image it writes.
#ifndef STRATA_CLI_CONVERT_COMMAND_H_
#define STRATA_CLI_CONVERT_COMMAND_H_

namespace strata::cli {

int ConvertCommand(int argc, char** argv);

}  // namespace strata::cli

#endif  // STRATA_CLI_CONVERT_COMMAND_H_
