// `strata backup [--from SNAP1] --to SNAP2 LAYER OUT`: a full or incremental backup of a
// snapshot into a raw file, with a record beside it (OUT.strata-backup) of what OUT holds, so
// that an incremental onto the wrong copy is refused instead of silently corrupting it.
#ifndef STRATA_CLI_BACKUP_COMMAND_H_
#define STRATA_CLI_BACKUP_COMMAND_H_

namespace strata::cli {

int BackupCommand(int argc, char** argv);

}  // namespace strata::cli

#endif  // STRATA_CLI_BACKUP_COMMAND_H_
