// File: client/ppctl.cc
//
// ppctl: the command-line client of pagepoold. One subcommand per PagePoolService call (kebab-case:
// create-device, get-pool, ...), plus `traffic PATTERN`, `compare` and `health`. Output is
// human-readable by default, JSON with the .proto's field names with --json. Exit codes: 0 success;
// 1 the daemon refused the call (or could not be reached: the gRPC status is printed; health: not
// SERVING); 2 bad command line; for traffic, 3 when the device saw violations and 4 when
// operations were refused unexpectedly; for compare, 3 when xarray or scan saw violations. The
// subcommands are listed in client/command_line.cc and run by client/commands.cc (compare by
// client/compare.cc).
#include <iostream>

#include "absl/synchronization/mutex.h"
#include "client/command_line.h"

int main(int argc, char** argv) {
  const pagepool::client::CommandLine command_line =
      pagepool::client::ParseCommandLine(argc, argv, std::cout, std::cerr);
  if (command_line.exit_status) return *command_line.exit_status;
  // Debian's abseil is built with Mutex deadlock detection on; gRPC's mutexes are absl's.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return pagepool::client::RunCommand(command_line, std::cout, std::cerr);
}
